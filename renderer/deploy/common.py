"""What the deploy verbs share: the report base class, the one-app report of `rollback` and
`destroy`, the yes/no question, and one-line error text."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.markup import escape  # messages carry text from Modal: printed as it is, never as markup

from renderer.modal_api import NO_CREDENTIALS, Backend, BackendError, LiveApp
from renderer.plan.live import env_label

if TYPE_CHECKING:
    from rich.console import Console


class ConfirmationUnavailable(Exception):
    """A yes/no question could not be asked (no terminal) and --yes was not given."""


class Report:
    """What every report is to the CLI's reporters: a document (`to_dict`, for --format json), a
    rendering (`render`, for text) and the exit code the command ends with."""

    exit_code: int

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def render(self, console: Console) -> None:
        raise NotImplementedError


@dataclass
class ActionReport(Report):
    """The outcome of `rollback` or `destroy`: one line to print."""

    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, **self.details}

    def render(self, console: Console) -> None:
        if self.ok:
            console.print(escape(self.message), highlight=False)
        else:
            console.print(f"[red]error:[/red] {escape(self.message)}", highlight=False, soft_wrap=True)


def managed_app(name: str, backend: Backend, env: str | None, verb: str) -> LiveApp | ActionReport:
    """The live app `name`, or the report refusing to touch it."""
    if not backend.credentials_available():
        return ActionReport(False, NO_CREDENTIALS)
    live = backend.get_app(name, env)
    if live is None:
        return ActionReport(False, f"no deployed app named {name} in Modal environment {env_label(env)}")
    if not live.managed:
        return ActionReport(
            False,
            f"refusing to {verb} {name}: fleetform does not manage it (it lacks the managed-by: fleetform tag)",
        )
    return live


def ask(question: str, console: Console | None, confirm: Callable[[str], bool] | None) -> bool:
    """Ask a yes/no question; without a terminal, refuse rather than hang or assume yes."""
    if confirm is not None:
        return confirm(question)
    if not sys.stdin.isatty():
        raise ConfirmationUnavailable(f"{question} needs confirmation, and stdin is not a terminal: pass --yes")
    from rich.console import Console as RichConsole
    from rich.prompt import Confirm

    return Confirm.ask(question, console=console or RichConsole(), default=False)


def stderr_console() -> Console:
    from rich.console import Console as RichConsole

    return RichConsole(stderr=True, highlight=False)


def error_message(exc: BaseException) -> str:
    """One line for a failure: a BackendError's own text, else the exception's type and text."""
    if isinstance(exc, BackendError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
