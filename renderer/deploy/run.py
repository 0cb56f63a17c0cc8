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

import os
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from renderer.config.schema import format_duration
from renderer.deploy import traffic as gateway_traffic
from renderer.deploy.app import (
    DEPLOYED,
    FAILED,
    KEPT,
    PLANNED,
    RECOVERY_FAILED,
    ROLLED_BACK,
    SKIPPED,
    STOPPED,
    UNCHANGED,
    DeploymentResult,
    DeployOptions,
    deploy_one,
    install_sigint,
)
from renderer.deploy.canary import CanaryRequest, TrafficSource, canary_traffic_source, run_canaries
from renderer.deploy.common import ConfirmationUnavailable, Report, ask, stderr_console
from renderer.deploy.progress import Progress, RichProgress
from renderer.deploy.smoke import ClientSmokeTester, SmokeTester
from renderer.deploy.verdict import CanaryOutcome, canary_line
from renderer.modal_api import NO_CREDENTIALS, STRATEGIES, Backend, BackendError, LiveApp, deployment_tag
from renderer.plan.live import CHANGES, Action, LiveRow, conflict_message, env_label, live_plan, orphan_message

__all__ = [  # the per-app steps live in renderer.deploy.app; run is where callers find them
    "DEPLOYED",
    "FAILED",
    "KEPT",
    "PLANNED",
    "RECOVERY_FAILED",
    "ROLLED_BACK",
    "SKIPPED",
    "STOPPED",
    "UNCHANGED",
    "DeployOptions",
    "DeploymentResult",
    "DeployReport",
    "run_deploy",
]

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp


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
    notes: list[str] = field(default_factory=list)  # what a canary rollout could not put back, leftovers ended

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
            "notes": list(self.notes),
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
    traffic_source: TrafficSource | None = None,
    environ: Mapping[str, str] | None = None,
) -> DeployReport:
    """Deploy what changed; never raises for Modal failures (they end up in the report).

    `gateway` is the fleet's rendered gateway module (when fleet.yaml enables it): deployed into
    `options.modal_env` after the deployments it routes to, and only if none of them failed.
    Deployments rolled out as canaries (`--canary`, or `rollout.strategy: canary`) go through
    `renderer.deploy.canary` after the direct deploys, judged from the gateway's /metrics
    (`traffic_source`; default: scraped through its URL with the key from `environ`).
    `confirm` answers the "go ahead?" question (default: ask on the terminal; refuse without a
    terminal unless `options.yes`). `cancel` is set to stop starting new deploys (Ctrl-C sets it).
    """
    report = DeployReport(dry_run=options.dry_run)
    problem = _check_options(apps, options, gateway)
    if problem:
        report.error, report.usage_error = problem, True
        return report
    selected = [a for a in apps if not options.only or a.deployment.name in options.only]
    direct_gateway = gateway is not None and (not options.only or gateway.name in options.only)
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
    gateway_row = next((r for r in rows if r.gateway), None)
    leftovers = {r.canary_of: r for r in rows if r.action == Action.CANARY and r.canary_of}
    rows = [r for r in rows if r.action not in (Action.ORPHAN, Action.CANARY) and (direct_gateway or not r.gateway)]
    if options.adopt:
        rows = [replace(r, action=Action.UPDATE) if r.action == Action.CONFLICT else r for r in rows]
    results = _results_without_deploying(rows)
    todo = sorted((r for r in rows if r.action in CHANGES), key=lambda r: r.gateway)  # the gateway last
    canaries = _canary_requests(todo, options, leftovers, report)
    if canaries:
        report.error = _canary_problem(canaries, gateway_row, leftovers)
        source = traffic_source
        if report.error is None and source is None:
            key = gateway_traffic.metrics_key(os.environ if environ is None else environ)
            if key is None:
                report.error = (
                    "a canary is judged from the gateway's /metrics: set "
                    f"{' or '.join(gateway_traffic.METRICS_KEY_VARS)} to its key"
                )
            else:
                assert gateway_row is not None
                source = canary_traffic_source(backend, gateway_row.name, gateway_row.modal_env, key)
        if report.error:
            return report
        names = {c.name for c in canaries}
        todo = [r for r in todo if r.name not in names and not r.gateway]  # the rollout deploys the gateway
    tester = smoke_tester if smoke_tester is not None else ClientSmokeTester()
    if canaries and options.smoke_test and not options.dry_run:
        assert gateway_row is not None
        why = getattr(tester, "preflight", lambda app: None)(gateway_row.app)
        if why:  # a rollout smoke tests the gateway twice: know now that it cannot
            report.error = (
                f"a canary rollout deploys the gateway {gateway_row.name}, whose smoke test cannot pass: {why}"
            )
            return report
    if options.smoke_test and not options.dry_run:
        todo = _preflight(todo, tester, results)
        kept = {r.name for r in _preflight([c.row for c in canaries], tester, results)}
        canaries = [c for c in canaries if c.name in kept]
    if options.dry_run:
        results.update({r.name: DeploymentResult.from_row(r, PLANNED) for r in todo})
        for c in canaries:
            outcome = CanaryOutcome(c.app, c.rollout.weight, c.rollout.duration, resumed=c.leftover is not None)
            results[c.name] = DeploymentResult.from_row(c.row, PLANNED, canary=outcome)
        todo, canaries = [], []
    asked = [*todo, *(c.row for c in canaries)]
    if asked and not options.yes and not _confirmed(asked, report, options, console, confirm, canaries):
        results.update({r.name: DeploymentResult.from_row(r, SKIPPED, error="not confirmed") for r in asked})
        todo, canaries = [], []
    cancel = cancel or threading.Event()
    if todo or canaries:
        if progress is None:
            progress = _default_progress(console, options.format)
        failed = [n for n, r in results.items() if r.status == FAILED]
        if todo:
            executed, interrupted, stopped_early = _execute(todo, backend, options, tester, cancel, progress, failed)
            results.update(executed)
            report.interrupted, report.stopped_early = interrupted, stopped_early
        if canaries:
            assert gateway_row is not None and source is not None
            if cancel.is_set():
                reason = "not started: interrupted (Ctrl-C)" if report.interrupted else "not started (--fail-fast)"
                results.update({c.name: DeploymentResult.from_row(c.row, SKIPPED, error=reason) for c in canaries})
            else:
                done, notes = run_canaries(canaries, gateway_row, backend, options, tester, source, progress, cancel)
                results.update(done)
                report.notes += notes
                report.interrupted = report.interrupted or cancel.is_set()
    handled = {c.name for c in canaries}
    if not options.dry_run and not report.aborted and not report.error:
        ended = [r for n, r in leftovers.items() if n not in handled]
        report.notes += _end_leftovers(ended, gateway, options.modal_env, backend)
    report.results = [results[r.name] for r in rows if r.name in results]
    return report


