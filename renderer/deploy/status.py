"""`fleetform status`: per deployment, the live version and tag, in sync / drifted / not deployed,
and its URL; then the orphans."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.deploy import traffic as gateway_traffic
from renderer.deploy.common import Report
from renderer.modal_api import NO_CREDENTIALS, Backend, BackendError
from renderer.plan.live import Action, LiveRow, live_plan

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp

IN_SYNC, DRIFTED, NOT_DEPLOYED, UNMANAGED, ORPHAN = "in_sync", "drifted", "not_deployed", "unmanaged", "orphan"
CANARY = "canary"  # a deployment's canary app: a rollout in progress, or one left unfinished


@dataclass(frozen=True)
class StatusRow:
    name: str
    modal_env: str | None
    state: str  # in_sync | drifted | not_deployed | unmanaged | orphan
    desired_tag: str | None
    live_version: int | None
    live_tag: str | None
    url: str | None
    gateway: bool = False  # the fleet's gateway module, not a deployment
    canary_of: str | None = None  # for a canary app: its deployment

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "state": self.state,
            "desired_tag": self.desired_tag,
            "live_version": self.live_version,
            "live_tag": self.live_tag,
            "url": self.url,
            "canary_of": self.canary_of,
        }


@dataclass
class StatusReport(Report):
    rows: list[StatusRow] = field(default_factory=list)
    error: str | None = None
    # what the gateway routed to each deployment (its /metrics); None without a live gateway
    traffic: gateway_traffic.GatewayTraffic | None = None
    traffic_note: str | None = None  # why there are no traffic figures, when a gateway is live

    @property
    def exit_code(self) -> int:
        return 1 if self.error else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.error is None,
            "error": self.error,
            "deployments": [r.to_dict() for r in self.rows],
            "traffic": None if self.traffic is None else self.traffic.to_dict(),
            "traffic_note": self.traffic_note,
        }

    def render(self, console: Console) -> None:
        from rich.markup import escape  # text from Modal is printed as it is, never as markup
        from rich.table import Table

        if self.error:
            console.print(f"[red]error:[/red] {escape(self.error)}", highlight=False, soft_wrap=True)
            return
        styles = {
            IN_SYNC: "green",
            DRIFTED: "yellow",
            NOT_DEPLOYED: "dim",
            UNMANAGED: "red",
            ORPHAN: "magenta",
            CANARY: "cyan",
        }
        table = Table(title="Fleet status")
        columns = ["Deployment", "Environment", "State", "Live version", "Live tag", "Rendered tag", "URL"]
        if self.traffic is not None:
            columns += ["Req/s", "Requests", "5xx", "In flight"]
        for col in columns:
            table.add_column(col, justify="right" if col in ("Req/s", "Requests", "5xx", "In flight") else "left")
        for r in self.rows:
            s = styles.get(r.state, "")
            cells = [
                f"{r.name} (gateway)" if r.gateway else r.name,
                escape(r.modal_env or "(default)"),
                f"[{s}]{escape(self.state_text(r))}[/{s}]",
                f"v{r.live_version}" if r.live_version is not None else "-",
                escape(r.live_tag or "-"),
                r.desired_tag or "-",
                escape(r.url or "-"),
            ]
            if self.traffic is not None:
                t = self.traffic.deployments.get(r.name)
                cells += (
                    ["-"] * 4
                    if t is None or r.gateway
                    else [
                        "-" if t.per_second is None else f"{t.per_second:.2f}",
                        str(t.requests),
                        str(t.server_errors),
                        str(t.in_flight),
                    ]
                )
            table.add_row(*cells)
        console.print(table)
        for r in self.rows:
            if r.canary_of:
                console.print(f"[cyan]canary:[/cyan] {escape(self.canary_note(r))}", highlight=False)
        if self.traffic is not None:
            since = (
                ""
                if self.traffic.since is None
                else time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(self.traffic.since))
            )
            console.print(
                escape(
                    f"Traffic: what the gateway container {self.traffic.container or '?'} routed{since} "
                    "(each gateway container counts its own)."
                ),
                highlight=False,
            )
        elif self.traffic_note:
            console.print(escape(f"Traffic: {self.traffic_note}"), highlight=False)

    def state_text(self, r: StatusRow) -> str:
        if r.canary_of is None:
            return r.state.replace("_", " ")
        share = self.canary_weight(r)
        return f"canary of {r.canary_of}" + ("" if share is None else f" ({share:g}%)")

    def canary_weight(self, r: StatusRow) -> float | None:
        """The share of its deployment's requests the gateway sends this canary, when its /metrics was read."""
        if self.traffic is None or r.canary_of is None:
            return None
        return self.traffic.weights.get(r.canary_of, {}).get(r.name)

    def canary_note(self, r: StatusRow) -> str:
        share = self.canary_weight(r)
        if share is None and self.traffic is not None:
            split = "the gateway sends it no request (no split)"
        elif share is None:
            split = "its share is in the gateway's /metrics (see Traffic below)"
        else:
            split = f"the gateway sends it {share:g}% of {r.canary_of}'s requests"
        return (
            f"{r.name} runs {r.live_tag or 'no tag'} beside {r.canary_of}; {split}. A rollout is in progress or "
            f"was left unfinished: `fleetform deploy` finishes it, `fleetform rollback {r.canary_of}` ends it"
        )


