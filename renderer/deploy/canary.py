"""Canary rollouts: the new version beside the live one, a share of its traffic through the gateway,
judged from the gateway's metrics, then promoted or rolled back.

For every deployment rolled out this way (several at once share each of the gateway's deploys):

1. Canary up: its weights are staged (as for a direct deploy), the new version's module is deployed
   as its own app, `spec.canary_app_name` (NAME-canary: the same module byte for byte, under another
   app name, as `modal deploy --name` does), and smoke tested at its own URL. A canary that fails
   is stopped: the live version never sent it a request.
2. Split: the gateway is deployed with a split per canary (`RenderedGateway.with_splits`): `weight`
   percent of the deployment's requests, drawn at random per request, go to the canary. Then it is
   smoke tested through itself.
3. Watch: every `watch_interval` seconds for `duration`, one scrape of the gateway's /metrics; the
   figures of the live app and of the canary over the window (`traffic.Window`) are shown, and a
   canary whose error rate breaks `promote_if` with `min_requests` behind it is failed at once (the
   gateway is redeployed without its split before the others go on).
4. Verdict (`judge`): every `promote_if` term over the whole window.
5. Promote: the same module is deployed to the live app (Modal's rolling deploy: new containers
   before the old drain) and smoke tested; a failure rolls the live app back, as a direct deploy
   does. A canary that is not promoted leaves the live app untouched.
6. Back to one upstream: the gateway without splits (the fleet's own module, whose tag `plan`
   expects), then every canary app is stopped. Until that gateway is live no canary is stopped,
   since the gateway may still send it requests.

Where the state lives: in Modal alone, as the canary apps and the gateway's live version. Ctrl-C
during a rollout ends it the safe way (no promotion; steps 6 run); if fleetform itself dies, the
canary app stays beside the live one: `plan` and `status` show it (Action.CANARY), `fleetform
deploy --canary` resumes watching it (a canary already at the wanted version is not deployed
again), a plain `fleetform deploy` finishes the rollout the YAML's way (the gateway without
splits, the canary stopped), and `fleetform rollback NAME` (`abort`) ends it and sends all traffic
back to the live version.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from renderer.codegen.gateway import RenderedGateway, Split
from renderer.config import spec
from renderer.config.schema import format_duration
from renderer.deploy import traffic as gateway_traffic
from renderer.deploy.app import (
    DEPLOYED,
    FAILED,
    ROLLED_BACK,
    STOPPED,
    DeploymentResult,
    DeployOptions,
    deploy_one,
    finish,
    install_sigint,
    smoke,
)
from renderer.deploy.common import ActionReport, error_message
from renderer.deploy.progress import Progress
from renderer.deploy.smoke import SmokeTester
from renderer.deploy.stage import FAILED as STAGE_FAILED
from renderer.deploy.stage import stage_one
from renderer.deploy.verdict import (
    CANARY_FAILED,
    INTERRUPTED,
    NOT_PROMOTED,
    PROMOTED,
    CanaryOutcome,
    Verdict,
    early_failure,
    judge,
    summary,
)
from renderer.modal_api import Backend, BackendError, LiveApp, deployment_tag
from renderer.plan.live import LiveRow

TrafficSource = Callable[[], gateway_traffic.GatewayTraffic]


# --- what was asked, what came of it ----------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryRequest:
    """One deployment to roll out as a canary: its (update) row, the rollout settings after the
    command line's, and the canary app a rollout left behind, if any."""

    row: LiveRow
    rollout: spec.Rollout
    leftover: LiveApp | None = None

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def app(self) -> str:
        return spec.canary_app_name(self.row.name)


# --- the rollout ------------------------------------------------------------------------------------------


