"""`fleetform rollback NAME [--to VERSION]`: make an earlier version of a managed app live again."""

from __future__ import annotations

from renderer.deploy.common import ActionReport, managed_app
from renderer.modal_api import Backend, BackendError, LiveApp, Version


def parse_version(text: str) -> int | None:
    """'v3' or '3' -> 3; anything else -> None (it may be a tag)."""
    body = text[1:] if text[:1] in ("v", "V") else text
    return int(body) if body.isdigit() and int(body) > 0 else None


def rollback_target(history: list[Version], live: LiveApp, to: str | None) -> Version | str:
    """The version to restore, or why there is none.

    As `modal app rollback` does, whether Modal allows it is left to Modal (the request fails with
    its reason); history entries' `rollback_allowed` flag is not consulted. Without `to`, the
    newest earlier version that runs other content than the live one, else the newest earlier one.
    """
    if to is None:
        earlier = [v for v in history if live.version is None or v.version < live.version]
        candidates = [v for v in earlier if v.tag != live.tag] or earlier
        return candidates[0] if candidates else f"{live.name} has no earlier version to roll back to"
    number = parse_version(to)
    matches = [v for v in history if (v.version == number if number is not None else v.tag == to)]
    if not matches:
        known = ", ".join(f"v{v.version} ({v.tag or 'no tag'})" for v in history[:10])
        return f"{live.name} has no version {to!r}; its history: {known or 'empty'}"
    target = matches[0]
    if target.version == live.version:
        return f"v{target.version} is already the live version of {live.name}"
    return target


def run_rollback(name: str, backend: Backend, *, modal_env: str | None = None, to: str | None = None) -> ActionReport:
    """`fleetform rollback NAME [--to VERSION]`: VERSION is v3, 3, or a deployment tag (ff-...)."""
    try:
        live = managed_app(name, backend, modal_env, "roll back")
        if isinstance(live, ActionReport):
            return live
        target = rollback_target(backend.history(name, modal_env), live, to)
        if isinstance(target, str):
            return ActionReport(False, target)
        backend.rollback(name, modal_env, target.version)
    except BackendError as exc:
        return ActionReport(False, str(exc))
    details = {
        "name": name,
        "modal_env": modal_env,
        "from_version": live.version,
        "from_tag": live.tag,
        "to_version": target.version,
        "to_tag": target.tag,
    }
    return ActionReport(
        True,
        f"rolled back {name} from v{live.version} ({live.tag or 'no tag'}) to v{target.version} "
        f"({target.tag or 'no tag'}); Modal records this as a new version",
        details,
    )
