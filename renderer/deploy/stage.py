"""Staging weights: put each deployment's pinned model (and LoRA adapters) on its Hugging Face cache
Volume with a CPU-only Modal function, before any GPU starts.

`fleetform stage` runs `run_stage` over the selected deployments, several at a time; `fleetform
deploy` runs `stage_one` in each deployment's worker, before its GPU app is deployed. Either way:

1. `Backend.staged`: the staging markers on the Volume; when every repository of the deployment is
   staged at its revision, nothing starts (`already`), unless `force`;
2. `Backend.stage`: the deployment's stage module (`codegen.stage`) as an ephemeral app; its
   progress events go to the `Progress`, one line a model; the last says `staged` or `failed`.

Nothing here raises for a Modal failure: it becomes the result's `error`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from renderer.codegen.stage import RenderedStage, render_stage
from renderer.deploy.common import Report, error_message
from renderer.deploy.progress import Progress
from renderer.modal_api import NO_CREDENTIALS, Backend

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.config import spec

STAGED, ALREADY, FAILED, SKIPPED = "staged", "already staged", "failed", "skipped"

# Rendering checks the module with `ast.parse`, which CPython 3.11 does not run safely in several
# threads at once ("AST constructor recursion depth mismatch"): workers render one at a time.
_RENDER_LOCK = threading.Lock()

# Two deployments of one model on one Volume (say a small and a large GPU variant) would download the
# same files twice at once, from two containers: the second waits for the first, then finds its markers.
_SAME_WEIGHTS: dict[tuple[Any, ...], threading.Lock] = {}
_SAME_WEIGHTS_GUARD = threading.Lock()


def _weights_lock(key: tuple[Any, ...]) -> threading.Lock:
    with _SAME_WEIGHTS_GUARD:
        return _SAME_WEIGHTS.setdefault(key, threading.Lock())


@dataclass
class StageResult:
    name: str
    modal_env: str | None
    volume: str
    repos: list[str]  # "repository@revision", the model first
    status: str = FAILED
    files: int | None = None  # of every repository, when staged now
    bytes: int | None = None
    downloaded_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "volume": self.volume,
            "repos": list(self.repos),
            "status": self.status,
            "files": self.files,
            "bytes": self.bytes,
            "downloaded_bytes": self.downloaded_bytes,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
        }


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _describe(event: dict[str, Any]) -> str | None:
    """One progress line for a stage function's event (None: nothing worth showing)."""
    repo = f"{event.get('repo')}@{str(event.get('revision', ''))[:7]}" if event.get("revision") else event.get("repo")
    kind = event.get("event")
    if kind == "start":
        if not event.get("download_files"):
            return f"{repo}: {event.get('files')} files present, verifying"
        return (
            f"{repo}: downloading {event.get('download_files')} of {event.get('files')} files "
            f"({gigabytes(event.get('download_bytes') or 0)})"
        )
    if kind == "file":
        done, total = event.get("done_bytes") or 0, event.get("download_bytes") or 0
        return f"{event.get('repo')}: {gigabytes(done)} of {gigabytes(total)} ({event.get('file')})"
    if kind == "verified":
        return f"{repo}: verified {event.get('files')} file(s), {gigabytes(event.get('bytes') or 0)}"
    return None


def stage_one(d: spec.Deployment, backend: Backend, progress: Progress, *, force: bool = False) -> StageResult:
    """Stage one deployment's weights unless its Volume says they are. Never raises."""
    with _RENDER_LOCK:
        module = render_stage(d)
    result = StageResult(d.name, d.modal_env, d.cache.huggingface_volume, [f"{r}@{v}" for r, v in module.repos])
    t0 = time.monotonic()
    with _weights_lock((d.modal_env, d.cache.huggingface_volume, module.repos)):
        return _stage_locked(d, module, backend, progress, result, t0, force)


