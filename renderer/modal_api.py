"""The network boundary: everything fleetform asks of Modal goes through a `Backend`.

`ModalBackend` is the only code (besides the rendered apps themselves) that imports `modal`, and it
does so inside its methods, never at module level: `fleetform validate` and `render` must stay fast
and must work on machines where the SDK cannot even be imported. The deploy verbs (`renderer.deploy`)
only ever see the `Backend` interface, so their tests run against an in-memory fake.

Every failure crossing this boundary becomes a `BackendError` subclass whose `str()` is one line a
user can act on; nothing from `modal`, `grpclib` or `asyncio` escapes.

How state is read, mirroring what the `modal app` CLI does through the same gRPC stub:

- `AppList` lists the environment's apps; deployed ones have a name.
- `AppGetTags` tells whether an app is ours: the rendered module creates its App with the tag
  `managed-by: fleetform`.
- `AppDeploymentHistory` gives each version's deployment tag (fleetform passes `ff-<short hash>` of
  the rendered module) and `production_app_version` names the live one. A rollback creates a new
  version that points back at an older one (`rollback_version`); its tag is that version's tag.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp
    from renderer.codegen.stage import RenderedStage

    # a rendered module: a deployment's, the fleet's gateway, or a deployment's stage module
    Module = RenderedApp | RenderedGateway | RenderedStage

MANAGED_TAG_KEY = "managed-by"
MANAGED_TAG_VALUE = "fleetform"
TAG_PREFIX = "ff-"
SERVER_NAME = "serve"  # the web endpoint of every rendered module: `@app.server` (apps) or an ASGI function (gateway)
STRATEGIES = ("rolling", "recreate")
_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,50}$")

NO_CREDENTIALS = (
    "no Modal credentials found: run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET in the environment"
)


# --- errors ---------------------------------------------------------------------------------------


class BackendError(Exception):
    """A failure talking to Modal, with a one-line message fit to print as is."""

    kind = "error"

    def __init__(self, message: str):
        super().__init__(_one_line(message))
        self.message = str(self)


class CredentialsMissing(BackendError):
    kind = "credentials"


class CredentialsRejected(BackendError):
    kind = "credentials"


class PermissionDenied(BackendError):
    kind = "permission"


class EnvironmentNotFound(BackendError):
    kind = "environment"


class AppNotFound(BackendError):
    kind = "not_found"


class CapacityError(BackendError):
    """Quota, rate limit or no GPUs of the requested type: waiting or another GPU may help."""

    kind = "capacity"


class NetworkError(BackendError):
    kind = "network"


class DeployTimeout(BackendError):
    kind = "timeout"


class InvalidRequest(BackendError):
    kind = "invalid"


class BuildFailed(BackendError):
    kind = "build"


class StageFailed(BackendError):
    """The stage function ran and reported that the weights could not be staged (its one line)."""

    kind = "stage"


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _env_label(modal_env: str | None) -> str:
    return f"'{modal_env}'" if modal_env else "(default)"


def translate(exc: BaseException, *, modal_env: str | None = None, action: str = "") -> BackendError:
    """Map an exception raised by the Modal SDK (or the transport under it) to a BackendError.

    The class decides what the user is told to do; the SDK's own text is kept as the detail.
    Classes are looked up by name on `modal.exception` so this works even if `modal` failed to
    import (then everything unknown falls through to the generic case).
    """
    if isinstance(exc, BackendError):
        return exc
    prefix = f"{action}: " if action else ""
    detail = _one_line(str(exc)) or type(exc).__name__
    mx = _modal_exceptions()

    def isa(*names: str) -> bool:
        return any(isinstance(exc, mx[n]) for n in names if n in mx)

    if isa("AuthError"):
        if "token missing" in detail.lower() or "not found in" in detail.lower():
            return CredentialsMissing(NO_CREDENTIALS)
        return CredentialsRejected(
            f"{prefix}Modal rejected the credentials ({detail}): run `modal token new`, "
            "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET to a valid token"
        )
    if isa("PermissionDeniedError"):
        return PermissionDenied(f"{prefix}permission denied by Modal: {detail}")
    if isa("NotFoundError"):
        if "environment" in detail.lower():
            return EnvironmentNotFound(
                f"Modal environment {_env_label(modal_env)} does not exist ({detail}): "
                "check `modal environment list` or the fleet's modal_environment"
            )
        return AppNotFound(f"{prefix}{detail}")
    if isa("ResourceExhaustedError"):
        return CapacityError(
            f"{prefix}Modal refused for lack of quota or capacity ({detail}): "
            "retry later, lower max_containers, or add GPU fallbacks"
        )
    if isa("ImageBuildError"):
        return BuildFailed(f"{prefix}image build failed: {detail}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or isa("TimeoutError"):
        return DeployTimeout(f"{prefix}timed out{': ' + detail if str(exc) else ''}")
    if isa("ConnectionError", "ServiceError") or isinstance(exc, (OSError, ConnectionError)) or _is_grpc_transport(exc):
        return NetworkError(f"{prefix}cannot reach Modal ({detail}): check the network connection and retry")
    if isa("InvalidError", "ConflictError", "AlreadyExistsError"):
        return InvalidRequest(f"{prefix}Modal refused the request: {detail}")
    if isa("Error"):
        return BackendError(f"{prefix}Modal error: {detail}")
    return BackendError(f"{prefix}{type(exc).__name__}: {detail}")


def _modal_exceptions() -> dict[str, type]:
    try:
        import modal.exception as me
    except Exception:  # pragma: no cover - SDK unusable: every error is generic
        return {}
    names = (
        "AuthError",
        "PermissionDeniedError",
        "NotFoundError",
        "ResourceExhaustedError",
        "ImageBuildError",
        "TimeoutError",
        "ConnectionError",
        "ServiceError",
        "InvalidError",
        "ConflictError",
        "AlreadyExistsError",
        "Error",
    )
    return {n: getattr(me, n) for n in names if hasattr(me, n)}


def _is_grpc_transport(exc: BaseException) -> bool:
    try:
        from grpclib.exceptions import StreamTerminatedError
    except Exception:  # pragma: no cover
        return False
    return isinstance(exc, StreamTerminatedError)


# --- what the backend reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One entry of an app's deployment history.

    Modal's `rollback_allowed` flag is not read: Modal's own client never reads it either (`modal
    app rollback` just asks), and the server refuses a rollback it does not allow.
    """

    version: int
    tag: str  # what the version runs: a rollback entry reports the tag of the version it restored
    deployed_at: float | None = None
    rollback_of: int | None = None  # for a rollback entry, the version it restored