_PLAN_TO_STATE = {
    Action.CREATE: NOT_DEPLOYED,
    Action.UPDATE: DRIFTED,
    Action.UNCHANGED: IN_SYNC,
    Action.CONFLICT: UNMANAGED,
    Action.ORPHAN: ORPHAN,
    Action.CANARY: CANARY,
}


def run_status(
    apps: Sequence[RenderedApp],
    backend: Backend,
    env: str | None = None,
    gateway: RenderedGateway | None = None,
    environ: Mapping[str, str] | None = None,
) -> StatusReport:
    """Per deployment (and the gateway, when fleet.yaml enables it: `gateway` is its rendered
    module, in Modal environment `env`): live version and tag, in sync / drifted / not deployed,
    URL; then orphans. With the gateway live and its key in `environ`, what it routed to each
    deployment (`renderer.deploy.traffic`)."""
    if not backend.credentials_available():
        return StatusReport(error=NO_CREDENTIALS)
    try:
        rows = live_plan(apps, backend, env, gateway)
    except BackendError as exc:
        return StatusReport(error=str(exc))
    live_rows = [r for r in rows if r.live is not None and r.action != Action.CONFLICT]
    with ThreadPoolExecutor(max_workers=8) as pool:
        urls = dict(
            zip((r.name for r in live_rows), pool.map(lambda r: _url_or_none(backend, r), live_rows), strict=True)
        )
    report = StatusReport(
        [
            StatusRow(
                r.name,
                r.modal_env,
                _PLAN_TO_STATE[r.action],
                r.desired_tag,
                r.live_version,
                r.live_tag,
                urls.get(r.name),
                r.gateway,
                r.canary_of,
            )
            for r in rows
        ]
    )
    gateway_row = next((r for r in report.rows if r.gateway and r.live_version is not None), None)
    if gateway_row is not None:
        key = gateway_traffic.metrics_key(os.environ if environ is None else environ)
        if not gateway_row.url:
            report.traffic_note = "the gateway has no URL, so its /metrics cannot be read"
        elif key is None:
            report.traffic_note = f"set {' or '.join(gateway_traffic.METRICS_KEY_VARS)} to see what the gateway routed"
        else:
            try:
                report.traffic = gateway_traffic.fetch(gateway_row.url, key)
            except OSError as exc:
                report.traffic_note = str(exc)
    return report


def _url_or_none(backend: Backend, row: LiveRow) -> str | None:
    if row.live is not None and row.live.url:
        return row.live.url
    try:
        return backend.web_url(row.name, row.modal_env)
    except BackendError:
        return None
