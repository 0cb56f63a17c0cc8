"""The live plan: the rendered fleet against what Modal runs, and what `deploy` would do to each app.

Each deployment's tag (`ff-<short hash>` of its rendered module) is compared with the content of
the live version (`LiveApp.tag`, which follows a rollback entry to the version it restored):
create / update / unchanged, plus conflicts (an app of that name that fleetform does not manage)
and orphans (managed apps no YAML describes). The fleet's gateway module, when fleet.yaml
enables it, is one more member, compared by its content hash the same way: never an orphan.

Everything that reaches Modal goes through a `modal_api.Backend`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.config.spec import canary_app_name
from renderer.modal_api import Backend, LiveApp, deployment_tag

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp

    Member = RenderedApp | RenderedGateway

NO_CREDENTIALS_PLAN_NOTE = "no Modal credentials, showing the offline plan (run `modal token new` for the live view)"


class Action(enum.StrEnum):
    """What deploying the fleet would do to one app (the value is what JSON output says)."""

    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"  # an app of that name runs, and fleetform does not manage it
    ORPHAN = "orphan"  # fleetform manages it, and no YAML describes it
    CANARY = "canary"  # a deployment's canary app (`NAME-canary`): a rollout in progress, or one left unfinished


CHANGES = (Action.CREATE, Action.UPDATE)


@dataclass(frozen=True)
class LiveRow:
    """One member of the fleet (or an orphan) and what deploying the fleet would do to it."""

    name: str
    modal_env: str | None  # the Modal environment the app runs in
    action: Action
    desired_tag: str | None = None
    live: LiveApp | None = None
    app: Member | None = field(default=None, repr=False, compare=False)
    gateway: bool = False  # the fleet's gateway module, not a deployment
    canary_of: str | None = None  # for a CANARY row: the deployment whose canary app this is

    @property
    def live_tag(self) -> str | None:
        return self.live.tag if self.live else None

    @property
    def live_version(self) -> int | None:
        return self.live.version if self.live else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "action": self.action,
            "desired_tag": self.desired_tag,
            "live_tag": self.live_tag,
            "live_version": self.live_version,
            "canary_of": self.canary_of,
        }


def modal_envs_of(apps: Iterable[RenderedApp], fallback: str | None = None) -> list[str | None]:
    """The Modal environments the fleet deploys into (`fallback` when it has no deployment)."""
    envs: list[str | None] = []
    for app in apps:
        if app.deployment.modal_env not in envs:
            envs.append(app.deployment.modal_env)
    return envs or [fallback]


def modal_env_for(name: str, apps: Iterable[RenderedApp], fallback: str | None = None) -> str | None:
    """The Modal environment of deployment `name` (for rollback/destroy), else `fallback`.

    The gateway deploys into `fallback` (the Modal environment `--env` selects), like an orphan.
    """
    for app in apps:
        if app.deployment.name == name:
            return app.deployment.modal_env
    return fallback


def live_plan(
    apps: Sequence[RenderedApp], backend: Backend, env: str | None = None, gateway: RenderedGateway | None = None
) -> list[LiveRow]:
    """Compare the rendered fleet with what is live. Raises BackendError.

    `env` is the Modal environment searched for orphans when no deployment names one, and the one
    `gateway` (the rendered gateway module, when fleet.yaml enables it) deploys into.
    """
    envs = modal_envs_of(apps, env)
    if gateway is not None and env not in envs:
        envs.append(env)
    live = {e: {a.name: a for a in backend.list_apps(e)} for e in envs}
    members: list[tuple[Member, str | None, bool]] = [(a, a.deployment.modal_env, False) for a in apps]
    if gateway is not None:
        members.append((gateway, env, True))
    rows = []
    for module, e, is_gateway in members:
        tag = deployment_tag(module)
        current = live[e].get(module.name)
        rows.append(LiveRow(module.name, e, _action(current, tag), tag, current, module, is_gateway))
    described = {(e, m.name) for m, e, _ in members}
    canaries = {(a.deployment.modal_env, canary_app_name(a.name)): a.name for a in apps}
    for e in envs:
        for current in sorted(live[e].values(), key=lambda a: a.name):
            if current.managed and (e, current.name) not in described:
                of = canaries.get((e, current.name))
                action = Action.CANARY if of else Action.ORPHAN
                rows.append(LiveRow(current.name, e, action, None, current, canary_of=of))
    return rows


def _action(current: LiveApp | None, tag: str) -> Action:
    if current is None:
        return Action.CREATE
    if not current.managed:
        return Action.CONFLICT
    return Action.UNCHANGED if current.tag == tag else Action.UPDATE


def plan_exit_code(rows: Sequence[LiveRow]) -> int:
    """`plan --detailed-exitcode`: 2 if deploying would change something, else 0.

    Orphans do not count: `deploy` never removes anything (that is `destroy`). A canary app does:
    `deploy` finishes the rollout that left it, one way or the other.
    """
    return 2 if any(r.action in (*CHANGES, Action.CONFLICT, Action.CANARY) for r in rows) else 0


def plan_to_dict(rows: Sequence[LiveRow]) -> dict[str, Any]:
    return {"live": True, "changes": plan_exit_code(rows) == 2, "rows": [r.to_dict() for r in rows]}


_ACTION_STYLE = {
    Action.CREATE: "green",
    Action.UPDATE: "yellow",
    Action.UNCHANGED: "dim",
    Action.CONFLICT: "red",
    Action.ORPHAN: "magenta",
    Action.CANARY: "cyan",
}


def render_plan(rows: Sequence[LiveRow], console: Console) -> None:
    """The live plan as a table, then one line of totals."""
    from rich.markup import escape  # names and tags read from Modal are printed as they are
    from rich.table import Table

    table = Table(title="Live plan")
    for col in ("Deployment", "Environment", "Action", "Live", "Desired"):
        table.add_column(col)
    for r in rows:
        live = escape(f"v{r.live_version} {r.live_tag or '(no tag)'}") if r.live else "-"
        style = _ACTION_STYLE.get(r.action, "")
        name = escape(f"{r.name} (gateway)" if r.gateway else r.name)
        table.add_row(
            name, escape(r.modal_env or "(default)"), f"[{style}]{r.action}[/{style}]", live, r.desired_tag or "-"
        )
    console.print(table)
    counts = {a: sum(1 for r in rows if r.action == a) for a in Action}
    console.print(
        ", ".join(f"{n} to {a}" if a in CHANGES else f"{n} {a}" for a, n in counts.items() if n)
        or "nothing deployed, nothing to do"
    )
    for r in rows:
        if r.action == Action.CONFLICT:
            console.print(f"[red]conflict:[/red] {escape(conflict_message(r))}")
        elif r.action == Action.ORPHAN:
            console.print(f"[magenta]orphan:[/magenta] {escape(orphan_message(r.live))}")
        elif r.action == Action.CANARY:
            console.print(f"[cyan]canary:[/cyan] {escape(canary_message(r))}")


def conflict_message(row: LiveRow) -> str:
    return (
        f"an app named {row.name} already runs in Modal environment {env_label(row.modal_env)} "
        "and fleetform does not manage it; rename the deployment, or remove that app "
        "(`modal app stop`), or deploy with --adopt to take it over"
    )


def orphan_message(live: LiveApp | None) -> str:
    assert live is not None
    return (
        f"{live.name} (v{live.version}, {live.tag or 'no tag'}) in {env_label(live.modal_env)} is managed by "
        f"fleetform but no YAML describes it; `fleetform destroy {live.name}` removes it"
    )


def canary_message(row: LiveRow) -> str:
    assert row.live is not None
    return (
        f"{row.name} ({row.live.tag or 'no tag'}) runs beside {row.canary_of}: a canary rollout is in progress "
        f"or was left unfinished; `fleetform deploy` finishes it (--canary resumes watching it), "
        f"`fleetform rollback {row.canary_of}` ends it and returns all traffic to the live version"
    )


def env_label(env: str | None) -> str:
    return f"'{env}'" if env else "(default)"
