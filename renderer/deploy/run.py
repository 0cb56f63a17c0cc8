"""Stage 6: rendered fleet -> live Modal apps, safely.

What `fleetform deploy` does, in order:

1. Plan: ask the backend what is live and compare each deployment's tag (`ff-<short hash>` of its
   rendered module) with the live version's tag: create / update / unchanged, plus conflicts (an
   app of that name that fleetform does not manage) and orphans (managed apps no YAML describes).
2. Deploy what changed, several at a time, each in its own worker: deploy, smoke test, and on a
   failed smoke test roll back to the version that was live before (or stop a first deploy).
3. Report: which succeeded, which failed and what was done about it, as text or JSON.

Everything that reaches Modal goes through a `modal_api.Backend`, and the smoke test through an
injectable `SmokeTester`, so all of this runs in tests against in-memory fakes.

Ctrl-C: no new deploy starts; the running ones go on through their smoke test and any rollback,
so no app is left half deployed, and the report says which were never started.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from renderer.modal_api import (
    NO_CREDENTIALS,
    STRATEGIES,
    Backend,
    BackendError,
    LiveApp,
    Version,
    deployment_tag,
)

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.render import RenderedApp

# Plan actions.
CREATE, UPDATE, UNCHANGED, CONFLICT, ORPHAN = "create", "update", "unchanged", "conflict", "orphan"
CHANGES = (CREATE, UPDATE)

# Per-deployment results.
DEPLOYED, FAILED, SKIPPED, PLANNED = "deployed", "failed", "skipped", "planned"

# What was done after a failed smoke test.
ROLLED_BACK, STOPPED, KEPT, RECOVERY_FAILED = "rolled_back", "stopped", "kept", "recovery_failed"

NO_CREDENTIALS_PLAN_NOTE = "no Modal credentials, showing the offline plan (run `modal token new` for the live view)"
SMOKE_PROMPT = "Reply with the single word: ready."
SMOKE_MAX_TOKENS = 16


class ConfirmationUnavailable(Exception):
    """A yes/no question could not be asked (no terminal) and --yes was not given."""


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """One deployment (or orphan) and what deploying the fleet would do to it."""

    name: str
    environment: str | None  # Modal environment
    action: str  # create | update | unchanged | conflict | orphan
    desired_tag: str | None = None
    live: LiveApp | None = None
    app: RenderedApp | None = field(default=None, repr=False, compare=False)

    @property
    def live_tag(self) -> str | None:
        return self.live.tag if self.live else None

    @property
    def live_version(self) -> int | None:
        return self.live.version if self.live else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.environment,
            "action": self.action,
            "desired_tag": self.desired_tag,
            "live_tag": self.live_tag,
            "live_version": self.live_version,
        }


def environments_of(apps: Iterable[RenderedApp], fallback: str | None = None) -> list[str | None]:
    """The Modal environments the fleet deploys into (`fallback` when it has no deployment)."""
    envs: list[str | None] = []
    for app in apps:
        if app.deployment.environment not in envs:
            envs.append(app.deployment.environment)
    return envs or [fallback]


def environment_for(name: str, apps: Iterable[RenderedApp], fallback: str | None = None) -> str | None:
    """The Modal environment of deployment `name` (for rollback/destroy), else `fallback`."""
    for app in apps:
        if app.deployment.name == name:
            return app.deployment.environment
    return fallback


def live_plan(apps: Sequence[RenderedApp], backend: Backend, env: str | None = None) -> list[PlanRow]:
    """Compare the rendered fleet with what is live. Raises BackendError.

    `env` is the Modal environment searched for orphans when no deployment names one.
    """
    envs = environments_of(apps, env)
    live = {e: {a.name: a for a in backend.list_apps(e)} for e in envs}
    rows = []
    for app in apps:
        d = app.deployment
        tag = deployment_tag(app)
        current = live[d.environment].get(d.name)
        if current is None:
            action = CREATE
        elif not current.managed:
            action = CONFLICT
        elif current.tag == tag:
            action = UNCHANGED
        else:
            action = UPDATE
        rows.append(PlanRow(d.name, d.environment, action, tag, current, app))
    described = {(a.deployment.environment, a.deployment.name) for a in apps}
    for e in envs:
        for current in sorted(live[e].values(), key=lambda a: a.name):
            if current.managed and (e, current.name) not in described:
                rows.append(PlanRow(current.name, e, ORPHAN, None, current))
    return rows


def plan_exit_code(rows: Sequence[PlanRow]) -> int:
    """`plan --detailed-exitcode`: 2 if deploying would change something, else 0.

    Orphans do not count: `deploy` never removes anything (that is `destroy`).
    """
    return 2 if any(r.action in (*CHANGES, CONFLICT) for r in rows) else 0


def plan_to_dict(rows: Sequence[PlanRow]) -> dict[str, Any]:
    return {"live": True, "changes": plan_exit_code(rows) == 2, "rows": [r.to_dict() for r in rows]}


_ACTION_STYLE = {CREATE: "green", UPDATE: "yellow", UNCHANGED: "dim", CONFLICT: "red", ORPHAN: "magenta"}


def render_plan(rows: Sequence[PlanRow], console: Console) -> None:
    """The live plan as a table, then one line of totals."""
    from rich.table import Table

    table = Table(title="Live plan")
    for col in ("Deployment", "Environment", "Action", "Live", "Desired"):
        table.add_column(col)
    for r in rows:
        live = f"v{r.live_version} {r.live_tag or '(no tag)'}" if r.live else "-"
        style = _ACTION_STYLE.get(r.action, "")
        table.add_row(r.name, r.environment or "(default)", f"[{style}]{r.action}[/{style}]", live, r.desired_tag or "-")
    console.print(table)
    counts = {a: sum(1 for r in rows if r.action == a) for a in (CREATE, UPDATE, UNCHANGED, CONFLICT, ORPHAN)}
    console.print(", ".join(f"{n} to {a}" if a in CHANGES else f"{n} {a}" for a, n in counts.items() if n) or "nothing deployed, nothing to do")
    for r in rows:
        if r.action == CONFLICT:
            console.print(f"[red]conflict:[/red] {_conflict_message(r)}")
        elif r.action == ORPHAN:
            console.print(f"[magenta]orphan:[/magenta] {_orphan_message(r.live)}")


def _write_json(console: Console, doc: dict[str, Any]) -> None:
    """Exactly one JSON document, unstyled and unwrapped, on the console's stream."""
    console.file.write(json.dumps(doc, indent=2) + "\n")
    console.file.flush()


