"""What the fleet's gateway has routed, per upstream, read from its `/metrics`: for `fleetform status`, and
for judging a canary against the live version it would replace.

The gateway counts requests by served model, upstream and status, per container, since that container
started (`fleetform_gateway_start_time_seconds`). An upstream is a deployment's live app (its name) or,
during a canary rollout, its canary app (`spec.canary_app_name`: the name + `-canary`). A scrape
through the public URL reaches one container, so the figures are that container's: requests by
status, errors, the average rate since it started, requests in flight now, the time-to-first-token
and time-per-output-token histograms, and the split in force (`weights`). `delta` turns two scrapes
of one container into the figures of the window between them; `histogram_quantile` reads a
percentile from cumulative buckets as Prometheus does. The key is the one callers send the gateway
(`FLEETFORM_GATEWAY_API_KEY`), or the read-only `FLEETFORM_GATEWAY_METRICS_KEY`.

Which answers count against an upstream (`Traffic.errors`): every 5xx (its own failures, and the
gateway's 502/503/504 when it could not be reached, did not start in time or went silent), and
429 (no capacity), 408 (timed out), 401 and 403 (callers authenticate at the gateway, so these mean
the gateway's credential for that app failed: a canary deployed without its key). Other 4xx
(`client_errors`: a malformed request, an unknown route, a prompt over the context length) follow
from the request, and the split draws requests at random, so live and canary see the same share of
bad input: a canary whose client-error *rate* is clearly above the live one's rejects input the
live version accepts (a shorter `max_model_len`, say), and a rollout can compare those rates. 499
(the caller went away) counts as neither.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

METRICS_KEY_VARS = ("FLEETFORM_GATEWAY_METRICS_KEY", "FLEETFORM_GATEWAY_API_KEY")  # first set wins
MAX_METRICS_BYTES = 4 * 1024 * 1024  # a gateway's counters are kilobytes; anything bigger is not them
UPSTREAM_FAULT_4XX = frozenset({401, 403, 408, 429})  # besides every 5xx: see the module's docstring
CANCELLED = 499  # the caller went away: nobody's error

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_HISTOGRAMS = {"fleetform_gateway_upstream_ttft_seconds": "ttft", "fleetform_gateway_upstream_tpot_seconds": "tpot"}


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The `q`-quantile (0 <= q <= 1) of a histogram given as (upper bound, cumulative count) pairs, as
    Prometheus' `histogram_quantile` computes it: find the bucket holding rank q x count, interpolate
    linearly between its lower bound (the previous bucket's upper bound, 0 for the first) and its
    upper bound. A rank in the `+Inf` bucket gives the largest finite bound. None when there is no
    observation (Prometheus: NaN). The buckets need a `+Inf` one (ValueError otherwise)."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[float(bound)] = merged.get(float(bound), 0.0) + float(count)
    pairs = sorted(merged.items())
    if not pairs or pairs[-1][0] != math.inf:
        raise ValueError("a histogram needs a +Inf bucket")
    if len(pairs) < 2:
        return None
    bounds, counts = [b for b, _ in pairs], []
    for _, count in pairs:  # cumulative by definition: a dip (torn reads) is evened out, as Prometheus does
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    b = bisect.bisect_left(counts, rank, 0, len(counts) - 1)  # the first bucket whose count reaches rank
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    if count <= 0:  # q = 0 with empty first buckets (Prometheus: NaN)
        return start
    return start + (end - start) * (rank / count)


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: `buckets` (upper bound, cumulative count), ascending, `+Inf` last."""

    buckets: tuple[tuple[float, float], ...]
    sum: float = 0.0

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets) if self.buckets else None

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def since(self, earlier: Histogram | None) -> Histogram | None:
        """The observations made after `earlier` (a scrape of the same counters), or None when a count
        went down (the counters restarted: then all of `self` is new) or the buckets differ."""
        if earlier is None or not earlier.buckets:
            return self
        if [b for b, _ in earlier.buckets] != [b for b, _ in self.buckets]:
            return None
        diff = tuple((b, now - then) for (b, now), (_, then) in zip(self.buckets, earlier.buckets, strict=True))
        if any(c < 0 for _, c in diff) or self.sum < earlier.sum:
            return None
        return Histogram(diff, self.sum - earlier.sum)