@dataclass
class _Rollout:
    backend: Backend
    options: DeployOptions
    tester: SmokeTester
    progress: Progress
    cancel: threading.Event
    gateway: LiveRow  # the fleet's gateway: its row (module without splits, live version)
    source: TrafficSource
    results: dict[str, DeploymentResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- 1. canary up

    def start(self, req: CanaryRequest) -> DeploymentResult:
        """Stage, deploy the canary app, smoke test it. Never raises."""
        row, t0 = req.row, time.monotonic()
        assert row.app is not None and row.desired_tag is not None
        result = DeploymentResult.from_row(row, FAILED)
        result.canary = CanaryOutcome(req.app, req.rollout.weight, req.rollout.duration)
        canary_row = dataclasses.replace(row, name=req.app, live=req.leftover)
        if self.options.stage:
            result.staging = stage_one(row.app.deployment, self.backend, self.progress)
            if result.staging.status == STAGE_FAILED:
                result.error = f"staging the weights failed, nothing deployed: {result.staging.error}"
                return finish(result, t0, self.progress)
        url = None
        if req.leftover is not None and req.leftover.tag == row.desired_tag:
            result.canary.resumed = True
            self.progress.update(row.name, "canary", f"{req.app} already runs {row.desired_tag}: resuming it")
        else:
            self.progress.update(row.name, "deploying canary", f"{req.app}: {row.desired_tag}")
            try:
                outcome = self.backend.deploy(
                    row.app,
                    row.modal_env,
                    row.desired_tag,
                    strategy=self.options.strategy,
                    timeout=self.options.deploy_timeout,
                    name=req.app,
                )
            except Exception as exc:
                result.error = f"canary deploy failed: {error_message(exc)}"
                self._fail_start(req, result)
                return finish(result, t0, self.progress)
            url, result.warnings = outcome.url, tuple(outcome.warnings)
        if self.options.smoke_test:
            limit = row.app.deployment.scaling.startup_timeout
            self.progress.update(row.name, "smoke test", f"{req.app}: waiting for /health (up to {limit:g}s)")
            result.smoke = smoke(canary_row, self.backend, self.tester, url)
            if not result.smoke.ok:
                result.error = f"canary smoke test failed: {result.smoke.detail}"
                self._fail_start(req, result)
                return finish(result, t0, self.progress)
        result.seconds = time.monotonic() - t0  # the canary's URL is not the deployment's: result.url stays unset
        return result

    def _stop_canary(self, req: CanaryRequest, result: DeploymentResult) -> str | None:
        """Stop a canary the gateway sends nothing to (yet, or any more). Returns why it could not be."""
        assert result.canary is not None
        try:
            if self.backend.get_app(req.app, req.row.modal_env) is not None:
                self.backend.stop(req.app, req.row.modal_env)
        except BackendError as exc:
            return f"stopping canary {req.app} FAILED: {exc}; `fleetform destroy {req.app}` stops it"
        result.canary.stopped = True
        return None

    def _fail_start(self, req: CanaryRequest, result: DeploymentResult) -> None:
        """A canary that failed before the gateway sent it anything: stop it, the live app is untouched."""
        problem = self._stop_canary(req, result)
        result.recovery = None if problem else STOPPED
        result.recovery_detail = problem or f"canary {req.app} stopped; the live version was not touched"

    # -- 2. and 6. the gateway's split

    def split(self, reqs: Sequence[CanaryRequest], why: str) -> str | None:
        """Deploy the gateway with a split for each of `reqs` (none: the plain module) and smoke test it.
        Returns why it failed, after putting back the version that was live before this deploy."""
        gw = self.gateway
        assert isinstance(gw.app, RenderedGateway)
        module = gw.app.with_splits([Split(r.name, r.rollout.weight) for r in reqs])
        tag = deployment_tag(module)
        try:
            before = self.backend.get_app(gw.name, gw.modal_env)
            if before is not None and before.tag == tag:
                return None  # already live: a resumed rollout, or one whose canaries all failed
            self.progress.update(gw.name, "deploying", why)
            outcome = self.backend.deploy(
                module, gw.modal_env, tag, strategy=self.options.strategy, timeout=self.options.deploy_timeout
            )
        except Exception as exc:
            self.progress.update(gw.name, "failed", f"{why}: {error_message(exc)}")
            return f"deploying the gateway ({why}) failed: {error_message(exc)}"
        if self.options.smoke_test:
            result = smoke(dataclasses.replace(gw, app=module), self.backend, self.tester, outcome.url)
            if not result.ok:
                back = self._put_back(gw.name, gw.modal_env, before)
                self.progress.update(gw.name, "failed", f"{why}: smoke test failed; {back}")
                return f"the gateway ({why}) failed its smoke test: {result.detail}; {back}"
        self.progress.update(gw.name, DEPLOYED, f"{why}: {tag}")
        return None

    def _put_back(self, name: str, modal_env: str | None, before: LiveApp | None) -> str:
        if before is None or before.version is None:
            return "no earlier version to roll back to"
        try:
            self.backend.rollback(name, modal_env, before.version)
        except BackendError as exc:
            return f"rolling the gateway back to v{before.version} FAILED: {exc}"
        return f"rolled the gateway back to v{before.version} ({before.tag or 'no tag'})"

    # -- 3. and 4. the watch

    def watch(self, reqs: list[CanaryRequest]) -> None:
        """Scrape, show, decide: sets each result's verdict and outcome (not yet promoted)."""
        window = gateway_traffic.Window(time.time())
        t0 = time.monotonic()
        active = {r.name: r for r in reqs}
        scraped, last_error = 0, ""
        while active:
            try:
                window.add(self.source())
                scraped += 1
            except OSError as exc:
                last_error = str(exc)
                self.progress.note(f"canary: cannot read the gateway's metrics ({last_error}); trying again")
            elapsed = time.monotonic() - t0
            failed = []
            for name, req in list(active.items()):
                live, canary = window.upstream(name), window.upstream(req.app)
                outcome = self.results[name].canary
                assert outcome is not None
                outcome.watched_seconds = elapsed
                self.progress.update(
                    name,
                    "canary",
                    f"{req.rollout.weight}%, {format_duration(round(elapsed))} of "
                    f"{format_duration(req.rollout.duration)}: " + summary(live, canary),
                )
                early = early_failure(live, canary, req.rollout.promote_if)
                if early:
                    outcome.verdict = Verdict(False, (early,), live, canary)
                    outcome.outcome = NOT_PROMOTED
                    failed.append(req)
                elif elapsed >= req.rollout.duration:
                    if scraped == 0:
                        why = f"the gateway's metrics could not be read: {last_error}"
                        outcome.verdict = Verdict(False, (why,), live, canary)
                    else:
                        outcome.verdict = judge(live, canary, req.rollout.promote_if)
                    outcome.outcome = PROMOTED if outcome.verdict.promote else NOT_PROMOTED
                else:
                    continue
                del active[name]
            if failed and active:  # take the failed canaries out of the split while the others go on
                names = ", ".join(r.name for r in failed)
                problem = self.split(list(active.values()), f"split without {names}: its canary failed")
                if problem:  # still in the split: stopped at the end, once the gateway has no split
                    self.notes.append(problem)
                else:
                    stopped = (self._stop_canary(r, self.results[r.name]) for r in failed)
                    self.notes += [p for p in stopped if p]
            if not active:
                break
            if self.cancel.is_set():
                for name in active:
                    outcome = self.results[name].canary
                    assert outcome is not None
                    outcome.outcome = INTERRUPTED
                break
            remaining = min(r.rollout.duration for r in active.values()) - (time.monotonic() - t0)
            self.cancel.wait(max(0.0, min(self.options.watch_interval, remaining)))

    # -- 5. promote

    def promote(self, req: CanaryRequest) -> None:
        result = self.results[req.name]
        promoted = deploy_one(
            req.row, self.backend, dataclasses.replace(self.options, stage=False), self.tester, self.progress
        )
        result.status, result.url, result.smoke = promoted.status, promoted.url, promoted.smoke
        result.warnings += promoted.warnings
        result.recovery, result.recovery_detail = promoted.recovery, promoted.recovery_detail
        if promoted.status != DEPLOYED:
            result.error = f"promoting the canary failed: {promoted.error}"


def run_canaries(
    reqs: Sequence[CanaryRequest],
    gateway: LiveRow,
    backend: Backend,
    options: DeployOptions,
    tester: SmokeTester,
    source: TrafficSource,
    progress: Progress,
    cancel: threading.Event,
) -> tuple[dict[str, DeploymentResult], list[str]]:
    """Roll out `reqs` as canaries through `gateway` (its row: the fleet's module, without splits, and
    its live version). Returns the results by deployment and notes on what could not be put back.
    Never raises for Modal failures. Ctrl-C sets `cancel`, which ends the rollout the safe way."""

    def on_interrupt(*_: Any) -> None:
        cancel.set()
        progress.note("Interrupted: no canary is promoted; returning every request to the live versions.")

    restore = install_sigint(on_interrupt)
    progress.start([r.row for r in reqs] + [gateway])
    try:
        return _run(_Rollout(backend, options, tester, progress, cancel, gateway, source), reqs)
    finally:
        restore()
        progress.stop()


def _run(run: _Rollout, reqs: Sequence[CanaryRequest]) -> tuple[dict[str, DeploymentResult], list[str]]:
    cancel, progress = run.cancel, run.progress
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=run.options.parallel, thread_name_prefix="fleetform-canary") as pool:
        for req, result in zip(reqs, pool.map(run.start, reqs), strict=True):
            run.results[req.name] = result
    up = [r for r in reqs if run.results[r.name].error is None]
    watched: list[CanaryRequest] = []
    if up and cancel.is_set():
        for r in up:
            _outcome(run, r).outcome = INTERRUPTED
    elif up:
        weights = ", ".join(f"{r.rollout.weight}% of {r.name}" for r in up)
        problem = run.split(up, f"split: {weights} to the canary")
        if problem:
            for r in up:
                run.results[r.name].error = problem
                _outcome(run, r).outcome = CANARY_FAILED
        else:
            watched = up
            run.watch(up)
    for r in watched:
        outcome = _outcome(run, r)
        if outcome.outcome == PROMOTED and cancel.is_set():
            outcome.outcome = INTERRUPTED  # Ctrl-C starts no new deploy, a promotion included
        if outcome.outcome == PROMOTED:
            run.promote(r)
    # 6. back to one upstream; the canaries stop only once the gateway sends them nothing
    problem = run.split([], "no split: every request to the live version") if up else None
    if problem:
        run.notes.append(
            f"{problem}; the canaries keep running so that no request fails: `fleetform rollback NAME` "
            "or `fleetform deploy` tries again"
        )
    for r in up:
        result, outcome = run.results[r.name], _outcome(run, r)
        stop_problem = problem  # the gateway may still send it requests: it keeps running
        if not problem and not outcome.stopped:
            stop_problem = run._stop_canary(r, result)
            if stop_problem:
                run.notes.append(stop_problem)
        if outcome.outcome != PROMOTED:
            reasons = "; ".join(outcome.verdict.reasons) if outcome.verdict else "interrupted (Ctrl-C)"
            result.status, result.error = FAILED, result.error or f"canary not promoted: {reasons}"
            if not stop_problem:
                result.recovery = ROLLED_BACK
                result.recovery_detail = (
                    f"canary {r.app} stopped; every request goes to the live version "
                    f"v{r.row.live_version} ({r.row.live_tag or 'no tag'})"
                )
        result.seconds = time.monotonic() - t0
        progress.update(r.name, result.status, result.error or f"promoted: {r.row.desired_tag}")
    return run.results, run.notes