def _conflict_message(row: PlanRow) -> str:
    return (
        f"an app named {row.name} already runs in Modal environment {_env(row.environment)} "
        "and fleetform does not manage it; rename the deployment, or remove that app "
        "(`modal app stop`), or deploy with adopt to take it over"
    )


def _orphan_message(live: LiveApp | None) -> str:
    assert live is not None
    return (
        f"{live.name} (v{live.version}, {live.tag or 'no tag'}) in {_env(live.environment)} is managed by "
        f"fleetform but no YAML describes it; `fleetform destroy {live.name}` removes it"
    )


def _env(env: str | None) -> str:
    return f"'{env}'" if env else "(default)"


# --- smoke testing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeOutcome:
    ok: bool
    detail: str = ""
    report: dict[str, Any] | None = None


class SmokeTester(Protocol):
    """Checks a freshly deployed app at `url`; must not raise."""

    def __call__(self, app: RenderedApp, url: str) -> SmokeOutcome: ...


class ClientSmokeTester:
    """The real smoke test, through `renderer.endpoint.client`: wait for /health (up to the deployment's
    startup timeout, to ride out the cold start), check /v1/models, one short chat completion.
    """

    def __init__(self, environ: dict[str, str] | None = None, request_timeout: float = 120.0):
        self.environ = environ
        self.request_timeout = request_timeout

    def preflight(self, app: RenderedApp) -> str | None:
        """Why the smoke test could not even authenticate, checked before anything is deployed:
        deploying and then rolling back for want of a local token would be absurd."""
        from renderer.endpoint import client

        try:
            client.auth_headers(app.deployment.auth.mode, self.environ)
        except client.ClientError as exc:
            return f"the smoke test cannot authenticate: {exc.message}"
        return None

    def __call__(self, app: RenderedApp, url: str) -> SmokeOutcome:
        from renderer.endpoint import client

        d = app.deployment
        try:
            endpoint = client.Endpoint.from_env(url, d.auth.mode, self.environ)
            report = client.run_smoke(
                endpoint,
                list(_expected_models(d)),
                prompts=[SMOKE_PROMPT],
                health_timeout=float(d.scaling.startup_timeout),
                request_timeout=self.request_timeout,
                max_tokens=SMOKE_MAX_TOKENS,
            )
        except client.ClientError as exc:
            return SmokeOutcome(False, exc.message)
        except Exception as exc:  # a bug must fail this smoke test, not the whole run
            return SmokeOutcome(False, f"smoke test crashed: {type(exc).__name__}: {exc}")
        if report.ok:
            return SmokeOutcome(True, "health, models and chat ok", report.to_dict())
        failed = next(s for s in report.steps if not s.ok)
        return SmokeOutcome(False, f"{failed.name}: {failed.error}", report.to_dict())