@dataclass
class Traffic:
    """One upstream's figures (a deployment's live app, or its canary), from one gateway container,
    summed over the model names it serves."""

    requests: int = 0
    in_flight: int = 0
    per_second: float | None = None  # requests / seconds since the counters started (or over the window)
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> answers
    ttft: Histogram | None = None  # seconds to the upstream's first body byte
    tpot: Histogram | None = None  # seconds per output token, streamed answers only

    @property
    def server_errors(self) -> int:
        """Answers with status 5xx."""
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def errors(self) -> int:
        """Answers that count against the upstream: 5xx and 401, 403, 408, 429 (see the module)."""
        return sum(n for s, n in self.statuses.items() if s >= 500 or s in UPSTREAM_FAULT_4XX)

    @property
    def client_errors(self) -> int:
        """Other 4xx answers (bad input, which live and canary get alike); not 499, the caller leaving."""
        return sum(n for s, n in self.statuses.items() if 400 <= s < 500 and s not in UPSTREAM_FAULT_4XX | {CANCELLED})

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        rate = None if self.per_second is None else round(self.per_second, 4)

        def q(h: Histogram | None, p: float) -> float | None:
            value = None if h is None else h.quantile(p)
            return None if value is None else round(value, 6)

        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "in_flight": self.in_flight,
            "requests_per_second": rate,
            "ttft_p50_seconds": q(self.ttft, 0.5),
            "ttft_p90_seconds": q(self.ttft, 0.9),
            "tpot_p50_seconds": q(self.tpot, 0.5),
            "tpot_p90_seconds": q(self.tpot, 0.9),
        }


@dataclass
class GatewayTraffic:
    """One scrape of one gateway container. `deployments` is keyed by upstream: a deployment's name, or
    its canary app's name while a rollout is in progress; `weights` is the split in force, deployment
    -> upstream -> percent of its requests."""

    container: str | None  # the container whose counters these are
    since: float | None  # Unix time its counters started (for a `delta`: the earlier scrape's time)
    deployments: dict[str, Traffic] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    scraped_at: float | None = None  # Unix time of this scrape

    def upstream(self, name: str) -> Traffic:
        """The figures of one upstream: empty ones when it has had no request yet."""
        return self.deployments.get(name) or Traffic()

    def to_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "since": self.since,
            "deployments": {name: t.to_dict() for name, t in sorted(self.deployments.items())},
            "weights": {d: dict(sorted(w.items())) for d, w in sorted(self.weights.items())},
        }


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str, now: float | None = None) -> GatewayTraffic:
    """The gateway's Prometheus text -> per-upstream traffic. Unknown lines are ignored."""
    traffic = GatewayTraffic(None, None, scraped_at=time.time() if now is None else now)
    buckets: dict[tuple[str, str], dict[float, float]] = {}  # (upstream, ttft|tpot) -> bound -> count
    sums: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or line.startswith("#"):
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group("labels") or "")}
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        name, upstream = m.group("name"), labels.get("upstream")
        if name == "fleetform_gateway_info":
            traffic.container = labels.get("container")
        elif name == "fleetform_gateway_start_time_seconds":
            traffic.since = value
        elif name == "fleetform_gateway_route_weight" and labels.get("deployment") and upstream:
            traffic.weights.setdefault(labels["deployment"], {})[upstream] = value
        elif not upstream:
            continue  # requests for no deployment (an unknown model): nobody's figures
        elif name == "fleetform_gateway_in_flight":
            traffic.deployments.setdefault(upstream, Traffic()).in_flight += int(value)
        elif name == "fleetform_gateway_requests_total":
            t = traffic.deployments.setdefault(upstream, Traffic())
            t.requests += int(value)
            status = labels.get("status", "")
            if status.isdigit():
                t.statuses[int(status)] = t.statuses.get(int(status), 0) + int(value)
        elif name.endswith("_bucket") and name[: -len("_bucket")] in _HISTOGRAMS and "le" in labels:
            try:
                bound = float(labels["le"])  # "+Inf" reads as inf
            except ValueError:
                continue
            table = buckets.setdefault((upstream, _HISTOGRAMS[name[: -len("_bucket")]]), {})
            table[bound] = table.get(bound, 0.0) + value  # summed over the upstream's model names
        elif name.endswith("_sum") and name[: -len("_sum")] in _HISTOGRAMS:
            key = (upstream, _HISTOGRAMS[name[: -len("_sum")]])
            sums[key] = sums.get(key, 0.0) + value
    for (upstream, which), table in buckets.items():
        t = traffic.deployments.setdefault(upstream, Traffic())
        setattr(t, which, Histogram(tuple(sorted(table.items())), sums.get((upstream, which), 0.0)))
    elapsed = traffic.scraped_at - traffic.since if traffic.since is not None else None
    for t in traffic.deployments.values():
        t.per_second = t.requests / elapsed if elapsed and elapsed > 0 else None
    return traffic


