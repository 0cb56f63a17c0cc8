"""`fleetform run`: try a deployment on a real GPU before it takes traffic.

The rendered module starts as an *ephemeral* Modal app (`Backend.ephemeral`, the SDK's `App.run`,
what `modal run` uses) named `NAME-run-<short hash>`, never the live app's name; the same smoke
test as `fleetform test` runs against its URL (health, riding out the cold start, models, a chat,
the streamed chats); the app stops when the test ends, whether it passed, failed, crashed or was
interrupted. `keep_minutes` keeps it up for a while after a passing test.

How long it can live: the start and the cold start are bounded by the deployment's startup
timeout (or the caller's; a start still going at the timeout is interrupted, as Ctrl-C would),
`keep_minutes` by itself. If this process dies without stopping it, what is left is Modal's side:
the SDK sends the app a heartbeat every 15 s while it runs, and an ephemeral (not detached) app is
stopped when its client is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from renderer.config import spec
from renderer.deploy.common import error_message
from renderer.modal_api import NO_CREDENTIALS, Backend, BackendError, EphemeralApp, run_name
from renderer.plan.cost import Cost

Log = Callable[[str], None]


class StartTimeout(KeyboardInterrupt):
    """The start took longer than the startup timeout. Raised in the main thread by a timer, as Ctrl-C
    would be, because that is what the SDK cancels a blocking start on (and then stops the app)."""


@contextmanager
def start_deadline(seconds: float) -> Iterator[Callable[[], None]]:
    """Interrupt the main thread with StartTimeout after `seconds`; the yielded function disarms it.
    Off the main thread (no signals there) it does nothing: the cold start is still bounded."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield lambda: None
        return

    def fire(*_: Any) -> None:
        raise StartTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    try:
        yield disarm
    finally:
        disarm()
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class RunOptions:
    startup_timeout: float | None = None  # None: the deployment's scaling.startup_timeout
    max_cost_per_hour: float | None = None  # refuse a run dearer than this ($/hour)
    keep_minutes: float = 0.0  # keep the app up this long after a passing test
    prompts: tuple[str, ...] | None = None  # None: the reference example's prompts
    max_tokens: int = 256
    environ: Mapping[str, str] | None = None  # where auth tokens come from (None: os.environ)


@dataclass
class RunReport:
    """What a run did, step by step, with the figures of each."""

    name: str
    run_name: str
    fleet_env: str | None
    modal_env: str | None
    gpu: str  # "H100 x 1"
    usd_per_hour: float  # the GPUs of the containers the run starts (min_containers, at least 1)
    max_cost_per_hour: float | None
    startup_timeout: float
    app_id: str | None = None
    url: str | None = None
    start_seconds: float | None = None
    smoke: Any = None  # endpoint.client.SmokeReport
    kept_minutes: float = 0.0
    stop_command: str | None = None
    stopped: bool = False
    stop_seconds: float | None = None
    total_seconds: float = 0.0
    outcome: str = "not started"  # passed | failed | startup_timeout | refused | error | interrupted
    error: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == "passed"

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 130 if self.outcome == "interrupted" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "error": self.error,
            "name": self.name,
            "run_name": self.run_name,
            "fleet_env": self.fleet_env,
            "modal_env": self.modal_env,
            "gpu": self.gpu,
            "usd_per_hour": self.usd_per_hour,
            "max_cost_per_hour": self.max_cost_per_hour,
            "startup_timeout_s": self.startup_timeout,
            "app_id": self.app_id,
            "url": self.url,
            "start_s": _round(self.start_seconds),
            "smoke": self.smoke.to_dict() if self.smoke is not None else None,
            "kept_minutes": self.kept_minutes,
            "stop_command": self.stop_command,
            "stopped": self.stopped,
            "stop_s": _round(self.stop_seconds),
            "total_s": _round(self.total_seconds),
            "steps": self.steps,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def hourly_cost(d: spec.Deployment, prices: dict[str, float]) -> tuple[str, float]:
    """(the GPU priced, $/hour) of what a run starts: min_containers containers, at least one."""
    cost = Cost.of(d, prices)
    return f"{cost.priced_gpu} x {d.gpu.count}", round(
        cost.usd_per_container_hour * max(1, d.scaling.min_containers), 4
    )