def _expected_models(d: Any) -> tuple[str, ...]:
    """Every name /v1/models must list: the served names, then any LoRA adapters' (the chat
    request uses the first served name)."""
    return tuple(getattr(d.model, "names", d.model.served_model_names))


# --- progress -------------------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, rows: Sequence[PlanRow]) -> None: ...
    def update(self, name: str, stage: str, detail: str = "") -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class NullProgress:
    def start(self, rows: Sequence[PlanRow]) -> None:
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

    def __init__(self, console: Console):
        self.console = console
        self._lock = threading.Lock()
        self._state: dict[str, list[Any]] = {}  # name -> [stage, detail, started]
        self._live: Any = None

    def start(self, rows: Sequence[PlanRow]) -> None:
        now = time.monotonic()
        self._state = {r.name: ["queued", r.action, now] for r in rows}
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="Deploying", show_edge=False)
        for col in ("Deployment", "Stage", "Time", "Detail"):
            table.add_column(col)
        with self._lock:
            items = list(self._state.items())
        now = time.monotonic()
        for name, (stage, detail, started) in items:
            table.add_row(name, _stage_markup(stage), f"{now - started:.0f}s", detail)
        return table

    def update(self, name: str, stage: str, detail: str = "") -> None:
        with self._lock:
            entry = self._state.setdefault(name, [stage, detail, time.monotonic()])
            if entry[0] == "queued":
                entry[2] = time.monotonic()
            entry[0], entry[1] = stage, detail
        if self._live is None:
            self.console.print(f"{name}: {stage}" + (f" - {detail}" if detail else ""), highlight=False)

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _stage_markup(stage: str) -> str:
    style = {"deployed": "green", "failed": "red", "skipped": "yellow", "queued": "dim"}.get(stage.split()[0], "cyan")
    return f"[{style}]{stage}[/{style}]"


# --- running a deploy -----------------------------------------------------------------------------


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
    environment: str | None = None  # Modal environment scanned for orphans if no deployment names one


@dataclass
class DeploymentResult:
    name: str
    environment: str | None
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

    @classmethod
    def from_row(cls, row: PlanRow, status: str, **kw: Any) -> DeploymentResult:
        return cls(
            row.name, row.environment, row.action, status, row.desired_tag, row.live_tag, row.live_version, **kw
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.environment,
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
        }


class _Report:
    """What every report shares: `emit` prints it as the CLI should and returns the exit code."""

    exit_code: int

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def render(self, console: Console) -> None:
        raise NotImplementedError

    def emit(self, console: Console, fmt: str = "text") -> int:
        """JSON on stdout for --format json, else the rendered text; returns the exit code."""
        if fmt == "json":
            _write_json(console, self.to_dict())
        else:
            self.render(console)
        return self.exit_code


