"""An in-memory `Backend` for testing the orchestrator: it records every call, keeps a Modal-like
version history per app, and can be told to fail, hang for a while, or run a hook mid-deploy."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from renderer.codegen.render import RenderedApp
from renderer.deploy.smoke import SmokeOutcome
from renderer.modal_api import (
    Backend,
    BackendError,
    DeployOutcome,
    EphemeralApp,
    LiveApp,
    Version,
    effective_tags,
    run_name,
)


@dataclass
class FakeApp:
    name: str
    env: str | None
    managed: bool = True
    versions: list[Version] = field(default_factory=list)  # oldest first
    live: int | None = None
    stopped: bool = False


class FakeBackend(Backend):
    def __init__(self, *, credentials: bool = True, deploy_delay: float = 0.0):
        self.credentials = credentials
        self.deploy_delay = deploy_delay
        self.apps: dict[tuple[str | None, str], FakeApp] = {}
        self.calls: list[tuple] = []
        self.deploy_errors: dict[str, BackendError] = {}  # name -> raised by deploy
        self.list_error: BackendError | None = None
        self.rollback_error: BackendError | None = None
        self.rollback_tag = ""  # the tag Modal puts on a rollback's new history entry
        self.on_deploy: Callable[[str], None] | None = None  # runs at the start of each deploy
        self.on_deploy_module: Callable[[str, object], None] | None = None  # the same, with the module
        self.deployed: list[tuple[str, object]] = []  # (app name, rendered module) of every deploy
        self.started: list[str] = []  # deploys in the order they started
        self.finished: list[str] = []
        self.max_concurrent = 0
        self.ephemeral_url = "https://run.example.test"  # what an ephemeral app's server answers at
        self.ephemeral_error: BackendError | None = None  # raised when an ephemeral app starts
        self.ephemeral_delay = 0.0  # seconds an ephemeral app takes to start (image builds...)
        self.ephemeral_apps: list[EphemeralApp] = []  # every ephemeral app started, stopped or not
        # Staging: the markers on each Volume, (modal_env, volume) -> {(repository, revision)}; a
        # stage run adds its deployment's, unless `stage_errors` names it (raised instead).
        self.volumes: dict[tuple[str | None, str], set[tuple[str, str]]] = {}
        self.stage_errors: dict[str, BackendError] = {}  # deployment name -> raised by stage
        self.stage_calls: list[tuple] = []  # ("staged", volume, env) and ("stage", deployment name, env)
        self.stage_events: list[tuple[str, dict]] = []  # (deployment name, event) sent to on_event
        self._running = 0
        self._lock = threading.Lock()

    # -- setting up live state

    def add_live(
        self, name: str, tag: str, *, env: str | None = None, managed: bool = True, versions: int = 1
    ) -> FakeApp:
        app = FakeApp(name, env, managed)
        for i in range(versions):
            app.versions.append(Version(i + 1, tag if i == versions - 1 else f"ff-old{i + 1}"))
        app.live = versions
        self.apps[(env, name)] = app
        return app

    def _live(self, name: str, env: str | None) -> FakeApp | None:
        app = self.apps.get((env, name))
        return app if app is not None and not app.stopped and app.live is not None else None

    def _describe(self, app: FakeApp) -> LiveApp:
        versions = effective_tags(app.versions)
        current = next(v for v in versions if v.version == app.live)
        return LiveApp(app.name, f"ap-{app.name}", app.env, app.managed, current.version, current.tag)

    def calls_of(self, method: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == method]

    # -- Backend

    def credentials_available(self) -> bool:
        return self.credentials

    def list_apps(self, env: str | None) -> list[LiveApp]:
        self.calls.append(("list_apps", env))
        if self.list_error:
            raise self.list_error
        return [
            self._describe(a)
            for (e, _), a in sorted(self.apps.items(), key=lambda kv: kv[0][1])
            if e == env and self._live(a.name, e)
        ]

    def get_app(self, name: str, env: str | None) -> LiveApp | None:
        self.calls.append(("get_app", name, env))
        app = self._live(name, env)
        return self._describe(app) if app else None

    def history(self, name: str, env: str | None) -> list[Version]:
        self.calls.append(("history", name, env))
        app = self._live(name, env)
        if app is None:
            raise BackendError(f"no app {name}")
        return sorted(effective_tags(app.versions), key=lambda v: v.version, reverse=True)

    def deploy(
        self,
        app: RenderedApp,
        env: str | None,
        tag: str,
        *,
        strategy: str | None = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> DeployOutcome:
        name = name or app.name  # a deployment's app, its canary, or the gateway's
        with self._lock:
            self.calls.append(("deploy", name, env, tag, strategy))
            self.deployed.append((name, app))
            self.started.append(name)
            self._running += 1
            self.max_concurrent = max(self.max_concurrent, self._running)
        try:
            if self.on_deploy:
                self.on_deploy(name)
            if self.on_deploy_module:
                self.on_deploy_module(name, app)
            if self.deploy_delay:
                time.sleep(self.deploy_delay)
            if name in self.deploy_errors:
                raise self.deploy_errors[name]
            with self._lock:
                fake = self.apps.get((env, name))
                if fake is None or fake.stopped:
                    fake = self.apps[(env, name)] = FakeApp(name, env, managed=True)
                fake.managed = True  # the rendered module carries the tag
                fake.versions.append(Version(len(fake.versions) + 1, tag))
                fake.live = len(fake.versions)
            return DeployOutcome(app_id=f"ap-{name}", url=f"https://{name}.example.test")
        finally:
            with self._lock:
                self._running -= 1
                self.finished.append(name)

    def rollback(self, name: str, env: str | None, version: int | None = None) -> None:
        self.calls.append(("rollback", name, env, version))
        if self.rollback_error:
            raise self.rollback_error
        app = self._live(name, env)
        assert app is not None
        target = version if version is not None else app.live - 1
        app.versions.append(Version(len(app.versions) + 1, self.rollback_tag, rollback_of=target))
        app.live = len(app.versions)

    def stop(self, name: str, env: str | None) -> None:
        self.calls.append(("stop", name, env))
        app = self._live(name, env)
        assert app is not None
        app.stopped = True

    def web_url(self, name: str, env: str | None) -> str | None:
        self.calls.append(("web_url", name, env))
        return f"https://{name}.example.test" if self._live(name, env) else None

    @contextlib.contextmanager
    def ephemeral(self, app: RenderedApp, env: str | None) -> Iterator[EphemeralApp]:
        """Like Modal's `App.run`: created, then stopped however the block ends (the exception passes)."""
        name = run_name(app)
        self.calls.append(("ephemeral", name, env))
        if self.ephemeral_error:
            raise self.ephemeral_error
        run = EphemeralApp(name, f"ap-{name}", env, self.ephemeral_url)
        self.ephemeral_apps.append(run)
        try:
            if self.ephemeral_delay:
                time.sleep(self.ephemeral_delay)  # created, still starting: an interrupt here must stop it too
            yield run
        finally:
            self.calls.append(("ephemeral_stop", name, env))
            run.stopped = True

    def staged(self, volume: str, env: str | None, repos) -> dict[tuple[str, str], bool]:
        with self._lock:
            self.stage_calls.append(("staged", volume, env))
            have = self.volumes.get((env, volume), set())
            return {tuple(r): tuple(r) in have for r in repos}

    def stage(self, module, env: str | None, on_event) -> dict:
        name = module.deployment.name
        with self._lock:
            self.stage_calls.append(("stage", name, env))
        for repo, revision in module.repos:
            event = {"event": "start", "repo": repo, "revision": revision, "files": 2, "bytes": 2000,
                     "download_files": 2, "download_bytes": 2000}  # fmt: skip
            self.stage_events.append((name, event))
            on_event(event)
        if name in self.stage_errors:
            raise self.stage_errors[name]
        with self._lock:
            self.volumes.setdefault((env, module.deployment.cache.huggingface_volume), set()).update(module.repos)
        markers = [{"repo": r, "revision": v, "files": 2, "bytes": 2000} for r, v in module.repos]
        return {"event": "staged", "repos": markers, "downloaded_bytes": 2000 * len(markers)}


class FakeSmoke:
    """A smoke tester that fails for the names in `failing` and records what it tested."""

    def __init__(self, failing: set[str] | None = None, preflight_failing: set[str] | None = None):
        self.failing = failing or set()
        self.preflight_failing = preflight_failing or set()
        self.tested: list[tuple[str, str]] = []

    def preflight(self, app: RenderedApp) -> str | None:
        return "no proxy token" if app.name in self.preflight_failing else None

    def __call__(self, app: RenderedApp, url: str) -> SmokeOutcome:
        self.tested.append((app.name, url))
        if app.name in self.failing:
            return SmokeOutcome(False, "health: server not healthy after 600s")
        return SmokeOutcome(True, "ok")
