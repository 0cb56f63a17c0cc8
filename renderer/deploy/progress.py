"""Per-deployment progress while `deploy` runs: a live table on a terminal, one line per event
elsewhere (CI logs), or nothing (`NullProgress`, for tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rich.markup import escape  # details carry text from Modal and servers: printed as it is

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.plan.live import LiveRow


class Progress(Protocol):
    def start(self, rows: Sequence[LiveRow]) -> None: ...
    def update(self, name: str, stage: str, detail: str = "") -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class NullProgress:
    def start(self, rows: Sequence[LiveRow]) -> None:
        pass

    def update(self, name: str, stage: str, detail: str = "") -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """Live per-deployment progress: a table redrawn in place on a terminal, one line per event
    elsewhere (CI logs). Updated from worker threads, hence the lock."""

    def __init__(self, console: Console, title: str = "Deploying"):
        self.console = console
        self.title = title
        self._lock = threading.Lock()
        self._state: dict[str, list[Any]] = {}  # name -> [stage, detail, started]
        self._live: Any = None

    def start(self, rows: Sequence[LiveRow]) -> None:
        now = time.monotonic()
        self._state = {r.name: ["queued", r.action, now] for r in rows}
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, show_edge=False)
        for col in ("Deployment", "Stage", "Time", "Detail"):
            table.add_column(col)
        with self._lock:
            items = list(self._state.items())
        now = time.monotonic()
        for name, (stage, detail, started) in items:
            table.add_row(name, _stage_markup(stage), f"{now - started:.0f}s", escape(detail))
        return table

    def update(self, name: str, stage: str, detail: str = "") -> None:
        with self._lock:
            entry = self._state.setdefault(name, [stage, detail, time.monotonic()])
            if entry[0] == "queued":
                entry[2] = time.monotonic()
            entry[0], entry[1] = stage, detail
        if self._live is None:
            self.console.print(escape(f"{name}: {stage}" + (f" - {detail}" if detail else "")), highlight=False)

    def note(self, message: str) -> None:
        self.console.print(escape(message), highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _stage_markup(stage: str) -> str:
    styles = {"deployed": "green", "staged": "green", "failed": "red", "skipped": "yellow", "queued": "dim"}
    style = {**styles, "already": "dim"}.get(stage.split()[0], "cyan")
    return f"[{style}]{stage}[/{style}]"