@dataclass
class DeployReport(_Report):
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
    smoke_tester: SmokeTester | None = None,
    confirm: Callable[[str], bool] | None = None,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> DeployReport:
    """Deploy what changed; never raises for Modal failures (they end up in the report).

    `confirm` answers the "go ahead?" question (default: ask on the terminal; refuse without a
    terminal unless `options.yes`). `cancel` is set to stop starting new deploys (Ctrl-C sets it).
    """
    report = DeployReport(dry_run=options.dry_run)
    problem = _check_options(apps, options)
    if problem:
        report.error, report.usage_error = problem, True
        return report
    selected = [a for a in apps if not options.only or a.deployment.name in options.only]
    if not backend.credentials_available():
        report.error = NO_CREDENTIALS
        return report
    try:
        rows = live_plan(selected, backend, options.environment)
    except BackendError as exc:
        report.error = str(exc)
        return report
    if not options.only:
        report.orphans = [r.live for r in rows if r.action == ORPHAN and r.live]
    rows = [r for r in rows if r.action != ORPHAN]
    if options.adopt:
        rows = [replace(r, action=UPDATE) if r.action == CONFLICT else r for r in rows]
    results = _results_without_deploying(rows)
    todo = [r for r in rows if r.action in CHANGES]
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
        executed, interrupted, stopped_early = _execute(todo, backend, options, tester, cancel or threading.Event(), progress)
        results.update(executed)
        report.interrupted, report.stopped_early = interrupted, stopped_early
    report.results = [results[r.name] for r in rows if r.name in results]
    return report


def _results_without_deploying(rows: Sequence[PlanRow]) -> dict[str, DeploymentResult]:
    """Results known from the plan alone: unchanged apps, and conflicts (never overwritten)."""
    results = {}
    for r in rows:
        if r.action == UNCHANGED:
            results[r.name] = DeploymentResult.from_row(r, UNCHANGED)
        elif r.action == CONFLICT:
            results[r.name] = DeploymentResult.from_row(r, FAILED, error=_conflict_message(r))
    return results


def _confirmed(
    todo: Sequence[PlanRow],
    report: DeployReport,
    options: DeployOptions,
    console: Console | None,
    confirm: Callable[[str], bool] | None,
) -> bool:
    """Ask before deploying; records a refusal (or the impossibility to ask) in the report."""
    # With --format json the question goes to stderr: stdout is for the document.
    where = _stderr_console() if options.format == "json" else console
    try:
        go = _ask(_confirm_question(todo), where, confirm)
    except ConfirmationUnavailable as exc:
        report.error = str(exc)
        return False
    report.aborted = not go
    return go


def _check_options(apps: Sequence[RenderedApp], options: DeployOptions) -> str | None:
    known = [a.deployment.name for a in apps]
    unknown = [n for n in options.only if n not in known]
    if unknown:
        return f"--only names no deployment of this fleet: {', '.join(unknown)} (deployments: {', '.join(known) or 'none'})"
    if options.parallel < 1:
        return f"--parallel must be at least 1, not {options.parallel}"
    if options.strategy not in STRATEGIES:
        return f"unknown deployment strategy {options.strategy!r}; use one of {', '.join(STRATEGIES)}"
    return None


def _preflight(todo: list[PlanRow], tester: SmokeTester, results: dict[str, DeploymentResult]) -> list[PlanRow]:
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


def _confirm_question(todo: Sequence[PlanRow]) -> str:
    parts = ", ".join(f"{r.action} {r.name}" for r in todo)
    envs = sorted({_env(r.environment) for r in todo})
    return f"Deploy to Modal environment {', '.join(envs)}: {parts}?"


def _ask(question: str, console: Console | None, confirm: Callable[[str], bool] | None) -> bool:
    """Ask a yes/no question; without a terminal, refuse rather than hang or assume yes."""
    if confirm is not None:
        return confirm(question)
    if not sys.stdin.isatty():
        raise ConfirmationUnavailable(f"{question} needs confirmation, and stdin is not a terminal: pass --yes")
    from rich.console import Console as RichConsole
    from rich.prompt import Confirm

    return Confirm.ask(question, console=console or RichConsole(), default=False)


def _stderr_console() -> Console:
    from rich.console import Console as RichConsole

    return RichConsole(stderr=True, highlight=False)


def _default_progress(console: Console | None, fmt: str) -> Progress:
    from rich.console import Console as RichConsole

    if fmt == "json":  # stdout is for the JSON document
        return RichProgress(_stderr_console())
    return RichProgress(console or RichConsole(highlight=False))