def _canary_requests(
    todo: Sequence[LiveRow], options: DeployOptions, leftovers: Mapping[str, LiveRow], report: DeployReport
) -> list[CanaryRequest]:
    """The deployments of `todo` to roll out as canaries: with --canary every updated one, else those whose
    `rollout.strategy` is canary; --no-canary none. A first deploy has no live version to compare with:
    it is deployed directly, and the report says so."""
    if options.no_canary:
        return []
    out = []
    for r in todo:
        if r.gateway or r.app is None:
            continue
        rollout = r.app.deployment.rollout  # type: ignore[union-attr]
        if options.canary_weight is None and not rollout.canary:
            continue
        if r.action == Action.CREATE:
            report.notes.append(f"{r.name}: first deploy, so no canary (there is no live version to compare it with)")
            continue
        rollout = replace(
            rollout,
            strategy="canary",
            weight=options.canary_weight if options.canary_weight is not None else rollout.weight,
            duration=options.canary_duration if options.canary_duration is not None else rollout.duration,
        )
        left = leftovers.get(r.name)
        out.append(CanaryRequest(r, rollout, left.live if left else None))
    return out


def _canary_problem(
    canaries: Sequence[CanaryRequest], gateway_row: LiveRow | None, leftovers: Mapping[str, LiveRow]
) -> str | None:
    """Why these canaries cannot be rolled out now (nothing is deployed then), or None."""
    names = ", ".join(c.name for c in canaries)
    if gateway_row is None:
        return (
            f"a canary of {names} needs the fleet's gateway, which splits the traffic (Modal's own URL has "
            "none): enable `gateway` in fleet.yaml, or deploy with --no-canary"
        )
    if gateway_row.action == Action.CREATE:
        return f"a canary of {names} needs the gateway live: deploy it first (fleetform deploy --no-canary)"
    if gateway_row.action == Action.UPDATE and not leftovers:
        return (
            f"the gateway {gateway_row.name} changes too (a deployment added or removed, served names, auth): "
            "a canary is judged against the routing that is live; deploy that change first "
            "(fleetform deploy --no-canary --only OTHER --only " + gateway_row.name + "), then the canary"
        )
    if gateway_row.action == Action.CONFLICT:
        return f"a canary needs the gateway, and {conflict_message(gateway_row)}"
    return None


def _end_leftovers(
    leftovers: Sequence[LiveRow], gateway: RenderedGateway | None, gateway_env: str | None, backend: Backend
) -> list[str]:
    """Stop the canary apps that unfinished rollouts left, once the live gateway sends them nothing (it
    runs the fleet's module, without splits). Returns what was done, or why not."""
    notes = []
    for row in leftovers:
        try:
            if gateway is not None:
                live = backend.get_app(gateway.name, gateway_env)
                if live is not None and live.tag != deployment_tag(gateway):
                    notes.append(
                        f"{row.name} left running: the live gateway may still send it requests; deploy the gateway "
                        f"too, or `fleetform rollback {row.canary_of}`"
                    )
                    continue
            backend.stop(row.name, row.modal_env)
            notes.append(f"{row.name}: stopped the canary an unfinished rollout of {row.canary_of} left running")
        except BackendError as exc:
            notes.append(f"{row.name}: could not stop the canary an unfinished rollout left: {exc}")
    return notes


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
    canaries: Sequence[CanaryRequest] = (),
) -> bool:
    """Ask before deploying; records a refusal (or the impossibility to ask) in the report."""
    # With --format json the question goes to stderr: stdout is for the document.
    where = stderr_console() if options.format == "json" else console
    try:
        go = ask(_confirm_question(todo, canaries), where, confirm)
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


def _confirm_question(todo: Sequence[LiveRow], canaries: Sequence[CanaryRequest] = ()) -> str:
    how = {c.name: f" as a canary ({c.rollout.weight}% for {format_duration(c.rollout.duration)})" for c in canaries}
    parts = ", ".join(f"{r.action} {r.name}{how.get(r.name, '')}" for r in todo)
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

    restore = install_sigint(on_interrupt)
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
                        running[pool.submit(deploy_one, row, backend, options, tester, progress)] = row
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


def _result_of(fut: Future[DeploymentResult], row: LiveRow) -> DeploymentResult:
    try:
        return fut.result()
    except Exception as exc:  # deploy_one catches everything; this guards against a bug in it
        return DeploymentResult.from_row(row, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")


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
    for r in report.results:
        if r.canary is not None:
            console.print(f"[cyan]{r.name}: canary[/cyan] {escape(canary_line(r.canary))}", highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
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
