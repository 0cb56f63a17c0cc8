"""renderer.deploy.traffic: the gateway's /metrics (the real `Metrics` text) read per upstream, quantiles
from cumulative buckets checked against hand-computed values, and the delta between two scrapes."""

from __future__ import annotations

import math

import pytest
from prometheus_text import parse_strict

from renderer.codegen.gateway_app import TPOT_BUCKETS, TTFT_BUCKETS, GatewayApp, Metrics, Upstream
from renderer.deploy.traffic import GatewayTraffic, Histogram, Traffic, delta, histogram_quantile, parse

INF = math.inf
BUCKETS = [(0.1, 10), (0.2, 30), (0.5, 40), (INF, 50)]  # 10 in (0, 0.1], 20 in (0.1, 0.2], 10, then 10 above


@pytest.mark.parametrize(
    "q, expected",
    [
        (0.1, 0.05),  # rank 5 of 10 in the first bucket, from 0: 0 + 0.1 x 5/10
        (0.2, 0.1),  # rank 10: exactly the first bucket's top
        (0.5, 0.175),  # rank 25: 15th of the 20 in (0.1, 0.2]: 0.1 + 0.1 x 15/20
        (0.7, 0.35),  # rank 35: 5th of 10 in (0.2, 0.5]: 0.2 + 0.3 x 5/10
        (0.8, 0.5),  # rank 40: the top of (0.2, 0.5]
        (0.9, 0.5),  # rank 45 is in +Inf: the largest finite bound
        (1.0, 0.5),
    ],
)
def test_quantile_interpolates_within_the_bucket_as_prometheus_does(q, expected):
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)
    assert histogram_quantile(q, reversed(BUCKETS)) == pytest.approx(expected)  # order does not matter
    assert Histogram(tuple(BUCKETS)).quantile(q) == pytest.approx(expected)


def test_quantile_edge_cases():
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None  # no observation (Prometheus: NaN)
    assert histogram_quantile(0.5, [(INF, 4)]) is None  # only +Inf: nothing to interpolate in
    assert histogram_quantile(0.25, [(-1.0, 5), (INF, 10)]) == -1.0  # a first bound <= 0 is returned as is
    # a bound given twice is summed (Prometheus coalesces them): 4 in (0, 1], 4 in (1, 2]; rank 6 is half-way up
    assert histogram_quantile(0.75, [(1.0, 2), (1.0, 2), (2.0, 8), (INF, 8)]) == pytest.approx(1.5)
    assert histogram_quantile(0.5, [(1.0, 6), (2.0, 4), (INF, 10)]) == pytest.approx(5 / 6)  # a dip is evened out
    with pytest.raises(ValueError, match=r"\+Inf bucket"):
        histogram_quantile(0.5, [(0.1, 1), (0.2, 2)])
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, BUCKETS)
    assert Histogram(()).quantile(0.5) is None and Histogram(()).mean is None


class _Req:
    def __init__(self, model, upstream, status, ttft=None, tpot=None):
        self.model, self.upstream, self.status, self.ttft, self.tpot = model, upstream, status, ttft, tpot
        self.bytes_in, self.bytes_out = 10, 100


def canary_metrics(started: float) -> Metrics:
    """The real app's Metrics for `alpha` at 90/10 with its canary (and `beta` unsplit)."""
    app = GatewayApp(
        {"alpha-chat": Upstream("alpha", "http://a", "none"), "beta-embed": Upstream("beta", "http://b", "none")},
        splits={
            "alpha": [(Upstream("alpha", "http://a", "none"), 90), (Upstream("alpha-canary", "http://c", "none"), 10)]
        },
    )
    app.metrics.started, app.metrics.container = started, "ta-1"
    return app.metrics


def record(m: Metrics, model: str, upstream: str, status: int, ttft=None, tpot=None) -> None:
    m.enter(model, upstream)
    m.leave(_Req(model, upstream, status, ttft, tpot))