def _execute(
    todo: list[PlanRow],
    backend: Backend,
    options: DeployOptions,
    tester: SmokeTester,
    cancel: threading.Event,
    progress: Progress,
) -> tuple[dict[str, DeploymentResult], bool, bool]:
    """Run the deploys, at most `options.parallel` at a time. Returns (results, interrupted, stopped early).

    Deploys are submitted one by one as slots free up (not all at once), so that a cancel really
    stops new ones from starting. Running ones are always waited for: abandoning a deploy halfway
    would leave an app between versions with nobody to roll it back.
    """
    pending = deque(todo)
    running: dict[Future[DeploymentResult], PlanRow] = {}
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


def _result_of(fut: Future[DeploymentResult], row: PlanRow) -> DeploymentResult:
    try:
        return fut.result()
    except Exception as exc:  # _deploy_one catches everything; this guards against a bug in it
        return DeploymentResult.from_row(row, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")


def _deploy_one(
    row: PlanRow, backend: Backend, options: DeployOptions, tester: SmokeTester, progress: Progress
) -> DeploymentResult:
    """Deploy one app, smoke test it, recover if the test fails. Never raises."""
    assert row.app is not None and row.desired_tag is not None
    t0 = time.monotonic()
    result = DeploymentResult.from_row(row, FAILED)
    progress.update(row.name, "deploying", f"{row.action}: {row.live_tag or 'nothing'} -> {row.desired_tag}")
    try:
        outcome = backend.deploy(
            row.app, row.environment, row.desired_tag, strategy=options.strategy, timeout=options.deploy_timeout
        )
    except Exception as exc:
        result.error = f"deploy failed: {_message(exc)}"
        return _finish(result, t0, progress)
    result.url, result.warnings = outcome.url, tuple(outcome.warnings)
    if not options.smoke_test:
        result.status = DEPLOYED
        return _finish(result, t0, progress)
    progress.update(row.name, "smoke test", f"waiting for /health (up to {row.app.deployment.scaling.startup_timeout}s)")
    result.smoke = _smoke(row, backend, tester, result.url)
    if result.smoke.ok:
        result.status = DEPLOYED
        return _finish(result, t0, progress)
    result.error = f"smoke test failed: {result.smoke.detail}"
    _recover(row, backend, options, result, progress)
    return _finish(result, t0, progress)


def _smoke(row: PlanRow, backend: Backend, tester: SmokeTester, url: str | None) -> SmokeOutcome:
    if not url:
        try:
            url = backend.web_url(row.name, row.environment)
        except Exception as exc:
            return SmokeOutcome(False, f"cannot find the server URL: {_message(exc)}")
    if not url:
        return SmokeOutcome(False, "Modal reports no URL for the server")
    assert row.app is not None
    try:
        return tester(row.app, url)
    except Exception as exc:
        return SmokeOutcome(False, f"smoke test crashed: {type(exc).__name__}: {exc}")


def _recover(
    row: PlanRow, backend: Backend, options: DeployOptions, result: DeploymentResult, progress: Progress
) -> None:
    """After a failed smoke test: roll back to the version live before, or stop a first deploy."""
    if not options.rollback:
        result.recovery, result.recovery_detail = KEPT, "the new version was left live (--no-rollback)"
        return
    try:
        if row.action == CREATE or row.live is None:
            progress.update(row.name, "stopping", "first deploy failed its smoke test")
            backend.stop(row.name, row.environment)
            result.recovery, result.recovery_detail = STOPPED, "first deploy stopped"
        else:
            progress.update(row.name, "rolling back", f"to v{row.live_version} ({row.live_tag})")
            backend.rollback(row.name, row.environment, row.live_version)
            result.recovery = ROLLED_BACK
            result.recovery_detail = f"rolled back to v{row.live_version} ({row.live_tag or 'no tag'})"
    except Exception as exc:
        what = "stop" if row.action == CREATE else "rollback"
        result.recovery = RECOVERY_FAILED
        result.recovery_detail = f"{what} FAILED: {_message(exc)}; the failing version may still be live"


def _finish(result: DeploymentResult, t0: float, progress: Progress) -> DeploymentResult:
    result.seconds = time.monotonic() - t0
    detail = result.error or (result.tag or "")
    if result.recovery_detail:
        detail += f"; {result.recovery_detail}"
    progress.update(result.name, result.status, detail)
    return result


def _message(exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"


# --- rendering the deploy report ------------------------------------------------------------------

_STATUS_STYLE = {DEPLOYED: "green", UNCHANGED: "dim", PLANNED: "cyan", FAILED: "red", SKIPPED: "yellow"}


def render_deploy_report(report: DeployReport, console: Console) -> None:
    """The summary: a table, the full reason for each failure, orphans, one totals line."""
    from rich.table import Table

    if report.error:
        console.print(f"[red]error:[/red] {report.error}", highlight=False, soft_wrap=True)
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
            version = r.tag if r.status in (DEPLOYED, PLANNED) else (r.previous_tag or "-")
            if r.status == PLANNED and r.previous_tag:
                version = f"{r.previous_tag} -> {r.tag}"
            seconds = f"{r.seconds:.0f}s" if r.seconds is not None else "-"
            table.add_row(r.name, r.environment or "(default)", r.action, result, version or "-", seconds, r.url or "-")
        console.print(table)
    for r in report.results:
        if r.status == FAILED:
            line = f"[red]{r.name}:[/red] {r.error}"
            if r.recovery_detail:
                line += f"; {r.recovery_detail}"
            console.print(line, highlight=False, soft_wrap=True)
        for w in r.warnings:
            console.print(f"[yellow]{r.name}: warning:[/yellow] {w}", highlight=False)
    for o in report.orphans:
        console.print(f"[magenta]orphan:[/magenta] {_orphan_message(o)}", highlight=False)
    console.print(_totals(report), highlight=False)


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


# --- status ---------------------------------------------------------------------------------------

IN_SYNC, DRIFTED, NOT_DEPLOYED, UNMANAGED = "in_sync", "drifted", "not_deployed", "unmanaged"


@dataclass(frozen=True)
class StatusRow:
    name: str
    environment: str | None
    state: str  # in_sync | drifted | not_deployed | unmanaged | orphan
    desired_tag: str | None
    live_version: int | None
    live_tag: str | None
    url: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environment": self.environment,
            "state": self.state,
            "desired_tag": self.desired_tag,
            "live_version": self.live_version,
            "live_tag": self.live_tag,
            "url": self.url,
        }


@dataclass
class StatusReport(_Report):
    rows: list[StatusRow] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error else 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.error is None, "error": self.error, "deployments": [r.to_dict() for r in self.rows]}

    def render(self, console: Console) -> None:
        from rich.table import Table

        if self.error:
            console.print(f"[red]error:[/red] {self.error}", highlight=False, soft_wrap=True)
            return
        styles = {IN_SYNC: "green", DRIFTED: "yellow", NOT_DEPLOYED: "dim", UNMANAGED: "red", ORPHAN: "magenta"}
        table = Table(title="Fleet status")
        for col in ("Deployment", "Environment", "State", "Live version", "Live tag", "Rendered tag", "URL"):
            table.add_column(col)
        for r in self.rows:
            s = styles.get(r.state, "")
            table.add_row(
                r.name,
                r.environment or "(default)",
                f"[{s}]{r.state.replace('_', ' ')}[/{s}]",
                f"v{r.live_version}" if r.live_version is not None else "-",
                r.live_tag or "-",
                r.desired_tag or "-",
                r.url or "-",
            )
        console.print(table)