@dataclass(frozen=True)
class LiveApp:
    """A deployed app as Modal reports it."""

    name: str
    app_id: str
    modal_env: str | None
    managed: bool  # has the `managed-by: fleetform` App tag
    version: int | None = None  # live version number
    tag: str = ""  # deployment tag of the live version
    url: str | None = None  # the server's URL, when known
    deployed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "app_id": self.app_id,
            "modal_env": self.modal_env,
            "managed": self.managed,
            "version": self.version,
            "tag": self.tag,
            "url": self.url,
        }


@dataclass(frozen=True)
class DeployOutcome:
    app_id: str
    url: str | None = None  # the server's URL; None if Modal did not report one
    dashboard_url: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class EphemeralApp:
    """An ephemeral app started by `Backend.ephemeral`: it lives while its context is open."""

    name: str  # the run's name (`run_name`): never the deployed app's
    app_id: str
    modal_env: str | None
    url: str | None  # the server's URL; None if Modal did not report one
    dashboard_url: str | None = None
    start_seconds: float = 0.0  # app creation, image builds and publishing, until the URL was known
    stopped: bool = False  # set when the context closed and the app was told to stop

    @property
    def stop_command(self) -> str:
        """The command that stops it from any shell (as Modal's own CLI does it)."""
        env = f" --env {self.modal_env}" if self.modal_env else ""
        return f"modal app stop {self.app_id}{env}"


def run_name(app: Module) -> str:
    """The name of an ephemeral run of a rendered module: `NAME-run-<short hash>`. It can never be
    the deployed app's name, and an ephemeral app holds no deployment name anyway (it is only
    the app's description), so a run can neither replace nor collide with the live app."""
    return f"{app.name}-run-{app.short_hash[:8]}"


def deployment_tag(app: Module) -> str:
    """The deployment tag that records which rendered module a version runs."""
    tag = TAG_PREFIX + app.short_hash
    if not _TAG_RE.match(tag):  # cannot happen with a hex hash; guard the Modal rule anyway
        raise InvalidRequest(f"deployment tag {tag!r} is not a valid Modal tag")
    return tag