def try_run(
    d: spec.Deployment,
    app: Any,  # codegen.render.RenderedApp of `d`
    backend: Backend,
    prices: dict[str, float],
    options: RunOptions,
    log: Log = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunReport:
    """Start `app` ephemerally, smoke-test it, stop it; never leaves it running past the block.

    Raises only KeyboardInterrupt's successor: an interrupt is reported (outcome `interrupted`),
    after the app was stopped.
    """
    from renderer.endpoint import client

    gpu, usd = hourly_cost(d, prices)
    timeout = float(options.startup_timeout or d.scaling.startup_timeout)
    report = RunReport(d.name, run_name(app), d.fleet_env, d.modal_env, gpu, usd, options.max_cost_per_hour, timeout)
    t0 = time.monotonic()
    log(f"{d.name}: {gpu} at ${usd:,.2f}/hour while it runs (startup timeout {timeout:g} s)")
    if options.max_cost_per_hour is not None and usd > options.max_cost_per_hour:
        report.outcome = "refused"
        report.error = (
            f"{d.name} costs ${usd:,.2f}/hour, above --max-cost-per-hour ${options.max_cost_per_hour:,.2f}; "
            "nothing was started"
        )
        return report
    if not backend.credentials_available():
        report.error = NO_CREDENTIALS
        return report
    try:
        endpoint = client.Endpoint.from_env("http://preflight", d.auth.mode, options.environ)  # fail before paying
    except client.ClientError as exc:
        report.error = f"the smoke test cannot authenticate: {exc.message}; nothing was started"
        return report

    live: EphemeralApp | None = None
    stop_started: float | None = None
    try:
        log(f"starting {report.run_name} as an ephemeral app in Modal environment {d.modal_env or '(default)'}")
        with start_deadline(timeout) as disarm, backend.ephemeral(app, d.modal_env) as live:
            disarm()
            report.app_id, report.url, report.stop_command = live.app_id, live.url, live.stop_command
            report.start_seconds = time.monotonic() - t0
            report.steps.append({"step": "start", "ok": True, "seconds": _round(report.start_seconds)})
            if not live.url:
                raise BackendError(f"Modal reported no URL for {report.run_name}")
            left = max(1.0, timeout - (time.monotonic() - t0))
            log(f"started {live.app_id} at {live.url}; waiting up to {left:.0f} s for the cold start (/health)")
            endpoint = client.Endpoint(live.url, endpoint.headers, endpoint.auth_hint)
            kwargs: dict[str, Any] = {"health_timeout": left, "max_tokens": options.max_tokens}
            if options.prompts:
                kwargs["prompts"] = list(options.prompts)
            try:
                report.smoke = client.run_smoke(endpoint, list(d.model.names), **kwargs)
            finally:
                stop_started = time.monotonic()  # what follows the test is the stop (or --keep, reset below)
            _judge(report, timeout)
            if report.ok and options.keep_minutes:
                report.kept_minutes = options.keep_minutes
                log(
                    f"keeping {live.url} up for {options.keep_minutes:g} min; stop it sooner with Ctrl-C "
                    f"or `{live.stop_command}`"
                )
                kept_from = time.monotonic()
                try:
                    sleep(options.keep_minutes * 60)
                except KeyboardInterrupt:  # the documented way to end --keep sooner: the test still passed
                    report.kept_minutes = round((time.monotonic() - kept_from) / 60, 3)
            stop_started = time.monotonic()
            log(f"stopping {report.run_name}")
    except StartTimeout:
        report.outcome = "startup_timeout"
        report.error = f"not started within the startup timeout ({timeout:g} s); the app was stopped"
        report.stopped = True  # Backend.ephemeral stops the app however its start ends
    except KeyboardInterrupt:
        report.outcome, report.error = "interrupted", "interrupted; the app was stopped"
    except BackendError as exc:
        report.outcome, report.error = "error", error_message(exc)
    except Exception as exc:  # the smoke test crashed: the app was stopped on the way out
        report.outcome, report.error = "error", f"the test crashed: {error_message(exc)}"
    if live is not None:
        report.stopped = live.stopped
        report.stop_seconds = time.monotonic() - (stop_started or time.monotonic())
        report.steps.append({"step": "stop", "ok": live.stopped, "seconds": _round(report.stop_seconds)})
    report.total_seconds = time.monotonic() - t0
    return report


def _judge(report: RunReport, timeout: float) -> None:
    smoke = report.smoke
    for s in smoke.steps:
        report.steps.append({"step": s.name, "ok": s.ok, "seconds": _round(s.seconds)})
    if smoke.ok:
        report.outcome = "passed"
        return
    failed = next((s for s in smoke.steps if not s.ok), None)
    if failed is not None and failed.name == "health":
        report.outcome = "startup_timeout"
        report.error = f"not healthy within the startup timeout ({timeout:g} s): {failed.error}; the app was stopped"
    else:
        report.outcome = "failed"
        report.error = f"{failed.name}: {failed.error}" if failed else "the smoke test ran no step"