_PLAN_TO_STATE = {CREATE: NOT_DEPLOYED, UPDATE: DRIFTED, UNCHANGED: IN_SYNC, CONFLICT: UNMANAGED, ORPHAN: ORPHAN}


def run_status(apps: Sequence[RenderedApp], backend: Backend, env: str | None = None) -> StatusReport:
    """Per deployment: live version and tag, in sync / drifted / not deployed, URL; then orphans."""
    if not backend.credentials_available():
        return StatusReport(error=NO_CREDENTIALS)
    try:
        rows = live_plan(apps, backend, env)
    except BackendError as exc:
        return StatusReport(error=str(exc))
    live_rows = [r for r in rows if r.live is not None and r.action != CONFLICT]
    with ThreadPoolExecutor(max_workers=8) as pool:
        urls = dict(zip((r.name for r in live_rows), pool.map(lambda r: _url_or_none(backend, r), live_rows)))
    return StatusReport(
        [
            StatusRow(
                r.name, r.environment, _PLAN_TO_STATE[r.action], r.desired_tag, r.live_version, r.live_tag, urls.get(r.name)
            )
            for r in rows
        ]
    )


def _url_or_none(backend: Backend, row: PlanRow) -> str | None:
    if row.live is not None and row.live.url:
        return row.live.url
    try:
        return backend.web_url(row.name, row.environment)
    except BackendError:
        return None


