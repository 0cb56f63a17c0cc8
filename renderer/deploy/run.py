"""`fleetform deploy`: rendered fleet -> live Modal apps, safely.

What it does, in order:

1. Plan: `renderer.plan.live.live_plan` (create / update / unchanged, conflicts, orphans).
2. Deploy what changed, several at a time, each in its own worker: stage the weights onto the
   deployment's Volume on CPUs (`deploy.stage`; a failure deploys nothing), deploy, smoke test, and
   on a failed smoke test roll back to the version that was live before (or stop a first deploy).
3. Report: which succeeded, which failed and what was done about it, as text or JSON.

Everything that reaches Modal goes through a `modal_api.Backend`, and the smoke test through an
injectable `SmokeTester`, so all of this runs in tests against in-memory fakes.

Ctrl-C: no new deploy starts; the running ones go on through their smoke test and any rollback,
so no app is left half deployed, and the report says which were never started.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from renderer.deploy.common import ConfirmationUnavailable, Report, ask, error_message, stderr_console
from renderer.deploy.progress import Progress, RichProgress
from renderer.deploy.smoke import GATEWAY_HEALTH_TIMEOUT, ClientSmokeTester, SmokeOutcome, SmokeTester
from renderer.deploy.stage import FAILED as STAGE_FAILED
from renderer.deploy.stage import StageResult, stage_one
from renderer.modal_api import NO_CREDENTIALS, STRATEGIES, Backend, BackendError, LiveApp
from renderer.plan.live import CHANGES, Action, LiveRow, conflict_message, env_label, live_plan, orphan_message

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp

# Per-deployment results (`unchanged`: the plan found nothing to do).
DEPLOYED, UNCHANGED, FAILED, SKIPPED, PLANNED = "deployed", "unchanged", "failed", "skipped", "planned"

# What was done after a failed smoke test.
ROLLED_BACK, STOPPED, KEPT, RECOVERY_FAILED = "rolled_back", "stopped", "kept", "recovery_failed"


@dataclass(frozen=True)
class DeployOptions:
    """`fleetform deploy` flags."""

    only: tuple[str, ...] = ()  # --only NAME (repeatable): deploy just these
    parallel: int = 4  # --parallel N
    dry_run: bool = False  # --dry-run: plan, deploy nothing
    yes: bool = False  # --yes: no confirmation prompt
    rollback: bool = True  # --no-rollback sets False: a failed smoke test leaves the new version live
    fail_fast: bool = False  # --fail-fast: after the first failure start nothing new
    format: str = "text"  # --format text|json (json: progress goes to stderr)
    smoke_test: bool = True  # run the smoke test after each deploy
    strategy: str = "rolling"  # Modal deployment strategy: rolling | recreate
    deploy_timeout: float | None = 1800.0  # seconds for one SDK deploy (image build included)
    adopt: bool = False  # deploy over an app of the same name that fleetform does not manage
    modal_env: str | None = None  # Modal environment scanned for orphans if no deployment names one
    stage: bool = True  # --no-stage sets False: no staging of the weights before each GPU app


@dataclass
class DeploymentResult:
    name: str
    modal_env: str | None
    action: str
    status: str
    tag: str | None = None
    previous_tag: str | None = None
    previous_version: int | None = None
    url: str | None = None
    seconds: float | None = None
    error: str | None = None
    recovery: str | None = None  # rolled_back | stopped | kept | recovery_failed
    recovery_detail: str | None = None
    smoke: SmokeOutcome | None = None
    warnings: tuple[str, ...] = ()
    staging: StageResult | None = None  # the weights staged before the deploy (None: not staged, --no-stage)

    @classmethod
    def from_row(cls, row: LiveRow, status: str, **kw: Any) -> DeploymentResult:
        return cls(row.name, row.modal_env, row.action, status, row.desired_tag, row.live_tag, row.live_version, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "action": self.action,
            "status": self.status,
            "tag": self.tag,
            "previous_tag": self.previous_tag,
            "previous_version": self.previous_version,
            "url": self.url,
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "error": self.error,
            "recovery": self.recovery,
            "recovery_detail": self.recovery_detail,
            "smoke_test": None if self.smoke is None else {"ok": self.smoke.ok, "detail": self.smoke.detail},
            "warnings": list(self.warnings),
            "staging": None if self.staging is None else self.staging.to_dict(),
        }


@dataclass
class DeployReport(Report):
    results: list[DeploymentResult] = field(default_factory=list)
    orphans: list[LiveApp] = field(default_factory=list)
    error: str | None = None  # a failure of the whole run (credentials, environment, network)
    usage_error: bool = False  # the error is in the options (exit code 2)
    dry_run: bool = False
    interrupted: bool = False  # Ctrl-C
    stopped_early: bool = False  # --fail-fast
    aborted: bool = False  # the user answered no

    def names(self, status: str) -> list[str]:
        return [r.name for r in self.results if r.status == status]

    @property
    def ok(self) -> bool:
        return not (self.error or self.aborted or self.interrupted or self.names(FAILED))

    @property
    def exit_code(self) -> int:
        if self.usage_error:
            return 2
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": self.error,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "stopped_early": self.stopped_early,
            "aborted": self.aborted,
            "deployments": [r.to_dict() for r in self.results],
            "orphans": [o.to_dict() for o in self.orphans],
            "summary": {s: self.names(s) for s in (DEPLOYED, UNCHANGED, PLANNED, FAILED, SKIPPED)},
        }

    def render(self, console: Console) -> None:
        render_deploy_report(self, console)


def run_deploy(
    apps: Sequence[RenderedApp],
    backend: Backend,
    options: DeployOptions = DeployOptions(),
    console: Console | None = None,
    *,
    gateway: RenderedGateway | None = None,
    smoke_tester: SmokeTester | None = None,
    confirm: Callable[[str], bool] | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> DeployReport:
    """Deploy what changed; never raises for Modal failures (they end up in the report).

    `gateway` is the fleet's rendered gateway module (when fleet.yaml enables it): deployed into
    `options.modal_env` after the deployments it routes to, and only if none of them failed.
    `confirm` answers the "go ahead?" question (default: ask on the terminal; refuse without a
    terminal unless `options.yes`). `cancel` is set to stop starting new deploys (Ctrl-C sets it).
    """
    report = DeployReport(dry_run=options.dry_run)
    problem = _check_options(apps, options, gateway)
    if problem:
        report.error, report.usage_error = problem, True
        return report
    selected = [a for a in apps if not options.only or a.deployment.name in options.only]
    if gateway is not None and options.only and gateway.name not in options.only:
        gateway = None
    if not backend.credentials_available():
        report.error = NO_CREDENTIALS
        return report
    try:
        rows = live_plan(selected, backend, options.modal_env, gateway)
    except BackendError as exc:
        report.error = str(exc)
        return report
    if not options.only:
        report.orphans = [r.live for r in rows if r.action == Action.ORPHAN and r.live]
    rows = [r for r in rows if r.action != Action.ORPHAN]
    if options.adopt:
        rows = [replace(r, action=Action.UPDATE) if r.action == Action.CONFLICT else r for r in rows]
    results = _results_without_deploying(rows)
    todo = sorted((r for r in rows if r.action in CHANGES), key=lambda r: r.gateway)  # the gateway last
    tester = smoke_tester if smoke_tester is not None else ClientSmokeTester()
    if options.smoke_test and not options.dry_run:
        todo = _preflight(todo, tester, results)
    if options.dry_run:
        results.update({r.name: DeploymentResult.from_row(r, PLANNED) for r in todo})
        todo = []
    if todo and not options.yes and not _confirmed(todo, report, options, console, confirm):
        results.update({r.name: DeploymentResult.from_row(r, SKIPPED, error="not confirmed") for r in todo})
        todo = []
    if todo:
        if progress is None:
            progress = _default_progress(console, options.format)
        failed = [n for n, r in results.items() if r.status == FAILED]
        executed, interrupted, stopped_early = _execute(
            todo, backend, options, tester, cancel or threading.Event(), progress, failed
        )
        results.update(executed)
        report.interrupted, report.stopped_early = interrupted, stopped_early
    report.results = [results[r.name] for r in rows if r.name in results]
    return report


def _results_without_deploying(rows: Sequence[LiveRow]) -> dict[str, DeploymentResult]:
    """Results known from the plan alone: unchanged apps, and conflicts (never overwritten)."""
    results = {}
    for r in rows:
        if r.action == Action.UNCHANGED:
            results[r.name] = DeploymentResult.from_row(r, UNCHANGED)
        elif r.action == Action.CONFLICT:
            results[r.name] = DeploymentResult.from_row(r, FAILED, error=conflict_message(r))
    return results


def _confirmed(
    todo: Sequence[LiveRow],
    report: DeployReport,
    options: DeployOptions,
    console: Console | None,
    confirm: Callable[[str], bool] | None,
) -> bool:
    """Ask before deploying; records a refusal (or the impossibility to ask) in the report."""
    # With --format json the question goes to stderr: stdout is for the document.
    where = stderr_console() if options.format == "json" else console
    try:
        go = ask(_confirm_question(todo), where, confirm)
    except ConfirmationUnavailable as exc:
        report.error = str(exc)
        return False
    report.aborted = not go
    return go


def _check_options(apps: Sequence[RenderedApp], options: DeployOptions, gateway: RenderedGateway | None) -> str | None:
    known = [a.deployment.name for a in apps] + ([gateway.name] if gateway is not None else [])
    unknown = [n for n in options.only if n not in known]
    if unknown:
        known_text = ", ".join(known) or "none"
        return f"--only names no deployment of this fleet: {', '.join(unknown)} (deployments: {known_text})"
    if options.parallel < 1:
        return f"--parallel must be at least 1, not {options.parallel}"
    if options.strategy not in STRATEGIES:
        return f"unknown deployment strategy {options.strategy!r}; use one of {', '.join(STRATEGIES)}"
    return None


def _preflight(todo: list[LiveRow], tester: SmokeTester, results: dict[str, DeploymentResult]) -> list[LiveRow]:
    """Fail, before deploying them, the deployments whose smoke test could not possibly pass."""
    check = getattr(tester, "preflight", None)
    if check is None:
        return todo
    keep = []
    for r in todo:
        why = check(r.app)
        if why:
            results[r.name] = DeploymentResult.from_row(r, FAILED, error=f"not deployed: {why}")
        else:
            keep.append(r)
    return keep


def _confirm_question(todo: Sequence[LiveRow]) -> str:
    parts = ", ".join(f"{r.action} {r.name}" for r in todo)
    envs = sorted({env_label(r.modal_env) for r in todo})
    return f"Deploy to Modal environment {', '.join(envs)}: {parts}?"


def _default_progress(console: Console | None, fmt: str) -> Progress:
    from rich.console import Console as RichConsole

    if fmt == "json":  # stdout is for the JSON document
        return RichProgress(stderr_console())
    return RichProgress(console or RichConsole(highlight=False))


def _execute(
    todo: list[LiveRow],
    backend: Backend,
    options: DeployOptions,
    tester: SmokeTester,
    cancel: threading.Event,
    progress: Progress,
    failed_before: Sequence[str] = (),
) -> tuple[dict[str, DeploymentResult], bool, bool]:
    """Run the deploys, at most `options.parallel` at a time. Returns (results, interrupted, stopped early).

    The gateway's row (last in `todo`) starts once every other deploy has finished, and only if no
    deployment failed (`failed_before`: those that failed before any deploy started): a gateway
    routing to a version that is not live would send requests nowhere.

    Deploys are submitted one by one as slots free up (not all at once), so that a cancel really
    stops new ones from starting. Running ones are always waited for: abandoning a deploy halfway
    would leave an app between versions with nobody to roll it back.
    """
    pending = deque(todo)
    running: dict[Future[DeploymentResult], LiveRow] = {}
    results: dict[str, DeploymentResult] = {}
    interrupted = stopped_early = False

    def on_interrupt(*_: Any) -> None:
        nonlocal interrupted
        interrupted = True
        cancel.set()
        progress.note(
            f"Interrupted: starting no new deploys; waiting for {len(running)} running deploy(s) "
            "to finish their smoke test (and rollback if needed)."
        )

    restore = _install_sigint(on_interrupt)
    progress.start(todo)
    try:
        with ThreadPoolExecutor(max_workers=options.parallel, thread_name_prefix="fleetform-deploy") as pool:
            while pending or running:
                try:
                    while pending and len(running) < options.parallel and not cancel.is_set():
                        if pending[0].gateway:
                            if running:
                                break  # the gateway waits for the deployments it routes to
                            failed = [*failed_before, *(n for n, r in results.items() if r.status == FAILED)]
                            if failed:
                                row = pending.popleft()
                                reason = f"not deployed: it routes to {', '.join(failed)}, which failed"
                                results[row.name] = DeploymentResult.from_row(row, SKIPPED, error=reason)
                                progress.update(row.name, "skipped", reason)
                                continue
                        row = pending.popleft()
                        running[pool.submit(_deploy_one, row, backend, options, tester, progress)] = row
                    if not running:
                        break
                    done, _ = wait(list(running), timeout=0.1, return_when=FIRST_COMPLETED)
                    for fut in done:
                        row = running[fut]
                        results[row.name] = _result_of(fut, row)
                        del running[fut]
                        if results[row.name].status == FAILED and options.fail_fast and not cancel.is_set():
                            stopped_early = True
                            cancel.set()
                            progress.note(f"--fail-fast: {row.name} failed; starting no new deploys.")
                except KeyboardInterrupt:  # when no handler could be installed (not the main thread)
                    on_interrupt()
        if pending and not stopped_early:
            interrupted = True  # cancelled from outside: the caller's Ctrl-C
        reason = "not started: interrupted (Ctrl-C)" if interrupted else "not started (--fail-fast)"
        for row in pending:
            results[row.name] = DeploymentResult.from_row(row, SKIPPED, error=reason)
            progress.update(row.name, "skipped", reason)
    finally:
        restore()
        progress.stop()
    return results, interrupted, stopped_early


def _install_sigint(handler: Callable[..., None]) -> Callable[[], None]:
    """Route Ctrl-C to `handler` while deploys run; returns the function that puts things back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)