def test_the_real_metrics_text_reads_per_upstream_with_errors_histograms_and_weights():
    now = 1_800_000_000.0
    m = canary_metrics(now - 50)
    for status in (200, 200, 200, 400, 401, 429, 499, 500, 503):
        record(m, "alpha-chat", "alpha", status, ttft=0.2, tpot=0.02)
    for ttft, tpot in ((0.3, 0.011), (0.7, 0.013), (1.5, 0.035)):
        record(m, "alpha-chat", "alpha-canary", 200, ttft=ttft, tpot=tpot)
    record(m, "alpha-chat", "alpha-canary", 502)
    m.enter("beta-embed", "beta")  # in flight
    text = m.text()
    parse_strict(text)  # valid Prometheus text, histograms consistent
    traffic = parse(text, now=now)
    live, canary = traffic.upstream("alpha"), traffic.upstream("alpha-canary")
    assert (live.requests, live.server_errors, live.errors, live.client_errors) == (9, 2, 4, 1)
    assert live.error_rate == pytest.approx(4 / 9)
    assert (canary.requests, canary.errors, canary.client_errors, canary.statuses) == (4, 1, 0, {200: 3, 502: 1})
    assert canary.per_second == pytest.approx(4 / 50)
    assert canary.ttft.count == 3 and canary.ttft.sum == pytest.approx(2.5)
    assert canary.ttft.buckets[-1] == (INF, 3) and [b for b, _ in canary.ttft.buckets[:-1]] == list(TTFT_BUCKETS)
    # TTFT 0.3, 0.7, 1.5 in (0.25, 0.5], (0.5, 1], (1, 2.5]: p50 = rank 1.5, half-way up (0.5, 1]
    assert canary.ttft.quantile(0.5) == pytest.approx(0.75)
    assert canary.tpot.count == 3 and [b for b, _ in canary.tpot.buckets[:-1]] == list(TPOT_BUCKETS)
    # TPOT 11, 13 ms in (10, 12.5] and (12.5, 15]; 35 ms in (30, 40]: p50 = rank 1.5, half-way up (12.5, 15]
    assert canary.tpot.quantile(0.5) == pytest.approx(0.01375)
    assert traffic.weights == {"alpha": {"alpha": 90, "alpha-canary": 10}, "beta": {"beta": 100}}
    assert traffic.upstream("beta").in_flight == 1 and traffic.upstream("nobody") == Traffic()
    doc = traffic.to_dict()
    assert doc["weights"] == {"alpha": {"alpha": 90.0, "alpha-canary": 10.0}, "beta": {"beta": 100.0}}
    assert doc["deployments"]["alpha-canary"] == {
        "requests": 4,
        "server_errors": 1,
        "errors": 1,
        "client_errors": 0,
        "in_flight": 0,
        "requests_per_second": 0.08,
        "ttft_p50_seconds": 0.75,
        "ttft_p90_seconds": pytest.approx(2.05),  # rank 2.7: 0.7 of the way up (1, 2.5]
        "tpot_p50_seconds": 0.01375,
        "tpot_p90_seconds": pytest.approx(0.037),  # rank 2.7 in (0.03, 0.04]
    }


def test_histograms_of_one_upstream_sum_over_its_model_names():
    m = canary_metrics(0.0)
    record(m, "alpha-chat", "alpha", 200, ttft=0.04)
    record(m, "alpha-small", "alpha", 200, ttft=0.2)
    t = parse(m.text(), now=10.0).upstream("alpha")
    assert (t.requests, t.ttft.count, t.ttft.sum) == (2, 2, pytest.approx(0.24))
    assert t.tpot is None  # no streamed answer


def test_delta_of_one_container_is_the_window():
    m = canary_metrics(1000.0)
    record(m, "alpha-chat", "alpha", 200, ttft=0.1, tpot=0.02)
    record(m, "alpha-chat", "alpha", 500)
    before = parse(m.text(), now=1100.0)
    record(m, "alpha-chat", "alpha", 200, ttft=0.3, tpot=0.02)
    record(m, "alpha-chat", "alpha-canary", 200, ttft=0.4, tpot=0.05)  # first request of the canary
    record(m, "alpha-chat", "alpha-canary", 503)
    after = parse(m.text(), now=1110.0)
    window = delta(before, after)
    assert (window.container, window.since, window.scraped_at) == ("ta-1", 1100.0, 1110.0)
    live, canary = window.upstream("alpha"), window.upstream("alpha-canary")
    assert (live.requests, live.statuses, live.errors, live.per_second) == (1, {200: 1}, 0, pytest.approx(0.1))
    assert (live.ttft.count, live.ttft.sum) == (1, pytest.approx(0.3)) and live.tpot.count == 1
    assert (canary.requests, canary.errors, canary.ttft.count) == (2, 1, 1)
    assert canary.ttft.quantile(0.5) == pytest.approx(0.25 + 0.25 * 0.5)  # rank 0.5 of its 1 in (0.25, 0.5]
    assert window.weights == after.weights
    assert delta(after, after).upstream("alpha").requests == 0


def test_delta_across_a_restart_or_another_container():
    m = canary_metrics(1000.0)
    record(m, "alpha-chat", "alpha", 200, ttft=0.1)
    before = parse(m.text(), now=1100.0)
    restarted = canary_metrics(1105.0)  # counters started after the first scrape: all in the window
    record(restarted, "alpha-chat", "alpha-canary", 200, ttft=0.2)
    after = parse(restarted.text(), now=1110.0)
    window = delta(before, after)
    assert window is not None and window.upstream("alpha-canary").requests == 1
    assert window.upstream("alpha").requests == 0
    other = canary_metrics(900.0)  # another container, up since before the window: its counts mix
    other.container = "ta-2"
    record(other, "alpha-chat", "alpha", 200)
    assert delta(before, parse(other.text(), now=1110.0)) is None


def test_a_counter_that_went_down_is_read_as_a_reset():
    """Same container and start time but fewer requests (a reset the start time does not show): the later
    counts are all new, as Prometheus' increase() reads a counter that dropped."""
    hist = Histogram(((0.1, 3.0), (INF, 4.0)), 0.5)
    before = GatewayTraffic("ta-1", 0.0, {"alpha": Traffic(5, statuses={200: 5}, ttft=hist)}, scraped_at=10.0)
    dropped = Traffic(2, statuses={200: 2}, ttft=Histogram(((0.1, 1.0), (INF, 2.0)), 0.1))
    window = delta(before, GatewayTraffic("ta-1", 0.0, {"alpha": dropped}, scraped_at=20.0))
    assert (window.upstream("alpha").requests, window.upstream("alpha").ttft.count) == (2, 2)
    assert window.upstream("alpha").per_second == pytest.approx(0.2)
    assert hist.since(Histogram(((0.2, 1.0), (INF, 1.0)))) is None  # other buckets: not comparable
