"""Canary rollouts at the gateway: the split in the rendered module, weighted routing per request, and the
figures /metrics gives to judge a canary. In-process against local upstreams on 127.0.0.1, as test_gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import re
from pathlib import Path

import pytest
from prometheus_text import parse_strict
from test_gateway import ENV, KEY, PROXY_HEADERS, call, run

from renderer.codegen.gateway import Split, gateway_source, render_gateway
from renderer.codegen.gateway_app import GatewayApp, Upstream
from renderer.config import spec
from renderer.config.resolve import gateway_from

from gateway_upstreams import UpstreamConfig, serve_upstream
from modal_objects import import_module

FIXTURES = Path(__file__).parent / "fixtures" / "gateway"
AWQ = "qwen2-5-7b-awq"  # the example fleet's api_key deployment
LLAMA = "llama-3-1-8b-fp8"  # a proxy-auth one, two served names


def without_embedded_source(text: str) -> str:
    """The module with the embedded gateway_app.py (and so the hash) replaced by placeholders: what the
    template itself writes."""
    text = text.replace(str(gateway_source()), "# {gateway_app.py}")
    return re.sub(r"^# fleetform-hash: .*$", "# fleetform-hash: {hash}", text, count=1, flags=re.M)


# --- the rendered module ------------------------------------------------------------------------------------

CONFIGS = {
    "default": {"enabled": True},
    "workspace": {"enabled": True, "workspace": "acme", "min_containers": 1, "cors_origins": ["*"]},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_without_a_split_the_module_is_what_it_was_before_canaries(example_fleet, name):
    """The fixtures were rendered by the code before canaries existed: a fleet with no rollout in progress
    (or one whose rollout ended) renders the same module, so its gateway is not redeployed for nothing."""
    config = gateway_from(CONFIGS[name])
    plain = render_gateway(example_fleet.deployments, config)
    assert without_embedded_source(plain.text) == (FIXTURES / f"no-split-{name}.py.txt").read_text()
    empty = render_gateway(example_fleet.deployments, config, splits=())
    assert (empty.text, empty.content_hash) == (plain.text, plain.content_hash)
    assert "SPLITS" not in without_embedded_source(plain.text) and "canary" not in plain.text.split("# --- The gat")[0]


def test_a_split_adds_the_canary_upstream_and_the_splits_table(example_fleet, tmp_path):
    config = gateway_from({"enabled": True, "workspace": "acme"})
    plain = render_gateway(example_fleet.deployments, config)
    gw = render_gateway(example_fleet.deployments, config, splits=[Split(AWQ, 10), Split(LLAMA, 25)])
    assert gw.content_hash != plain.content_hash
    path = tmp_path / gw.filename
    path.write_text(gw.text)
    module = import_module(path)
    canary = spec.canary_app_name(AWQ)
    # The same deployment config at a new version: same auth, key variable and Modal environment.
    assert module.UPSTREAMS[canary] == {
        **module.UPSTREAMS[AWQ],
        "app": canary,
        "url": f"https://acme--{canary}-serve.modal.run",
    }
    assert module.UPSTREAMS[canary]["key_env"] == spec.upstream_key_env(AWQ)
    assert module.SPLITS == {
        AWQ: [[AWQ, 90], [canary, 10]],
        LLAMA: [[LLAMA, 75], [spec.canary_app_name(LLAMA), 25]],
    }
    assert module.ROUTES == plain.routes == gw.routes  # models still route to the deployment
    assert [u.name for u in gw.canaries] == [spec.canary_app_name(LLAMA), canary]
    assert gw.weights[AWQ] == {AWQ: 90, canary: 10} and gw.weights["qwen2-5-7b-instruct"] == {
        "qwen2-5-7b-instruct": 100
    }
    app = module.serve.local()  # the module's factory builds the app with its split
    weights = app.metrics.weights
    assert weights[(AWQ, AWQ)] == 90 and weights[(AWQ, canary)] == 10 and weights[(LLAMA, LLAMA)] == 75
    assert weights[("qwen2-5-7b-instruct", "qwen2-5-7b-instruct")] == 100
    assert app.splits[AWQ][0][1].name == canary and app.splits[AWQ][0][1].key_env == spec.upstream_key_env(AWQ)


def test_a_canary_in_another_modal_environment_is_looked_up_there(example_fleet, tmp_path, monkeypatch):
    deployments = [
        dataclasses.replace(d, modal_env="llm-prod") if d.name == AWQ else d for d in example_fleet.deployments
    ]
    gw = render_gateway(deployments, gateway_from({"enabled": True}), splits=[Split(AWQ, 5)])
    path = tmp_path / gw.filename
    path.write_text(gw.text)
    module = import_module(path)
    asked = []

    async def lookup(app, modal_env):
        asked.append((app, modal_env))
        return "http://127.0.0.1:9"

    monkeypatch.setattr(module, "lookup_url", lookup)
    app = module.serve.local()
    canary = app.splits[AWQ][0][1]
    run(canary.base_url())
    assert asked == [(spec.canary_app_name(AWQ), "llm-prod")]


def test_a_canary_host_name_too_long_for_a_static_url_is_looked_up(example_fleet):
    workspace = "w" * (spec.MAX_HOST_LABEL - len(f"--{AWQ}-serve") - 1)  # the live label fits, the canary's not
    gw = render_gateway(
        example_fleet.deployments, gateway_from({"enabled": True, "workspace": workspace}), splits=[Split(AWQ, 10)]
    )
    live = next(u for u in gw.upstreams if u.name == AWQ)
    assert live.url is not None and gw.canaries[0].url is None


@pytest.mark.parametrize(
    "splits, message",
    [
        ([Split("nope", 10)], "canary split for 'nope': no such deployment behind the gateway"),
        ([Split(AWQ, 0)], f"canary split for '{AWQ}': weight 0 is not a whole percent from 1 to 99"),
        ([Split(AWQ, 100)], "weight 100 is not a whole percent from 1 to 99"),
        ([Split(AWQ, 10.5)], "weight 10.5 is not a whole percent"),
        ([Split(AWQ, True)], "weight True is not a whole percent"),
        ([Split(AWQ, 10), Split(AWQ, 20)], f"canary split for '{AWQ}': given twice"),
    ],
)
def test_a_split_the_gateway_cannot_route_is_refused(example_fleet, splits, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_gateway(example_fleet.deployments, gateway_from({"enabled": True}), splits=splits)


def test_a_canary_named_as_a_deployment_is_refused(example_fleet):
    clash = dataclasses.replace(example_fleet.deployments[0], name=spec.canary_app_name(AWQ))
    with pytest.raises(ValueError, match="its canary app 'qwen2-5-7b-awq-canary' is a deployment's name"):
        render_gateway([*example_fleet.deployments, clash], gateway_from({"enabled": True}), splits=[Split(AWQ, 1)])


# --- weighted routing, in-process ------------------------------------------------------------------------------


def canary_gateway(live_url: str, canary_url: str, weight: int, seed: int, **kw) -> GatewayApp:
    """alpha (models alpha-chat, alpha-small) split `100 - weight` / `weight` with its canary; beta unsplit."""
    return GatewayApp.from_table(
        {
            "alpha": {"app": "alpha", "url": live_url, "auth": "proxy"},
            "alpha-canary": {"app": "alpha-canary", "url": canary_url, "auth": "proxy"},
            "beta": {"app": "beta", "url": "http://127.0.0.1:9", "auth": "none"},
        },
        {"alpha-chat": "alpha", "alpha-small": "alpha", "beta-embed": "beta"},
        splits={"alpha": [["alpha", 100 - weight], ["alpha-canary", weight]]},
        rng=random.Random(seed),
        environ=ENV,
        **kw,
    )


def test_the_canary_gets_its_share_of_requests_within_binomial_bounds():
    """N = 2000 requests at 10%: the canary's count is Binomial(2000, 0.1), mean 200, sd sqrt(N p (1 - p))
    = 13.4. Four sd (146..254) is missed by a correct router with probability 6e-5, and the seed is fixed,
    so the test is deterministic; a router that ignores the weights, inverts them or splits per model
    rather than per request lands far outside (0, 1000 or 1800)."""
    n, weight = 2000, 10

    async def body():
        async with (
            serve_upstream(UpstreamConfig("alpha", require_headers=PROXY_HEADERS)) as live,
            serve_upstream(UpstreamConfig("alpha-canary", require_headers=PROXY_HEADERS)) as canary,
        ):
            app = canary_gateway(live.url, canary.url, weight, seed=20261202)
            answers = []
            for start in range(0, n, 100):  # 100 at a time: concurrent, within the pool's means
                answers += await asyncio.gather(
                    *(
                        call(app, "POST", "/v1/completions", {"model": ("alpha-chat", "alpha-small")[i % 2]})
                        for i in range(start, start + 100)
                    )
                )
            scraped = await call(app, "GET", "/metrics")
            await app.aclose()
            return live, canary, answers, scraped

    live, canary, answers, scraped = run(body(), timeout=60)
    assert all(a.status == 200 for a in answers)
    served = [a.json()["upstream"] for a in answers]
    hits = served.count("alpha-canary")
    mean, sd = n * weight / 100, math.sqrt(n * weight / 100 * (1 - weight / 100))
    assert abs(hits - mean) <= 4 * sd, (hits, mean, sd)
    assert (len(canary.requests), len(live.requests)) == (hits, n - hits)  # each request went to one upstream
    samples = parse_strict(scraped.body.decode())

    def requests(model: str, upstream: str) -> float:
        labels = (("model", model), ("upstream", upstream), ("status", "200"))
        return samples.get(("fleetform_gateway_requests_total", labels), 0)

    assert sum(requests(m, "alpha-canary") for m in ("alpha-chat", "alpha-small")) == hits
    assert sum(requests(m, "alpha") for m in ("alpha-chat", "alpha-small")) == n - hits
    weights = {
        dict(labels)["upstream"]: v for (name, labels), v in samples.items() if name == "fleetform_gateway_route_weight"
    }
    assert weights == {"alpha": 90, "alpha-canary": 10, "beta": 100}


@pytest.mark.parametrize("weight", [1, 10, 50, 99])
def test_over_many_seeds_the_canary_share_is_unbiased(weight):
    """40 seeds x 2000 draws: the pooled share is within 4 sd (sd = sqrt(p (1 - p) / 80000)) of the weight,
    and the shares' spread across seeds is the binomial one (their variance within a factor of two of
    p (1 - p) / 2000: with 40 seeds the sample variance is within that with probability > 0.999)."""
    seeds, draws, p = 40, 2000, weight / 100
    shares = []
    for seed in range(seeds):
        app = canary_gateway("http://127.0.0.1:9", "http://127.0.0.1:9", weight, seed=seed)
        split = app.splits["alpha"]
        shares.append(sum(app._pick(split).name == "alpha-canary" for _ in range(draws)) / draws)
    pooled = sum(shares) / seeds
    assert abs(pooled - p) <= 4 * math.sqrt(p * (1 - p) / (seeds * draws)), (pooled, p)
    variance = sum((s - pooled) ** 2 for s in shares) / (seeds - 1)
    assert 0.5 <= variance / (p * (1 - p) / draws) <= 2.0, variance


def test_models_list_each_name_once_and_unsplit_deployments_are_untouched():
    async def body():
        async with serve_upstream(UpstreamConfig("beta", ["beta-embed"])) as beta:
            app = GatewayApp.from_table(
                {
                    "alpha": {"url": "http://127.0.0.1:9", "auth": "none"},
                    "alpha-canary": {"url": "http://127.0.0.1:9", "auth": "none"},
                    "beta": {"url": beta.url, "auth": "none"},
                },
                {"alpha-chat": "alpha", "beta-embed": "beta"},
                splits={"alpha": [["alpha", 50], ["alpha-canary", 50]]},
                rng=random.Random(1),
                environ=ENV,
            )
            listed = await call(app, "GET", "/v1/models")
            answers = [await call(app, "POST", "/v1/embeddings", {"model": "beta-embed"}) for _ in range(20)]
            await app.aclose()
            return listed, answers, app

    listed, answers, app = run(body())
    assert [(m["id"], m["owned_by"]) for m in listed.json()["data"]] == [
        ("alpha-chat", "alpha"),
        ("beta-embed", "beta"),
    ]
    assert {a.json()["upstream"] for a in answers} == {"beta"}
    assert app.rng.getstate() == random.Random(1).getstate()  # no draw for a deployment without a split


@pytest.mark.parametrize(
    "splits, message",
    [
        ({"nobody": [["alpha", 1]]}, "split for 'nobody': no model routes to a deployment of that name"),
        ({"alpha": [["alpha", 0], ["alpha-canary", 10]]}, "each with a positive weight"),
        ({"alpha": [["alpha", float("nan")], ["alpha-canary", 10]]}, "each with a positive weight"),
        ({"alpha": [["alpha", "90"], ["alpha-canary", 10]]}, "each with a positive weight"),
        ({"alpha": []}, "needs one or more upstreams"),
        ({"alpha": [["alpha", 1], ["alpha", 2]]}, "an upstream is named twice"),
        ({"alpha": [["alpha", 90], ["ghost", 10]]}, "no upstream named 'ghost'"),
    ],
)
def test_a_bad_split_table_fails_when_the_app_is_built(splits, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GatewayApp.from_table(
            {"alpha": {"url": "http://a", "auth": "none"}, "alpha-canary": {"url": "http://b", "auth": "none"}},
            {"alpha-chat": "alpha"},
            splits=splits,
        )


def test_weights_need_not_be_percents():
    app = GatewayApp(
        {"m": Upstream("a", "http://a", "none")},
        splits={"a": [(Upstream("a", "http://a", "none"), 1), (Upstream("b", "http://b", "none"), 3)]},
        environ={"FLEETFORM_GATEWAY_API_KEY": KEY},
    )
    assert app.metrics.weights == {("a", "a"): 25.0, ("a", "b"): 75.0}
    assert 'fleetform_gateway_route_weight{deployment="a",upstream="b"} 75\n' in app.metrics.text()


# --- time per output token of streamed answers ---------------------------------------------------------------


def event(i: int, text: str = "tok") -> bytes:
    return b'data: {"choices": [{"delta": {"content": "' + f"{text}{i}".encode() + b'"}}]}\n\n'


DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "chunks, expected",
    [
        # (arrival time, bytes) -> (last - first) / (events - 1)
        ([(0.0, event(0)), (0.1, event(1)), (0.2, event(2)), (0.3, DONE)], 0.1),  # [DONE] alone: not an event
        ([(0.0, event(0)), (0.1, event(1)), (0.4, event(2) + DONE)], 0.2),  # [DONE] with the last token
        ([(0.0, event(0) + event(1)), (0.3, event(2) + event(3))], 0.1),  # two events a chunk
        ([(0.0, event(0)[:10]), (0.05, event(0)[10:] + event(1)[:3]), (0.2, event(1)[3:])], None),
        ([(0.0, event(0)[:-1]), (0.1, b"\n" + event(1)), (0.2, event(2))], 0.1),  # "\n" | "data:" split
        ([(0.0, event(0, "data: x\\n")), (0.5, event(1, "\\ndata:"))], 0.5),  # data: inside a token: escaped
        ([(0.0, event(0).replace(b"\n", b"\r\n")), (0.2, event(1).replace(b"\n", b"\r\n"))], 0.2),
        ([(0.0, b": keep-alive\n\n"), (0.1, event(0)), (0.3, event(1)), (0.5, event(2))], 0.2),  # comments
        ([(0.0, event(0)), (0.1, DONE)], None),  # one token: no time between tokens
        ([], None),
    ],
)
def test_events_are_counted_without_parsing(monkeypatch, chunks, expected):
    from renderer.codegen import gateway_app

    counter = gateway_app._Events()
    for at, chunk in chunks:
        monkeypatch.setattr(gateway_app.time, "monotonic", lambda at=at: at)
        counter.see(chunk)
    got = counter.per_token()
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_metrics_carry_time_per_output_token_of_streamed_answers(monkeypatch):
    """5 events 50 ms apart: (last - first) / 4 = 50 ms, as the gateway saw them arrive; a non-streamed
    answer has no TPOT. The whole /metrics text stays valid Prometheus text."""
    log = []

    async def body():
        async with serve_upstream(UpstreamConfig("alpha", chunks=5, chunk_interval=0.05)) as live:
            app = GatewayApp.from_table(
                {"alpha": {"url": live.url, "auth": "none"}}, {"alpha-chat": "alpha"}, environ=ENV, log=log.append
            )
            streamed = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True})
            whole = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
            scraped = await call(app, "GET", "/metrics")
            await app.aclose()
            return streamed, whole, scraped

    streamed, whole, scraped = run(body())
    assert streamed.status == whole.status == 200
    samples = parse_strict(scraped.body.decode())
    labels = (("model", "alpha-chat"), ("upstream", "alpha"))
    assert samples[("fleetform_gateway_upstream_tpot_seconds_count", labels)] == 1
    assert samples[("fleetform_gateway_upstream_ttft_seconds_count", labels)] == 2
    tpot = samples[("fleetform_gateway_upstream_tpot_seconds_sum", labels)]
    assert 0.045 <= tpot <= 0.1, tpot  # the upstream sleeps 50 ms between events (dividing by 5 gives 0.04)
    assert samples[("fleetform_gateway_upstream_tpot_seconds_bucket", labels + (("le", "0.04"),))] == 0
    assert samples[("fleetform_gateway_upstream_tpot_seconds_bucket", labels + (("le", "0.15"),))] == 1
    first, second = (json.loads(line) for line in log[:2])
    assert first["tpot"] == pytest.approx(tpot, abs=1e-5) and second["tpot"] is None


def test_the_rendered_module_splits_through_its_own_lookup(example_fleet, tmp_path, monkeypatch):
    """End to end: the module rendered with a split, its `serve` factory and its `lookup_url` (Modal's
    lookup faked), against a live and a canary upstream that both demand the deployment's one key."""
    from renderer.codegen.gateway_app import GATEWAY_KEY_ENV

    gw = render_gateway(example_fleet.deployments, gateway_from({"enabled": True}), splits=[Split(AWQ, 30)])
    path = tmp_path / gw.filename
    path.write_text(gw.text)
    module = import_module(path)
    monkeypatch.setenv(GATEWAY_KEY_ENV, KEY)
    monkeypatch.setenv(spec.upstream_key_env(AWQ), "awq-key")
    urls: dict[str, str] = {}

    class FakeServer:
        def __init__(self, app_name):
            async def aio():
                return urls.get(app_name)

            self.get_url = type("GetUrl", (), {"aio": staticmethod(aio)})()

    monkeypatch.setattr(
        module.modal.Server, "from_name", lambda app_name, name, environment_name=None: FakeServer(app_name)
    )
    bearer = {"Authorization": "Bearer awq-key"}

    async def body():
        async with (
            serve_upstream(UpstreamConfig("live", ["qwen2.5-7b-awq"], require_headers=bearer)) as live,
            serve_upstream(UpstreamConfig("canary", ["qwen2.5-7b-awq"], require_headers=bearer)) as canary,
        ):
            urls.update({AWQ: live.url, spec.canary_app_name(AWQ): canary.url})
            app = module.serve.local()
            app.rng = random.Random(7)
            answers = [
                await call(app, "POST", "/v1/completions", {"model": "qwen2.5-7b-awq", "prompt": "hi"})
                for _ in range(60)
            ]
            await app.aclose()
            return answers

    answers = run(body())
    assert {a.status for a in answers} == {200}
    served = [a.json()["upstream"] for a in answers]
    # Binomial(60, 0.3): mean 18, sd 3.5; the seed is fixed, the bounds (4 sd) catch a split not applied
    assert 4 <= served.count("canary") <= 32 and served.count("live") == 60 - served.count("canary")


def test_the_relay_benchmark_still_drives_the_relay_loop():
    """benchmarks/gateway_relay.py reaches into `_proxy` and `_connect`: it must not rot silently."""
    import importlib.util

    from renderer.codegen import gateway_app

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gateway_relay.py"
    spec_ = importlib.util.spec_from_file_location("gateway_relay", path)
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    assert run(bench.per_event(gateway_app, 2, 5, "text/event-stream")) > 0
