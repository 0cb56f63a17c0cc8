"""One app through `fleetform deploy`: stage its weights, deploy it, smoke test it, recover from a failed
smoke test. These are the steps a direct deploy (`renderer.deploy.run`) and a canary rollout
(`renderer.deploy.canary`) share, with the options and the per-deployment result they both report.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderer.deploy.common import error_message
from renderer.deploy.progress import Progress
from renderer.deploy.smoke import GATEWAY_HEALTH_TIMEOUT, SmokeOutcome, SmokeTester
from renderer.deploy.stage import FAILED as STAGE_FAILED
from renderer.deploy.stage import StageResult, stage_one
from renderer.modal_api import Backend
from renderer.plan.live import Action, LiveRow

if TYPE_CHECKING:
    from renderer.deploy.verdict import CanaryOutcome

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
    # Canary rollouts (renderer.deploy.canary): --canary PERCENT asks for one for every updated
    # deployment selected (else each deployment's `rollout.strategy` decides); --no-canary for none.
    canary_weight: int | None = None
    canary_duration: int | None = None  # --canary-duration: seconds, instead of `rollout.duration`
    no_canary: bool = False
    watch_interval: float = 15.0  # seconds between two scrapes of the gateway's /metrics


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
    canary: CanaryOutcome | None = None  # how a canary rollout of it went (None: deployed directly)

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
            "canary": None if self.canary is None else self.canary.to_dict(),
        }


def deploy_one(
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
            return finish(result, t0, progress)
    progress.update(row.name, "deploying", f"{row.action}: {row.live_tag or 'nothing'} -> {row.desired_tag}")
    try:
        outcome = backend.deploy(
            row.app, row.modal_env, row.desired_tag, strategy=options.strategy, timeout=options.deploy_timeout
        )
    except Exception as exc:
        result.error = f"deploy failed: {error_message(exc)}"
        return finish(result, t0, progress)
    result.url, result.warnings = outcome.url, tuple(outcome.warnings)
    if not options.smoke_test:
        result.status = DEPLOYED
        return finish(result, t0, progress)
    limit = GATEWAY_HEALTH_TIMEOUT if row.gateway else row.app.deployment.scaling.startup_timeout
    progress.update(row.name, "smoke test", f"waiting for /health (up to {limit:g}s)")
    result.smoke = smoke(row, backend, tester, result.url)
    if result.smoke.ok:
        result.status = DEPLOYED
        return finish(result, t0, progress)
    result.error = f"smoke test failed: {result.smoke.detail}"
    recover(row, backend, options, result, progress)
    return finish(result, t0, progress)


def smoke(row: LiveRow, backend: Backend, tester: SmokeTester, url: str | None) -> SmokeOutcome:
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


def recover(
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


def finish(result: DeploymentResult, t0: float, progress: Progress) -> DeploymentResult:
    result.seconds = time.monotonic() - t0
    detail = result.error or (result.tag or "")
    if result.recovery_detail:
        detail += f"; {result.recovery_detail}"
    progress.update(result.name, result.status, detail)
    return result


def install_sigint(handler: Callable[..., None]) -> Callable[[], None]:
    """Route Ctrl-C to `handler` while deploys run; returns the function that puts things back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    return lambda: signal.signal(signal.SIGINT, previous)