def delta(before: GatewayTraffic, after: GatewayTraffic) -> GatewayTraffic | None:
    """What was routed between two scrapes (the window of a canary), or None when it cannot be known.

    Of the same container (same `container` and `since`): the difference of its counters, per
    upstream; an upstream whose counters went down restarted them, and all of its `after` figures
    are new (Prometheus' `increase` reads a reset so). Of another container, or the same one
    restarted (its counters started again): its figures are the window's when its counters started
    after `before` was scraped, else None: they mix in traffic from before the window (a scrape
    through the public URL may reach any of the gateway's containers; keep a first scrape of each).
    Gauges (in flight, weights) are `after`'s. `per_second` is over the window."""
    if (after.container, after.since) != (before.container, before.since):
        fresh = after.since is not None and before.scraped_at is not None and after.since >= before.scraped_at
        return dataclasses.replace(after) if fresh else None
    out = GatewayTraffic(after.container, before.scraped_at, {}, after.weights, after.scraped_at)
    for name, now in after.deployments.items():
        then = before.deployments.get(name) or Traffic()
        statuses = {s: n - then.statuses.get(s, 0) for s, n in now.statuses.items()}
        ttft, tpot = _since(now.ttft, then.ttft), _since(now.tpot, then.tpot)
        reset = (
            now.requests < then.requests
            or any(n < 0 for n in statuses.values())
            or any(s not in now.statuses for s in then.statuses)
            or (now.ttft is not None and ttft is None)
            or (now.tpot is not None and tpot is None)
        )
        if reset:
            out.deployments[name] = dataclasses.replace(now, per_second=None)
        else:
            out.deployments[name] = Traffic(
                now.requests - then.requests, now.in_flight, None, {s: n for s, n in statuses.items() if n}, ttft, tpot
            )
    window = (after.scraped_at or 0.0) - (before.scraped_at or 0.0)
    for t in out.deployments.values():
        t.per_second = t.requests / window if before.scraped_at is not None and window > 0 else None
    return out


def _since(now: Histogram | None, then: Histogram | None) -> Histogram | None:
    return None if now is None else now.since(then)


def _added(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """Two histograms of one metric (other containers' counters) as one; None when the buckets differ."""
    if a is None or b is None:
        return a or b
    if [x for x, _ in a.buckets] != [x for x, _ in b.buckets]:
        return None
    return Histogram(tuple((x, n + m) for (x, n), (_, m) in zip(a.buckets, b.buckets, strict=True)), a.sum + b.sum)


def merged(parts: Iterable[Traffic]) -> Traffic:
    """Several containers' figures for one upstream as one: counts and histograms add up."""
    out = Traffic()
    for t in parts:
        out.requests += t.requests
        out.in_flight += t.in_flight
        for status, n in t.statuses.items():
            out.statuses[status] = out.statuses.get(status, 0) + n
        out.ttft, out.tpot = _added(out.ttft, t.ttft), _added(out.tpot, t.tpot)
    return out


class Window:
    """What the gateway routed since a moment (`start`, Unix time), over every container a scrape reached.

    A scrape through the public URL reaches one of the gateway's containers. Each container's share of the
    window is the `delta` between the first and the latest scrape of it, or, for a container whose counters
    started after `start` (a new container), all of its latest scrape. A container met first later in the
    window loses what it routed before that first scrape: the window undercounts, never mixes in traffic
    from before it."""

    def __init__(self, start: float):
        self.start = start
        self._first: dict[tuple[str | None, float | None], GatewayTraffic | None] = {}
        self._latest: dict[tuple[str | None, float | None], GatewayTraffic] = {}

    def add(self, scrape: GatewayTraffic) -> None:
        key = (scrape.container, scrape.since)
        if key not in self._first:
            fresh = scrape.since is not None and scrape.since >= self.start
            self._first[key] = None if fresh else scrape
        self._latest[key] = scrape

    @property
    def containers(self) -> int:
        return len(self._latest)

    def upstream(self, name: str) -> Traffic:
        """The window's figures of one upstream (a deployment's live app or its canary)."""
        parts = []
        for key, latest in self._latest.items():
            first = self._first[key]
            window = latest if first is None else delta(first, latest)
            if window is not None:
                parts.append(window.upstream(name))
        return merged(parts)


def metrics_key(environ: Mapping[str, str]) -> str | None:
    return next((environ[v] for v in METRICS_KEY_VARS if environ.get(v)), None)


def fetch(url: str, key: str, timeout: float = 10.0) -> GatewayTraffic:
    """Scrape `url`/metrics. Raises OSError (a one-line reason) when the gateway cannot be read."""
    req = urllib.request.Request(url.rstrip("/") + "/metrics", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(MAX_METRICS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise OSError(f"the gateway answered /metrics with HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OSError(f"cannot reach the gateway's /metrics: {reason}") from None
    if len(body) > MAX_METRICS_BYTES:
        raise OSError("the gateway's /metrics is larger than any gateway writes")
    return parse(body.decode("utf-8", errors="replace"))