def _outcome(run: _Rollout, req: CanaryRequest) -> CanaryOutcome:
    outcome = run.results[req.name].canary
    assert outcome is not None
    return outcome


# --- ending a rollout from outside (`fleetform rollback NAME`) --------------------------------------------


def abort(
    name: str, modal_env: str | None, backend: Backend, gateway: RenderedGateway | None, gateway_env: str | None
) -> ActionReport | None:
    """End the canary rollout of deployment `name`, if its canary app runs: the gateway without splits
    (the fleet's module), then the canary app stopped. None when no canary of `name` runs."""
    app = spec.canary_app_name(name)
    if not backend.credentials_available():
        return None  # the rollback that follows says what is missing
    try:
        canary = backend.get_app(app, modal_env)
        if canary is None or not canary.managed:
            return None
        if gateway is not None:
            tag = deployment_tag(gateway)
            live = backend.get_app(gateway.name, gateway_env)
            if live is None or live.tag != tag:
                backend.deploy(gateway, gateway_env, tag)
        backend.stop(app, modal_env)
    except BackendError as exc:
        return ActionReport(False, f"ending the canary rollout of {name} failed: {exc}")
    where = f"the gateway {gateway.name} sends every request of {name} to its live version" if gateway else ""
    return ActionReport(
        True,
        f"ended the canary rollout of {name}: {where + '; ' if where else ''}canary {app} ({canary.tag}) stopped",
        {"name": name, "modal_env": modal_env, "canary": app, "canary_tag": canary.tag, "aborted": True},
    )


def canary_traffic_source(backend: Backend, gateway: str, modal_env: str | None, key: str) -> TrafficSource:
    """Scrapes of the gateway's /metrics through its public URL (looked up once, on the first scrape),
    with `key`; a failure to look it up or read it is an OSError, which the watch retries."""
    url: list[str] = []

    def scrape() -> gateway_traffic.GatewayTraffic:
        if not url:
            try:
                found = backend.web_url(gateway, modal_env)
            except BackendError as exc:
                raise OSError(str(exc)) from None
            if not found:
                raise OSError(f"Modal reports no URL for the gateway {gateway}")
            url.append(found)
        return gateway_traffic.fetch(url[0], key)

    return scrape