def effective_tags(history: list[Version]) -> list[Version]:
    """Give every entry the tag of the content it runs: a rollback entry runs the module of the
    version it restored (chains included), whatever tag Modal put on the entry itself.

    Only when the restored version is no longer in the history does an entry keep its own tag.
    """
    by_version = {v.version: v for v in history}

    def tag_of(v: Version, seen: set[int]) -> str:
        if v.rollback_of is None or v.rollback_of in seen:
            return v.tag
        target = by_version.get(v.rollback_of)
        return tag_of(target, seen | {v.version}) if target else v.tag

    return [Version(v.version, tag_of(v, set()), v.deployed_at, v.rollback_of) for v in history]


# --- the interface --------------------------------------------------------------------------------


class Backend(abc.ABC):
    """What the orchestrator needs from a deployment platform. `modal_env` is a Modal environment name
    (None: the configured default)."""

    @abc.abstractmethod
    def credentials_available(self) -> bool:
        """Whether credentials are configured at all (no network): decides live vs offline plan."""

    @abc.abstractmethod
    def list_apps(self, modal_env: str | None) -> list[LiveApp]:
        """Every deployed app in the environment, managed or not."""

    @abc.abstractmethod
    def get_app(self, name: str, modal_env: str | None) -> LiveApp | None:
        """The deployed app with this name, or None."""

    @abc.abstractmethod
    def history(self, name: str, modal_env: str | None) -> list[Version]:
        """The app's deployment history, newest first."""

    @abc.abstractmethod
    def deploy(
        self,
        app: Module,
        modal_env: str | None,
        tag: str,
        *,
        strategy: str | None = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> DeployOutcome:
        """Deploy a rendered module (a deployment's or the gateway's) as app `app.name`, or as app
        `name` (a canary: the same module under `spec.canary_app_name`, as `modal deploy --name`
        does), recording `tag` on the version."""

    @abc.abstractmethod
    def rollback(self, name: str, modal_env: str | None, version: int | None = None) -> None:
        """Make an earlier version live again (None: the one before the live one)."""

    @abc.abstractmethod
    def stop(self, name: str, modal_env: str | None) -> None:
        """Stop the app: its containers terminate and its URL stops answering."""

    @abc.abstractmethod
    def web_url(self, name: str, modal_env: str | None) -> str | None:
        """The URL of the app's server, if it has one."""

    def ephemeral(self, app: RenderedApp, modal_env: str | None) -> contextlib.AbstractContextManager[EphemeralApp]:
        """Start a rendered deployment as an ephemeral app named `run_name(app)`; the context yields
        it once Modal created it and knows its URL, and stops it when the context closes, however
        it closes (an exception, KeyboardInterrupt included, propagates after the stop)."""
        raise InvalidRequest(f"{type(self).__name__} cannot start ephemeral apps")

    def stage(
        self, module: RenderedStage, modal_env: str | None, on_event: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Run a deployment's stage module as an ephemeral app named `run_name(module)` and call its
        `stage` function: each progress event goes to `on_event`, the final `staged` event is
        returned, and a `failed` one raises StageFailed. The app stops when the call ends."""
        raise InvalidRequest(f"{type(self).__name__} cannot stage weights")

    def staged(
        self, volume: str, modal_env: str | None, repos: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], bool]:
        """For each (repository, revision): whether the Volume holds its staging marker, i.e. a stage
        run downloaded and verified that revision there. A missing Volume stages nothing."""
        raise InvalidRequest(f"{type(self).__name__} cannot read staging markers")


# --- credentials ----------------------------------------------------------------------------------


def credentials_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether Modal credentials are configured, by the SDK's own rules, without importing it.

    Order as in `modal.config`: MODAL_TOKEN_ID/MODAL_TOKEN_SECRET (or the OAuth variables) win,
    then the active profile of MODAL_CONFIG_PATH or ~/.modal.toml (MODAL_PROFILE, else the profile
    marked `active`, else "default"). Read afresh on every call, unlike the SDK's import-time copy.
    """
    env = os.environ if environ is None else environ
    if env.get("MODAL_IS_REMOTE") == "1":  # inside a Modal container the platform authenticates us
        return True
    profile = _read_profile(env)

    def setting(key: str) -> str:
        return str(env.get(f"MODAL_{key.upper()}") or profile.get(key) or "")

    if setting("token_id") and setting("token_secret"):
        return True
    return bool(setting("oauth_refresh_token") and setting("oauth_client_id"))


def _read_profile(env: Mapping[str, str]) -> dict[str, Any]:
    home = env.get("HOME") or os.path.expanduser("~")
    path = Path(env.get("MODAL_CONFIG_PATH") or Path(home) / ".modal.toml")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    profiles = {k: v for k, v in data.items() if isinstance(v, dict)}
    name = env.get("MODAL_PROFILE") or next((k for k, v in profiles.items() if v.get("active") is True), "default")
    return profiles.get(name, {})


# --- loading a rendered module --------------------------------------------------------------------

_LOAD_LOCK = threading.Lock()


def module_name(app: Module) -> str:
    """The module name a rendered app is loaded under, locally and in the container.

    Named after the app; the dash guarantees it can never shadow a real Python module
    (a deployment called `json` must not replace the standard library's).
    """
    return f"fleetform-{app.name}"


def load_app(app: Module, directory: str | Path) -> Any:
    """Write the rendered module into `directory`, import it as a fresh module, return its `app`.

    Why a file and not `exec` into an anonymous namespace: Modal decides from the class's module
    how the container will find the code. A module with a `__file__` is mounted and imported by
    name (like `modal deploy file.py`); an anonymous one is treated like notebook code and pickled,
    which ties the container's Python to the local one. The text written is exactly the rendered
    text, so the content hash still describes what runs.
    """
    name = module_name(app)
    path = Path(directory) / f"{name}.py"
    path.write_text(app.text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always has a loader
        raise InvalidRequest(f"cannot load the rendered module for {app.name}")
    module = importlib.util.module_from_spec(spec)
    with _LOAD_LOCK:  # module registration is global state; deploys run in threads
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise translate(exc, action=f"load the rendered module of {app.name}") from exc
    modal_app = getattr(module, "app", None)
    if modal_app is None:
        raise InvalidRequest(f"the rendered module of {app.name} defines no `app`")
    return modal_app


def unload_app(app: Module) -> None:
    with _LOAD_LOCK:
        sys.modules.pop(module_name(app), None)


# --- the real backend -----------------------------------------------------------------------------


class ModalBackend(Backend):
    """The Modal SDK behind the `Backend` interface.

    Deploys go through the public `modal.runner.deploy_app` (its async form, so a timeout can
    cancel it; the SDK then disconnects the half-created app). Reads, rollback and stop use the
    SDK's gRPC stub exactly as the `modal app` CLI does, run on the SDK's own event loop.
    """

    def __init__(self, *, strategy: str = "rolling"):
        if strategy not in STRATEGIES:
            raise InvalidRequest(f"unknown deployment strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        self.strategy = strategy

    # -- plumbing

    def _call(self, fn: Callable[..., Any], *args: Any, modal_env: str | None = None, action: str = "") -> Any:
        """Run an async function on the SDK's event loop, translating every failure."""
        try:
            from modal._utils.async_utils import synchronizer

            async def on_sdk_loop() -> Any:  # create_blocking wants a plain coroutine function
                return await fn(*args)

            return synchronizer.create_blocking(on_sdk_loop)()
        except BackendError:
            raise
        except Exception as exc:
            raise translate(exc, modal_env=modal_env, action=action) from exc

    @staticmethod
    def _environment(modal_env: str | None) -> str:
        from modal.config import config

        return modal_env or config.get("environment") or ""

    # -- reads

    def credentials_available(self) -> bool:
        return credentials_available()

    def list_apps(self, modal_env: str | None) -> list[LiveApp]:
        return self._call(self._list_apps, modal_env, modal_env=modal_env, action="list apps")

    def get_app(self, name: str, modal_env: str | None) -> LiveApp | None:
        return self._call(self._get_app, name, modal_env, modal_env=modal_env, action=f"look up {name}")

    def history(self, name: str, modal_env: str | None) -> list[Version]:
        return self._call(self._history_by_name, name, modal_env, modal_env=modal_env, action=f"history of {name}")

    def web_url(self, name: str, modal_env: str | None) -> str | None:
        return self._call(self._web_url, name, modal_env, modal_env=modal_env, action=f"URL of {name}")

    async def _client(self) -> Any:
        from modal.client import _Client

        return await _Client.from_env()

    async def _list_apps(self, modal_env: str | None) -> list[LiveApp]:
        from modal_proto import api_pb2

        client = await self._client()
        environment = self._environment(modal_env)
        resp = await client._stub.AppList(api_pb2.AppListRequest(environment_name=environment))
        deployed = [a for a in resp.apps if a.state == api_pb2.APP_STATE_DEPLOYED and (a.name or a.description)]
        return list(
            await asyncio.gather(
                *(self._describe(client, a.name or a.description, a.app_id, modal_env) for a in deployed)
            )
        )

    async def _get_app(self, name: str, modal_env: str | None) -> LiveApp | None:
        from modal_proto import api_pb2

        client = await self._client()
        resp = await client._stub.AppGetByDeploymentName(
            api_pb2.AppGetByDeploymentNameRequest(name=name, environment_name=self._environment(modal_env))
        )
        if not resp.app_id:  # set only while an app of that name is deployed (as the `modal app` CLI reads it)
            return None
        return await self._describe(client, name, resp.app_id, modal_env)

    async def _describe(self, client: Any, name: str, app_id: str, modal_env: str | None) -> LiveApp:
        from modal_proto import api_pb2

        tags = await client._stub.AppGetTags(api_pb2.AppGetTagsRequest(app_id=app_id))
        managed = dict(tags.tags).get(MANAGED_TAG_KEY) == MANAGED_TAG_VALUE
        versions, live = await self._history(client, app_id)
        current = next((v for v in versions if v.version == live), versions[0] if versions else None)
        return LiveApp(
            name=name,
            app_id=app_id,
            modal_env=modal_env,
            managed=managed,
            version=current.version if current else None,
            tag=current.tag if current else "",
            deployed_at=current.deployed_at if current else None,
        )

    async def _history(self, client: Any, app_id: str) -> tuple[list[Version], int | None]:
        from modal_proto import api_pb2

        resp = await client._stub.AppDeploymentHistory(api_pb2.AppDeploymentHistoryRequest(app_id=app_id))
        raw = [
            Version(
                version=h.version,
                tag=h.tag,
                deployed_at=h.deployed_at or None,
                rollback_of=h.rollback_version or None,
            )
            for h in resp.app_deployment_histories
        ]
        versions = sorted(effective_tags(raw), key=lambda v: v.version, reverse=True)
        return versions, (resp.production_app_version or None)

    async def _app_id(self, client: Any, name: str, modal_env: str | None) -> str:
        from modal_proto import api_pb2

        resp = await client._stub.AppGetByDeploymentName(
            api_pb2.AppGetByDeploymentNameRequest(name=name, environment_name=self._environment(modal_env))
        )
        if not resp.app_id:
            raise AppNotFound(f"no deployed app named {name} in Modal environment {_env_label(modal_env)}")
        return resp.app_id

    async def _history_by_name(self, name: str, modal_env: str | None) -> list[Version]:
        client = await self._client()
        versions, _ = await self._history(client, await self._app_id(client, name, modal_env))
        return versions

    async def _web_url(self, name: str, modal_env: str | None) -> str | None:
        from modal._functions import _Function
        from modal._server import _Server

        environment = self._environment(modal_env) or None
        url = await _Server.from_name(name, SERVER_NAME, environment_name=environment).get_url()
        if url:  # a deployment's `@app.server`
            return url
        return await _Function.from_name(name, SERVER_NAME, environment_name=environment).get_web_url()  # the gateway

    # -- writes

    def deploy(
        self,
        app: Module,
        modal_env: str | None,
        tag: str,
        *,
        strategy: str | None = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> DeployOutcome:
        name = name or app.name
        action = f"deploy {name}"
        if not _TAG_RE.match(tag):
            raise InvalidRequest(f"{action}: deployment tag {tag!r} is not a valid Modal tag")
        try:
            import modal.runner  # noqa: F401  (also loads `modal`)
        except Exception as exc:
            raise BackendError(f"{action}: the Modal SDK cannot be imported ({_one_line(str(exc))})") from exc
        with tempfile.TemporaryDirectory(prefix="fleetform-deploy-") as tmp:
            modal_app = load_app(app, tmp)
            try:
                return asyncio.run(self._deploy(modal_app, name, modal_env, tag, strategy or self.strategy, timeout))
            except BackendError:
                raise
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    raise DeployTimeout(
                        f"{action}: not finished after {timeout:g}s "
                        "(stopped waiting; Modal cancels a half-built deploy)"
                    ) from exc
                raise translate(exc, modal_env=modal_env, action=action) from exc
            finally:
                unload_app(app)

    async def _deploy(
        self, modal_app: Any, name: str, modal_env: str | None, tag: str, strategy: str, timeout: float | None
    ) -> DeployOutcome:
        import modal
        import modal.runner

        call = modal.runner.deploy_app.aio(
            modal_app, name, environment_name=modal_env, tag=tag, deployment_strategy=strategy
        )
        result = await (asyncio.wait_for(call, timeout) if timeout else call)
        warnings = tuple(_one_line(w) for w in (getattr(result, "warnings", None) or ()))
        url: str | None = None
        try:
            url = await modal.Server.from_name(name, SERVER_NAME, environment_name=modal_env).get_url.aio()
            if not url:  # not an `@app.server`: the gateway's ASGI function
                url = await modal.Function.from_name(name, SERVER_NAME, environment_name=modal_env).get_web_url.aio()
        except Exception as exc:  # the deploy itself succeeded; the smoke test will say no URL
            warnings += (f"could not read the server URL: {_one_line(str(exc))}",)
        return DeployOutcome(
            app_id=result.app_id, url=url, dashboard_url=getattr(result, "app_page_url", None), warnings=warnings
        )

    def rollback(self, name: str, modal_env: str | None, version: int | None = None) -> None:
        self._call(self._rollback, name, modal_env, version, modal_env=modal_env, action=f"roll back {name}")

    async def _rollback(self, name: str, modal_env: str | None, version: int | None) -> None:
        from modal_proto import api_pb2

        client = await self._client()
        app_id = await self._app_id(client, name, modal_env)
        await client._stub.AppRollback(
            api_pb2.AppRollbackRequest(app_id=app_id, version=-1 if version is None else version)
        )

    def ephemeral(self, app: RenderedApp, modal_env: str | None) -> contextlib.AbstractContextManager[EphemeralApp]:
        return _ephemeral(app, modal_env)

    def stop(self, name: str, modal_env: str | None) -> None:
        self._call(self._stop, name, modal_env, modal_env=modal_env, action=f"stop {name}")

    async def _stop(self, name: str, modal_env: str | None) -> None:
        from modal_proto import api_pb2

        client = await self._client()
        app_id = await self._app_id(client, name, modal_env)
        await client._stub.AppStop(api_pb2.AppStopRequest(app_id=app_id, source=api_pb2.APP_STOP_SOURCE_PYTHON_CLIENT))

    # -- staging weights

    def stage(
        self, module: RenderedStage, modal_env: str | None, on_event: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        return _stage(module, modal_env, on_event)

    def staged(
        self, volume: str, modal_env: str | None, repos: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], bool]:
        return self._call(
            self._staged,
            volume,
            modal_env,
            list(repos),
            modal_env=modal_env,
            action=f"read staging markers of {volume}",
        )

    async def _staged(
        self, volume: str, modal_env: str | None, repos: list[tuple[str, str]]
    ) -> dict[tuple[str, str], bool]:
        """One `Volume.listdir` of `fleetform-staged/models--ORG--NAME` per repository (VolumeGetOrCreate
        without create, then VolumeListFiles2): a revision is staged when its marker is listed."""
        import modal.exception
        from modal.volume import _Volume

        from renderer.codegen import staging

        vol = _Volume.from_name(volume, environment_name=self._environment(modal_env) or None)
        found: dict[str, set[str]] = {}
        for repo in dict.fromkeys(r for r, _ in repos):
            try:
                entries = await vol.listdir(staging.marker_folder(repo))
            except modal.exception.NotFoundError as exc:
                if "environment" in str(exc).lower():
                    raise
                entries = []  # no Volume, or nothing of this repository staged on it
            found[repo] = {e.path.rsplit("/", 1)[-1] for e in entries}
        return {(repo, rev): f"{rev}.json" in found[repo] for repo, rev in repos}


# --- ephemeral runs (`fleetform run`) ----------------------------------------------------------------


def _server_url(module: Any) -> str | None:
    """The URL of a rendered deployment's `@app.server` class (`Serve`), hydrated by the running app."""
    server = getattr(module, "Serve", None)
    return server.get_url() if server is not None else None


@contextlib.contextmanager
def _ephemeral(app: RenderedApp, modal_env: str | None) -> Iterator[EphemeralApp]:
    """`ModalBackend.ephemeral`: the SDK's own `App.run()` (what `modal run` uses), blocking form.

    The sequence of Modal calls: AppCreate (state EPHEMERAL, description = the run's name, the
    module's tags), then the objects (images, mounts, volumes, secrets, FunctionPrecreate /
    FunctionCreate of the server), AppPublish (EPHEMERAL), while a heartbeat task sends
    AppHeartbeat every 15 s; the flash URL comes in the server function's handle metadata. Closing
    sends AppClientDisconnect, which stops an ephemeral app and terminates its containers.

    The SDK's `App.run` swallows a KeyboardInterrupt raised inside it (after disconnecting, as
    `modal run` wants); this re-raises it, so Ctrl-C still ends the command.
    """
    import time

    action = f"run {app.name}"
    try:
        import modal.runner  # noqa: F401  (also loads `modal`)
    except Exception as exc:
        raise BackendError(f"{action}: the Modal SDK cannot be imported ({_one_line(str(exc))})") from exc
    interrupted: BaseException | None = None
    from_block = False  # the exception came from the caller's block: it passes through as it is
    run = None
    with tempfile.TemporaryDirectory(prefix="fleetform-run-") as tmp:
        modal_app = load_app(app, tmp)
        module = sys.modules[module_name(app)]
        try:
            t0 = time.monotonic()
            with modal_app.run(name=run_name(app), environment_name=modal_env):
                app_id = modal_app.app_id or ""
                run = EphemeralApp(
                    run_name(app),
                    app_id,
                    modal_env,
                    _server_url(module),
                    dashboard_url=f"https://modal.com/apps/{app_id}" if app_id else None,
                    start_seconds=time.monotonic() - t0,
                )
                try:
                    yield run
                except KeyboardInterrupt as exc:  # App.run would swallow it
                    interrupted = exc
                    raise
                except BaseException:
                    from_block = True
                    raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if from_block:
                raise
            raise translate(exc, modal_env=modal_env, action=action) from exc
        finally:
            if run is not None:
                run.stopped = True
            unload_app(app)
    if interrupted is not None:
        raise interrupted


# --- staging weights (`fleetform stage`, and `deploy` before each GPU app) ------------------------------------


def _stage(module: RenderedStage, modal_env: str | None, on_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`ModalBackend.stage`: the SDK's `App.run()` (as `fleetform run`), then the generator function.

    The sequence of Modal calls: AppCreate (EPHEMERAL, description = the run's name), the objects
    (ImageGetOrCreate of the stage image, VolumeGetOrCreate of the HF cache Volume, SecretGetOrCreate
    per Secret, the module's mount, FunctionPrecreate / FunctionCreate of `stage`), AppPublish, with
    AppHeartbeat meanwhile; then `stage.remote_gen()` (FunctionMap, then the generator's outputs
    streamed back, one progress event each); closing sends AppClientDisconnect, which stops the app.
    """
    action = f"stage {module.deployment.name}"
    try:
        import modal.runner  # noqa: F401  (also loads `modal`)
    except Exception as exc:
        raise BackendError(f"{action}: the Modal SDK cannot be imported ({_one_line(str(exc))})") from exc
    final: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="fleetform-stage-") as tmp:
        modal_app = load_app(module, tmp)
        function = sys.modules[module_name(module)].stage
        try:
            with modal_app.run(name=run_name(module), environment_name=modal_env):
                for event in function.remote_gen():
                    if not isinstance(event, dict):
                        continue
                    if event.get("event") in ("staged", "failed"):
                        final = event
                    else:
                        on_event(event)
        except Exception as exc:
            raise translate(exc, modal_env=modal_env, action=action) from exc
        finally:
            unload_app(module)
    if final is None:
        raise BackendError(f"{action}: the stage function ended without a result")
    if final["event"] == "failed":
        raise StageFailed(f"{action}: {final.get('error') or 'failed'}")
    return final


def default_backend() -> ModalBackend:
    """The backend the CLI uses."""
    return ModalBackend()