def _result_of(fut: Future[DeploymentResult], row: LiveRow) -> DeploymentResult:
    try:
        return fut.result()
    except Exception as exc:  # _deploy_one catches everything; this guards against a bug in it
        return DeploymentResult.from_row(row, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")


def _deploy_one(
    row: LiveRow, backend: Backend, options: DeployOptions, tester: SmokeTester, progress: Progress
) -> DeploymentResult:
    """Deploy one app, smoke test it, recover if the test fails. Never raises."""
    assert row.app is not None and row.desired_tag is not None
    t0 = time.monotonic()
    result = DeploymentResult.from_row(row, FAILED)
    if options.stage and not row.gateway:  # the weights onto the Volume, on CPUs, before any GPU starts
        result.staging = stage_one(row.app.deployment, backend, progress)
        if result.staging.status == STAGE_FAILED:
            result.error = f"staging the weights failed, nothing deployed: {result.staging.error}"
            return _finish(result, t0, progress)
    progress.update(row.name, "deploying", f"{row.action}: {row.live_tag or 'nothing'} -> {row.desired_tag}")
    try:
        outcome = backend.deploy(
            row.app, row.modal_env, row.desired_tag, strategy=options.strategy, timeout=options.deploy_timeout
        )
    except Exception as exc:
        result.error = f"deploy failed: {error_message(exc)}"
        return _finish(result, t0, progress)
    result.url, result.warnings = outcome.url, tuple(outcome.warnings)
    if not options.smoke_test:
        result.status = DEPLOYED
        return _finish(result, t0, progress)
    limit = GATEWAY_HEALTH_TIMEOUT if row.gateway else row.app.deployment.scaling.startup_timeout
    progress.update(row.name, "smoke test", f"waiting for /health (up to {limit:g}s)")
    result.smoke = _smoke(row, backend, tester, result.url)
    if result.smoke.ok:
        result.status = DEPLOYED
        return _finish(result, t0, progress)
    result.error = f"smoke test failed: {result.smoke.detail}"
    _recover(row, backend, options, result, progress)
    return _finish(result, t0, progress)


def _smoke(row: LiveRow, backend: Backend, tester: SmokeTester, url: str | None) -> SmokeOutcome:
    if not url:
        try:
            url = backend.web_url(row.name, row.modal_env)
        except Exception as exc:
            return SmokeOutcome(False, f"cannot find the server URL: {error_message(exc)}")
    if not url:
        return SmokeOutcome(False, "Modal reports no URL for the server")
    assert row.app is not None
    try:
        return tester(row.app, url)
    except Exception as exc:
        return SmokeOutcome(False, f"smoke test crashed: {type(exc).__name__}: {exc}")


def _recover(
    row: LiveRow, backend: Backend, options: DeployOptions, result: DeploymentResult, progress: Progress
) -> None:
    """After a failed smoke test: roll back to the version live before, or stop a first deploy."""
    if not options.rollback:
        result.recovery, result.recovery_detail = KEPT, "the new version was left live (--no-rollback)"
        return
    try:
        if row.action == Action.CREATE or row.live is None:
            progress.update(row.name, "stopping", "first deploy failed its smoke test")
            backend.stop(row.name, row.modal_env)
            result.recovery, result.recovery_detail = STOPPED, "first deploy stopped"
        else:
            progress.update(row.name, "rolling back", f"to v{row.live_version} ({row.live_tag})")
            backend.rollback(row.name, row.modal_env, row.live_version)
            result.recovery = ROLLED_BACK
            result.recovery_detail = f"rolled back to v{row.live_version} ({row.live_tag or 'no tag'})"
    except Exception as exc:
        what = "stop" if row.action == Action.CREATE else "rollback"
        result.recovery = RECOVERY_FAILED
        result.recovery_detail = f"{what} FAILED: {error_message(exc)}; the failing version may still be live"


def _finish(result: DeploymentResult, t0: float, progress: Progress) -> DeploymentResult:
    result.seconds = time.monotonic() - t0
    detail = result.error or (result.tag or "")
    if result.recovery_detail:
        detail += f"; {result.recovery_detail}"
    progress.update(result.name, result.status, detail)
    return result


# --- rendering the deploy report ------------------------------------------------------------------

_STATUS_STYLE = {DEPLOYED: "green", UNCHANGED: "dim", PLANNED: "cyan", FAILED: "red", SKIPPED: "yellow"}


def render_deploy_report(report: DeployReport, console: Console) -> None:
    """The summary: a table, the full reason for each failure, orphans, one totals line."""
    from rich.markup import escape  # text from Modal and from servers is printed as it is, never as markup
    from rich.table import Table

    if report.error:
        console.print(f"[red]error:[/red] {escape(report.error)}", highlight=False, soft_wrap=True)
        if not report.results:
            return
    if report.results:
        table = Table(title="Dry run: nothing deployed" if report.dry_run else "Deploy summary")
        for col in ("Deployment", "Environment", "Action", "Result", "Version", "Time", "URL"):
            table.add_column(col)
        for r in report.results:
            style = _STATUS_STYLE.get(r.status, "")
            result = f"[{style}]{r.status}[/{style}]"
            if r.recovery:
                result += f" ({r.recovery.replace('_', ' ')})"
            seconds = f"{r.seconds:.0f}s" if r.seconds is not None else "-"
            table.add_row(
                r.name,
                escape(r.modal_env or "(default)"),
                r.action,
                result,
                escape(_version_cell(r)),
                seconds,
                escape(r.url or "-"),
            )
        console.print(table)
    for r in report.results:
        if r.status == FAILED:
            line = f"[red]{r.name}:[/red] {escape(r.error or '')}"
            if r.recovery_detail:
                line += f"; {escape(r.recovery_detail)}"
            console.print(line, highlight=False, soft_wrap=True)
        for w in r.warnings:
            console.print(f"[yellow]{r.name}: warning:[/yellow] {escape(w)}", highlight=False)
    for o in report.orphans:
        console.print(f"[magenta]orphan:[/magenta] {escape(orphan_message(o))}", highlight=False)
    console.print(escape(_totals(report)), highlight=False)


def _version_cell(r: DeploymentResult) -> str:
    """The tag that runs now (for a dry run, the change): after a failed smoke test that depends
    on what was done about it; the new version stays live with --no-rollback (or a failed recovery)."""
    if r.status == PLANNED:
        return f"{r.previous_tag} -> {r.tag}" if r.previous_tag else (r.tag or "-")
    if r.status == DEPLOYED or r.recovery in (KEPT, RECOVERY_FAILED):
        return r.tag or "-"
    if r.recovery == STOPPED:
        return "-"
    return r.previous_tag or "-"


def _totals(report: DeployReport) -> str:
    parts = []
    for status in (DEPLOYED, UNCHANGED, PLANNED, FAILED, SKIPPED):
        names = report.names(status)
        if names:
            parts.append(f"{len(names)} {status} ({', '.join(names)})")
    text = "; ".join(parts) or "nothing to deploy"
    if report.interrupted:
        text = "Interrupted. " + text
    elif report.stopped_early:
        text = "Stopped early (--fail-fast). " + text
    elif report.aborted:
        text = "Not confirmed, nothing deployed. " + text
    return text + "."
