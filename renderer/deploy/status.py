"""`fleetform status`: per deployment, the live version and tag, in sync / drifted / not deployed,
and its URL; then the orphans."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.deploy.common import Report
from renderer.modal_api import NO_CREDENTIALS, Backend, BackendError
from renderer.plan.live import Action, LiveRow, live_plan

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp

IN_SYNC, DRIFTED, NOT_DEPLOYED, UNMANAGED, ORPHAN = "in_sync", "drifted", "not_deployed", "unmanaged", "orphan"


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "state": self.state,
            "desired_tag": self.desired_tag,
            "live_version": self.live_version,
            "live_tag": self.live_tag,
            "url": self.url,
        }


@dataclass
class StatusReport(Report):
    rows: list[StatusRow] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error else 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.error is None, "error": self.error, "deployments": [r.to_dict() for r in self.rows]}

    def render(self, console: Console) -> None:
        from rich.markup import escape  # text from Modal is printed as it is, never as markup
        from rich.table import Table

        if self.error:
            console.print(f"[red]error:[/red] {escape(self.error)}", highlight=False, soft_wrap=True)
            return
        styles = {IN_SYNC: "green", DRIFTED: "yellow", NOT_DEPLOYED: "dim", UNMANAGED: "red", ORPHAN: "magenta"}
        table = Table(title="Fleet status")
        for col in ("Deployment", "Environment", "State", "Live version", "Live tag", "Rendered tag", "URL"):
            table.add_column(col)
        for r in self.rows:
            s = styles.get(r.state, "")
            table.add_row(
                f"{r.name} (gateway)" if r.gateway else r.name,
                escape(r.modal_env or "(default)"),
                f"[{s}]{r.state.replace('_', ' ')}[/{s}]",
                f"v{r.live_version}" if r.live_version is not None else "-",
                escape(r.live_tag or "-"),
                r.desired_tag or "-",
                escape(r.url or "-"),
            )
        console.print(table)


_PLAN_TO_STATE = {
    Action.CREATE: NOT_DEPLOYED,
    Action.UPDATE: DRIFTED,
    Action.UNCHANGED: IN_SYNC,
    Action.CONFLICT: UNMANAGED,
    Action.ORPHAN: ORPHAN,
}


def run_status(
    apps: Sequence[RenderedApp], backend: Backend, env: str | None = None, gateway: RenderedGateway | None = None
) -> StatusReport:
    """Per deployment (and the gateway, when fleet.yaml enables it: `gateway` is its rendered
    module, in Modal environment `env`): live version and tag, in sync / drifted / not deployed,
    URL; then orphans."""
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
    return StatusReport(
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
            )
            for r in rows
        ]
    )


def _url_or_none(backend: Backend, row: LiveRow) -> str | None:
    if row.live is not None and row.live.url:
        return row.live.url
    try:
        return backend.web_url(row.name, row.modal_env)
    except BackendError:
        return None