def _stage_locked(
    d: spec.Deployment,
    module: RenderedStage,
    backend: Backend,
    progress: Progress,
    result: StageResult,
    t0: float,
    force: bool,
) -> StageResult:
    name = d.name
    try:
        if not force:
            progress.update(name, "staging", f"checking {d.cache.huggingface_volume} for {d.model.id}")
            if all(backend.staged(d.cache.huggingface_volume, d.modal_env, module.repos).values()):
                result.status = ALREADY
                result.seconds = time.monotonic() - t0
                return result
        progress.update(name, "staging", f"{d.model.id}: starting a CPU container")
        final = backend.stage(module, d.modal_env, lambda e: _on_event(name, e, progress))
    except Exception as exc:
        result.error = error_message(exc)
        result.seconds = time.monotonic() - t0
        return result
    markers = [m for m in final.get("repos", []) if isinstance(m, dict)]
    result.status = STAGED
    result.files = sum(int(m.get("files") or 0) for m in markers)
    result.bytes = sum(int(m.get("bytes") or 0) for m in markers)
    result.downloaded_bytes = final.get("downloaded_bytes")
    result.seconds = time.monotonic() - t0
    return result


def _on_event(name: str, event: dict[str, Any], progress: Progress) -> None:
    line = _describe(event)
    if line:
        progress.update(name, "staging", line)


@dataclass
class StageReport(Report):
    results: list[StageResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.error and all(r.status in (STAGED, ALREADY) for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": self.error,
            "deployments": [r.to_dict() for r in self.results],
        }

    def render(self, console: Console) -> None:
        render_stage_report(self, console)


def run_stage(
    deployments: Sequence[spec.Deployment],
    backend: Backend,
    progress: Progress,
    *,
    parallel: int = 4,
    force: bool = False,
    cancel: threading.Event | None = None,
) -> StageReport:
    """Stage every deployment, `parallel` at a time. Ctrl-C (or `cancel`) starts no new one; the
    running ones finish (what they downloaded is committed either way), then KeyboardInterrupt
    propagates."""
    report = StageReport()
    if not backend.credentials_available():
        report.error = NO_CREDENTIALS
        return report
    cancel = cancel or threading.Event()

    def one(d: spec.Deployment) -> StageResult:
        if cancel.is_set():
            r = StageResult(d.name, d.modal_env, d.cache.huggingface_volume, [], SKIPPED, error="interrupted")
            return r
        r = stage_one(d, backend, progress, force=force)
        progress.update(d.name, r.status, r.error or _done_detail(r))
        return r

    progress.start([_Row(d.name) for d in deployments])
    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fleetform-stage")
    try:
        futures = [pool.submit(one, d) for d in deployments]
        report.results = [f.result() for f in futures]
    except KeyboardInterrupt:
        cancel.set()
        progress.note("Interrupted: starting no new stage run; waiting for the running ones to finish.")
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        progress.stop()
    return report


@dataclass(frozen=True)
class _Row:
    """What `Progress.start` reads of a row: its name and the first detail."""

    name: str
    action: str = "stage"


def short(repo: str) -> str:
    """`ORG/NAME@abcdef1`: a `repository@revision` with the revision's first 7 characters."""
    name, _, revision = repo.rpartition("@")
    return f"{name}@{revision[:7]}" if name else repo


def _done_detail(r: StageResult) -> str:
    if r.status == ALREADY:
        return "on the Volume already: " + ", ".join(short(x) for x in r.repos)
    return f"{r.files} file(s), {gigabytes(r.bytes or 0)} verified"


def render_stage_report(report: StageReport, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    if report.error:
        console.print(f"[red]error:[/red] {escape(report.error)}", highlight=False, soft_wrap=True)
    if report.results:
        table = Table(title="Staged weights")
        for col in ("Deployment", "Environment", "Volume", "Model", "Result", "Size", "Time"):
            table.add_column(col)
        for r in report.results:
            style = {STAGED: "green", ALREADY: "dim", FAILED: "red"}.get(r.status, "yellow")
            table.add_row(
                r.name,
                escape(r.modal_env or "(default)"),
                escape(r.volume),
                escape(
                    short(r.repos[0]) + (f" +{len(r.repos) - 1} adapter(s)" if len(r.repos) > 1 else "")
                    if r.repos
                    else "-"
                ),
                f"[{style}]{r.status}[/{style}]",
                gigabytes(r.bytes) if r.bytes is not None else "-",
                f"{r.seconds:.0f}s" if r.seconds is not None else "-",
            )
        console.print(table)
    for r in report.results:
        if r.error:
            console.print(f"[red]{r.name}:[/red] {escape(r.error)}", highlight=False, soft_wrap=True)
