"""`fleetform destroy NAME`: stop a managed app, after confirmation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from renderer.deploy import common
from renderer.deploy.common import ActionReport, ConfirmationUnavailable, managed_app
from renderer.modal_api import Backend, BackendError
from renderer.plan.live import env_label

if TYPE_CHECKING:
    from rich.console import Console


def run_destroy(
    name: str,
    backend: Backend,
    *,
    modal_env: str | None = None,
    yes: bool = False,
    console: Console | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> ActionReport:
    """`fleetform destroy NAME`: stop a managed app, after confirmation unless `yes`."""
    try:
        live = managed_app(name, backend, modal_env, "destroy")
        if isinstance(live, ActionReport):
            return live
        question = (
            f"Stop app {name} (v{live.version}, {live.tag or 'no tag'}) in Modal environment {env_label(modal_env)}? "
            "Its containers terminate and its URL stops answering."
        )
        if not yes and not common.ask(question, console, confirm):
            return ActionReport(False, f"not confirmed: {name} left running")
        backend.stop(name, modal_env)
    except (BackendError, ConfirmationUnavailable) as exc:
        return ActionReport(False, str(exc))
    return ActionReport(True, f"stopped {name} in Modal environment {env_label(modal_env)}", {"name": name})