# --- rollback and destroy -------------------------------------------------------------------------


@dataclass
class ActionReport(_Report):
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
            console.print(self.message, highlight=False)
        else:
            console.print(f"[red]error:[/red] {self.message}", highlight=False, soft_wrap=True)


def _managed_app(name: str, backend: Backend, env: str | None, verb: str) -> LiveApp | ActionReport:
    """The live app `name`, or the report refusing to touch it."""
    if not backend.credentials_available():
        return ActionReport(False, NO_CREDENTIALS)
    live = backend.get_app(name, env)
    if live is None:
        return ActionReport(False, f"no deployed app named {name} in Modal environment {_env(env)}")
    if not live.managed:
        return ActionReport(
            False,
            f"refusing to {verb} {name}: fleetform does not manage it (it lacks the managed-by: fleetform tag)",
        )
    return live


def parse_version(text: str) -> int | None:
    """'v3' or '3' -> 3; anything else -> None (it may be a tag)."""
    body = text[1:] if text[:1] in ("v", "V") else text
    return int(body) if body.isdigit() and int(body) > 0 else None


def _rollback_target(history: list[Version], live: LiveApp, to: str | None) -> Version | str:
    """The version to restore, or why there is none."""
    if to is None:
        earlier = [v for v in history if live.version is None or v.version < live.version]
        candidates = [v for v in earlier if v.rollback_allowed and v.tag != live.tag] or [
            v for v in earlier if v.rollback_allowed
        ]
        return candidates[0] if candidates else f"{live.name} has no earlier version to roll back to"
    number = parse_version(to)
    matches = [v for v in history if (v.version == number if number is not None else v.tag == to)]
    if not matches:
        known = ", ".join(f"v{v.version} ({v.tag or 'no tag'})" for v in history[:10])
        return f"{live.name} has no version {to!r}; its history: {known or 'empty'}"
    target = matches[0]
    if target.version == live.version:
        return f"v{target.version} is already the live version of {live.name}"
    if not target.rollback_allowed:
        return f"Modal does not allow rolling {live.name} back to v{target.version}"
    return target


def run_rollback(name: str, backend: Backend, *, environment: str | None = None, to: str | None = None) -> ActionReport:
    """`fleetform rollback NAME [--to VERSION]`: VERSION is v3, 3, or a deployment tag (ff-...)."""
    try:
        live = _managed_app(name, backend, environment, "roll back")
        if isinstance(live, ActionReport):
            return live
        target = _rollback_target(backend.history(name, environment), live, to)
        if isinstance(target, str):
            return ActionReport(False, target)
        backend.rollback(name, environment, target.version)
    except BackendError as exc:
        return ActionReport(False, str(exc))
    details = {"name": name, "environment": environment, "from_version": live.version, "from_tag": live.tag,
               "to_version": target.version, "to_tag": target.tag}
    return ActionReport(
        True,
        f"rolled back {name} from v{live.version} ({live.tag or 'no tag'}) to v{target.version} "
        f"({target.tag or 'no tag'}); Modal records this as a new version",
        details,
    )


def run_destroy(
    name: str,
    backend: Backend,
    *,
    environment: str | None = None,
    yes: bool = False,
    console: Console | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> ActionReport:
    """`fleetform destroy NAME`: stop a managed app, after confirmation unless `yes`."""
    try:
        live = _managed_app(name, backend, environment, "destroy")
        if isinstance(live, ActionReport):
            return live
        question = (
            f"Stop app {name} (v{live.version}, {live.tag or 'no tag'}) in Modal environment {_env(environment)}? "
            "Its containers terminate and its URL stops answering."
        )
        if not yes and not _ask(question, console, confirm):
            return ActionReport(False, f"not confirmed: {name} left running")
        backend.stop(name, environment)
    except (BackendError, ConfirmationUnavailable) as exc:
        return ActionReport(False, str(exc))
    return ActionReport(True, f"stopped {name} in Modal environment {_env(environment)}", {"name": name})
