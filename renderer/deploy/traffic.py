"""What the fleet's gateway has routed, per deployment, read from its `/metrics` for `fleetform status`.

The gateway counts requests by served model, deployment (`upstream`) and status, per container, since
that container started (`fleetform_gateway_start_time_seconds`). A scrape through the public URL
reaches one container, so the figures are that container's: requests, server errors (status 5xx) and
the average rate since it started, plus requests in flight now. The key is the one callers send the
gateway (`FLEETFORM_GATEWAY_API_KEY`), or the read-only `FLEETFORM_GATEWAY_METRICS_KEY`.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

METRICS_KEY_VARS = ("FLEETFORM_GATEWAY_METRICS_KEY", "FLEETFORM_GATEWAY_API_KEY")  # first set wins
MAX_METRICS_BYTES = 4 * 1024 * 1024  # a gateway's counters are kilobytes; anything bigger is not them

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Traffic:
    """One deployment's figures, from one gateway container."""

    requests: int = 0
    server_errors: int = 0  # answers with status 5xx
    in_flight: int = 0
    per_second: float | None = None  # requests / seconds since the container's counters started

    def to_dict(self) -> dict[str, Any]:
        rate = None if self.per_second is None else round(self.per_second, 4)
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "in_flight": self.in_flight,
            "requests_per_second": rate,
        }


@dataclass
class GatewayTraffic:
    container: str | None  # the container whose counters these are
    since: float | None  # Unix time its counters started
    deployments: dict[str, Traffic] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "since": self.since,
            "deployments": {name: t.to_dict() for name, t in sorted(self.deployments.items())},
        }


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str, now: float | None = None) -> GatewayTraffic:
    """The gateway's Prometheus text -> per-deployment traffic. Unknown lines are ignored."""
    traffic = GatewayTraffic(None, None)
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or line.startswith("#"):
            continue
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group("labels") or "")}
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        name = m.group("name")
        if name == "fleetform_gateway_info":
            traffic.container = labels.get("container")
        elif name == "fleetform_gateway_start_time_seconds":
            traffic.since = value
        elif name in ("fleetform_gateway_requests_total", "fleetform_gateway_in_flight") and labels.get("upstream"):
            t = traffic.deployments.setdefault(labels["upstream"], Traffic())
            if name == "fleetform_gateway_in_flight":
                t.in_flight += int(value)
            else:
                t.requests += int(value)
                if labels.get("status", "").startswith("5"):
                    t.server_errors += int(value)
    elapsed = (time.time() if now is None else now) - traffic.since if traffic.since is not None else None
    for t in traffic.deployments.values():
        t.per_second = t.requests / elapsed if elapsed and elapsed > 0 else None
    return traffic


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
