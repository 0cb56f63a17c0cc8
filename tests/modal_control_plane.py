"""A small Modal control plane for tests: a gRPC server that the real `modal` client talks to.

It speaks the `modal_proto` messages shipped in the installed modal package, over grpclib (as the
client itself does), on 127.0.0.1 only. It implements just the RPCs fleetform's paths make
(client hello, app lookup/create/publish/list/tags/history/rollback/stop, an ephemeral app's
publish, heartbeats and client disconnect (`App.run`, as `fleetform run` and `stage` use it), function
precreate/create/get, a call of a generator function (FunctionMap, its items and its end: the
stage function, answered by `handlers`), image build, mounts, secrets and volumes lookups, a
Volume's file listing (VolumeListFiles2 of `volume_files`), and the
container list/stop of a `recreate` deploy), keeps state across calls (apps, their deployment
history and containers, the objects the client created) and records every request with its
metadata. Any other RPC is recorded and answered UNIMPLEMENTED, so a new SDK
call shows up as a failed test naming the RPC.

Point the client at it with `MODAL_SERVER_URL=<plane.url>` and the tokens `TOKEN_ID` /
`TOKEN_SECRET`; requests with other tokens are refused as Modal would.

Not modelled: image layers and builds (every image is built at once, so ImageJoinStreaming is never
asked), blob uploads (files over 4 MiB; a rendered module goes inline), what containers do (each
published version adds one "running" container, which only `recreate` and stop remove), logs, and
what the web endpoints answer (a function's URL is whatever `urls` maps its app name to: point it
at a local test server).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

TOKEN_ID = "ak-fleetform-test"
TOKEN_SECRET = "as-fleetform-test"
WORKSPACE = "fleetform-test"
IMAGE_BUILDER_VERSION = "2025.06"


@dataclass
class Request:
    method: str
    message: Any
    metadata: dict[str, str]

    @property
    def environment(self) -> str | None:
        """The Modal environment a request names, for messages that name one (else None).

        An object created anonymously for an app (the mount of the app's own module) names none:
        it lives where its app does.
        """
        fields = self.message.DESCRIPTOR.fields_by_name
        if self.method == "EnvironmentGetOrCreate":
            return self.message.deployment_name
        if (
            "object_creation_type" in fields
            and self.message.object_creation_type == api_pb2.OBJECT_CREATION_TYPE_ANONYMOUS_OWNED_BY_APP
        ):
            return None
        if "environment_name" in fields:
            return self.message.environment_name
        return None


@dataclass
class Version:
    version: int
    tag: str
    function_ids: dict[str, str]  # function name -> function id
    deployed_at: float
    rollback_of: int = 0
    deployment_type: int = api_pb2.DEPLOYMENT_TYPE_STANDARD


@dataclass
class App:
    app_id: str
    name: str
    environment: str
    state: int = api_pb2.APP_STATE_INITIALIZING
    tags: dict[str, str] = field(default_factory=dict)
    history: list[Version] = field(default_factory=list)  # oldest first
    live: int = 0  # the live version number (0: none)
    containers: dict[str, float] = field(default_factory=dict)  # running task id -> when it was enqueued


class ControlPlane:
    """The state and the recorded requests; `start()` serves them on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.apps: dict[str, App] = {}  # app id -> app
        self.functions: dict[str, api_pb2.Function] = {}  # function id -> definition (the first ranked)
        self.function_data: dict[str, api_pb2.FunctionData] = {}  # function id -> as FunctionCreate sent it
        self.objects: dict[tuple[str, str, str], str] = {}  # (kind, environment, name) -> object id
        self.blobs: dict[str, bytes] = {}  # sha256 -> content of an uploaded file
        self.mounts: dict[str, dict[str, str]] = {}  # mount id -> {remote file name: sha256}
        self.urls: dict[str, str] = {}  # app name -> the web URL of its functions
        # (environment, Volume name) -> {path in the Volume: content}: what `Volume.listdir` lists
        self.volume_files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.volume_names: dict[str, tuple[str, str]] = {}  # Volume id -> (environment, name)
        # Function name -> what a call of it yields (a generator function's items), from its definition
        # and arguments; a function without one is refused when called. `stage` is fleetform's stage
        # module: `fake_stage` answers as a successful run would, or fails with `stage_error`.
        self.handlers: dict[str, Callable[[api_pb2.Function, tuple, dict], list[Any]]] = {"stage": self.fake_stage}
        self.stage_error: str | None = None
        self.function_calls: dict[str, tuple[list[Any], str | None]] = {}  # call id -> (items, error)
        self.rollback_tag: Callable[[Version], str] = lambda target: ""  # tag of a rollback's new entry
        self.fail: dict[str, GRPCError] = {}  # method -> error raised instead of answering
        self.delay: dict[str, float] = {}  # method -> seconds to wait before answering (a slow image build)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- running

    def start(self) -> ControlPlane:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = Server([_Servicer(self)])
            self._loop.run_until_complete(self._server.start("127.0.0.1", 0))
            port = self._server._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="modal-control-plane", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test control plane did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return

        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the plane's event loop (e.g. start a test HTTP server beside it)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def env(self) -> dict[str, str]:
        """The variables that point the modal client (in this process or a child) at this plane."""
        return {"MODAL_SERVER_URL": self.url, "MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": TOKEN_SECRET}

    # -- reading what was asked

    def calls(self, *methods: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if not methods or r.method in methods]

    def messages(self, method: str) -> list[Any]:
        return [r.message for r in self.calls(method)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def app(self, name: str, environment: str) -> App | None:
        """The deployed (or stopped) app of that name, the newest if several."""
        found = [a for a in self.apps.values() if a.name == name and a.environment == environment]
        return found[-1] if found else None

    def live_function(self, name: str, environment: str, function: str = "serve") -> api_pb2.Function:
        app = self.app(name, environment)
        assert app is not None and app.live, f"{name} is not deployed in {environment}"
        version = next(v for v in app.history if v.version == app.live)
        while version.rollback_of:
            version = next(v for v in app.history if v.version == version.rollback_of)
        return self.functions[version.function_ids[function]]

    def mounted_files(self, function: api_pb2.Function) -> dict[str, bytes]:
        """Remote file name -> content, of every file uploaded in the function's mounts."""
        return {
            name: self.blobs[sha]
            for mount_id in function.mount_ids
            for name, sha in self.mounts.get(mount_id, {}).items()
            if sha in self.blobs
        }

    def fake_stage(self, function: api_pb2.Function, args: tuple, kwargs: dict) -> list[Any]:
        """What fleetform's stage function yields, without downloading: its module (as mounted) names
        the model, revision and adapters; every repository is reported verified and its marker is
        written on the Volume mounted at the HF cache path (so `Volume.listdir` finds it)."""
        import ast

        constants: dict[str, Any] = {}
        for text in self.mounted_files(function).values():
            for node in ast.parse(text).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    try:
                        constants[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
        if "MODEL_ID" not in constants:
            raise RuntimeError("the stage function's module was not mounted")
        repos = [(constants["MODEL_ID"], constants["MODEL_REVISION"])]
        repos += [(a["id"], a["revision"]) for a in constants.get("LORA_ADAPTERS", [])]
        events: list[Any] = []
        for repo, revision in repos:
            events.append(
                {
                    "event": "start",
                    "repo": repo,
                    "revision": revision,
                    "files": 1,
                    "bytes": 1,
                    "download_files": 1,
                    "download_bytes": 1,
                }
            )
            events.append(
                {"event": "verified", "repo": repo, "revision": revision, "files": 1, "bytes": 1, "downloaded_bytes": 1}
            )
        if self.stage_error:
            return [*events[:1], {"event": "failed", "error": self.stage_error}]
        mount = next(m for m in function.volume_mounts if m.mount_path == constants["HF_CACHE_PATH"])
        files = self.volume_files.setdefault(self.volume_names[mount.volume_id], {})
        markers = []
        for repo, revision in repos:
            marker = {"repo": repo, "revision": revision, "files": 1, "bytes": 1, "verified_at": "now"}
            files[f"fleetform-staged/models--{repo.replace('/', '--')}/{revision}.json"] = json.dumps(marker).encode()
            markers.append(marker)
        return [*events, {"event": "staged", "repos": markers, "downloaded_bytes": len(repos)}]

    # -- state helpers

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):022d}"

    def object_id(self, prefix: str, environment: str, key: str) -> str:
        """The same id for the same named object (a Secret, a Volume, an image...), as Modal gives."""
        with self._lock:
            return self.objects.setdefault((prefix, environment, key), self.new_id(prefix))

    def record(self, method: str, message: Any, metadata: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(Request(method, message, metadata))


# --- the RPCs -------------------------------------------------------------------------------------


class _Servicer(ModalClientBase):
    """Answers the RPCs below; every other one is recorded and refused as UNIMPLEMENTED."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def __mapping__(self) -> dict[str, Any]:
        mapping = super().__mapping__()
        return {path: handler._replace(func=self._wrap(path.rsplit("/", 1)[1])) for path, handler in mapping.items()}

    def _wrap(self, method: str) -> Callable[[Any], Any]:
        impl = getattr(self, "rpc_" + method, None)

        async def serve(stream: Any) -> None:
            request = await stream.recv_message()
            metadata = {k: v for k, v in (stream.metadata or {}).items() if isinstance(v, str)}
            self.plane.record(method, request, metadata)
            if (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret")) != (TOKEN_ID, TOKEN_SECRET):
                raise GRPCError(Status.UNAUTHENTICATED, "Token is invalid")
            if method in self.plane.fail:
                raise self.plane.fail[method]
            if method in self.plane.delay:
                await asyncio.sleep(self.plane.delay[method])
            if impl is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{method} is not served by the test control plane")
            result = impl(request)
            if inspect.isasyncgen(result):
                async for message in result:
                    await stream.send_message(message)
                return
            if inspect.isawaitable(result):
                result = await result
            await stream.send_message(result)

        return serve

    # -- client

    def rpc_ClientHello(self, req: Any) -> Any:
        return api_pb2.ClientHelloResponse()

    # -- apps: reads

    def _apps_in(self, environment: str) -> list[App]:
        return [a for a in self.plane.apps.values() if a.environment == environment]

    def _deployed(self, name: str, environment: str) -> App | None:
        return next(
            (a for a in self._apps_in(environment) if a.name == name and a.state == api_pb2.APP_STATE_DEPLOYED), None
        )

    def _app(self, app_id: str) -> App:
        app = self.plane.apps.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")
        return app

    def rpc_AppList(self, req: Any) -> Any:
        items = [
            api_pb2.AppListResponse.AppListItem(
                app_id=a.app_id,
                name="" if a.state == api_pb2.APP_STATE_INITIALIZING else a.name,
                description=a.name,
                state=a.state,
            )
            for a in self._apps_in(req.environment_name)
        ]
        return api_pb2.AppListResponse(apps=items)

    def rpc_AppGetByDeploymentName(self, req: Any) -> Any:
        app = self._deployed(req.name, req.environment_name)
        if app is not None:
            return api_pb2.AppGetByDeploymentNameResponse(
                app_id=app.app_id,
                environment_name=req.environment_name,
                lifecycle=api_pb2.AppLifecycle(app_state=app.state, version=app.live),
            )
        stopped = [
            a
            for a in self._apps_in(req.environment_name)
            if a.name == req.name and a.state == api_pb2.APP_STATE_STOPPED
        ]
        if stopped:
            return api_pb2.AppGetByDeploymentNameResponse(
                previous_app_id=stopped[-1].app_id,
                environment_name=req.environment_name,
                lifecycle=api_pb2.AppLifecycle(app_state=api_pb2.APP_STATE_STOPPED),
            )
        return api_pb2.AppGetByDeploymentNameResponse(environment_name=req.environment_name)

    def rpc_AppGetTags(self, req: Any) -> Any:
        return api_pb2.AppGetTagsResponse(tags=self._app(req.app_id).tags)

    def rpc_AppDeploymentHistory(self, req: Any) -> Any:
        app = self._app(req.app_id)
        entries = [
            api_pb2.AppDeploymentHistory(
                app_id=app.app_id,
                version=v.version,
                tag=v.tag,
                deployed_at=v.deployed_at,
                rollback_version=v.rollback_of,
                deployment_type=v.deployment_type,
                client_version="test",
            )
            for v in reversed(app.history)
        ]
        return api_pb2.AppDeploymentHistoryResponse(app_deployment_histories=entries, production_app_version=app.live)

    def rpc_AppGetLayout(self, req: Any) -> Any:
        app = self._app(req.app_id)
        live = next((v for v in app.history if v.version == app.live), None)
        function_ids = dict(live.function_ids) if live else {}
        return api_pb2.AppGetLayoutResponse(app_layout=api_pb2.AppLayout(function_ids=function_ids))

    # -- apps: writes

    def rpc_AppCreate(self, req: Any) -> Any:
        app_id = self.plane.new_id("ap")
        self.plane.apps[app_id] = App(app_id, req.description, req.environment_name, tags=dict(req.tags))
        return api_pb2.AppCreateResponse(app_id=app_id, app_page_url=f"https://modal.com/apps/{WORKSPACE}/{app_id}")

    def rpc_AppHeartbeat(self, req: Any) -> Any:
        return empty()

    def rpc_AppClientDisconnect(self, req: Any) -> Any:
        """Stops an app still initializing, and an ephemeral app with its containers (what `modal run`
        relies on: the client going away ends the run); a deployed app goes on."""
        app = self.plane.apps.get(req.app_id)
        if app is not None and app.state in (api_pb2.APP_STATE_INITIALIZING, api_pb2.APP_STATE_EPHEMERAL):
            app.state = api_pb2.APP_STATE_STOPPED
            app.containers.clear()
        return empty()

    def rpc_AppPublish(self, req: Any) -> Any:
        app = self._app(req.app_id)
        if req.app_state == api_pb2.APP_STATE_EPHEMERAL:  # `App.run`: no name, no deployment history
            app.state = req.app_state
            app.containers[self.plane.new_id("ta")] = time.time()
            return api_pb2.AppPublishResponse(url=f"https://modal.com/apps/{WORKSPACE}/{app.app_id}")
        clash = self._deployed(req.name, app.environment)
        if clash is not None and clash.app_id != app.app_id:
            raise GRPCError(Status.ALREADY_EXISTS, f"an app named {req.name} is already deployed")
        app.name, app.state = req.name, req.app_state
        app.tags.update(req.tags)
        now = time.time()
        app.history.append(Version(len(app.history) + 1, req.deployment_tag, dict(req.function_ids), now))
        app.live = len(app.history)
        app.containers[self.plane.new_id("ta")] = now  # the new version's container; older ones keep running
        return api_pb2.AppPublishResponse(
            url=f"https://modal.com/apps/{WORKSPACE}/{app.environment}/{app.name}", deployed_at=now
        )

    def rpc_AppRollback(self, req: Any) -> Any:
        app = self._app(req.app_id)
        if app.state != api_pb2.APP_STATE_DEPLOYED:
            raise GRPCError(Status.FAILED_PRECONDITION, f"App {app.name} is not deployed")
        number = app.live - 1 if req.version == -1 else req.version
        target = next((v for v in app.history if v.version == number), None)
        if target is None or number == app.live:
            raise GRPCError(Status.INVALID_ARGUMENT, f"cannot roll back {app.name} to version {req.version}")
        now = time.time()
        app.history.append(
            Version(
                len(app.history) + 1,
                self.plane.rollback_tag(target),
                dict(target.function_ids),
                now,
                rollback_of=target.version,
                deployment_type=api_pb2.DEPLOYMENT_TYPE_ROLLBACK,
            )
        )
        app.live = len(app.history)
        return api_pb2.AppRollbackResponse(url=f"https://modal.com/apps/{WORKSPACE}/{app.name}", deployed_at=now)

    def rpc_AppStop(self, req: Any) -> Any:
        app = self._app(req.app_id)
        app.state = api_pb2.APP_STATE_STOPPED
        app.containers.clear()
        return empty()

    # -- containers (what `deployment_strategy="recreate"` stops)

    def rpc_TaskList(self, req: Any) -> Any:
        apps = [self._app(req.app_id)] if req.app_id else self._apps_in(req.environment_name)
        return api_pb2.TaskListResponse(
            tasks=[
                api_pb2.TaskStats(task_id=task_id, app_id=a.app_id, enqueued_at=enqueued_at, started_at=enqueued_at)
                for a in apps
                for task_id, enqueued_at in a.containers.items()
            ]
        )

    def rpc_ContainerStop(self, req: Any) -> Any:
        for app in self.plane.apps.values():
            app.containers.pop(req.task_id, None)
        return api_pb2.ContainerStopResponse()

    # -- environments and the objects an app depends on

    def rpc_EnvironmentGetOrCreate(self, req: Any) -> Any:
        name = req.deployment_name
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id=f"en-{name}",
            metadata=api_pb2.EnvironmentMetadata(
                name=name,
                settings=api_pb2.EnvironmentSettings(
                    image_builder_version=IMAGE_BUILDER_VERSION, webhook_suffix="modal.run"
                ),
            ),
        )

    def rpc_SecretGetOrCreate(self, req: Any) -> Any:
        return api_pb2.SecretGetOrCreateResponse(
            secret_id=self.plane.object_id("st", req.environment_name, req.deployment_name)
        )

    def rpc_VolumeGetOrCreate(self, req: Any) -> Any:
        volume_id = self.plane.object_id("vo", req.environment_name, req.deployment_name)
        self.plane.volume_names[volume_id] = (req.environment_name, req.deployment_name)
        return api_pb2.VolumeGetOrCreateResponse(
            volume_id=volume_id,
            version=api_pb2.VOLUME_FS_VERSION_V2,
            metadata=api_pb2.VolumeMetadata(name=req.deployment_name, version=api_pb2.VOLUME_FS_VERSION_V2),
        )

    async def rpc_VolumeListFiles2(self, req: Any) -> Any:
        """The files directly under a folder (or, `recursive`, all below it); NOT_FOUND for a folder
        that holds nothing, as Modal answers for a path that does not exist."""
        files = self.plane.volume_files.get(self.plane.volume_names.get(req.volume_id, ("", "")), {})
        prefix = req.path.strip("/") + "/" if req.path.strip("/") else ""
        below = sorted(p for p in files if p.startswith(prefix))
        if not below:
            raise GRPCError(Status.NOT_FOUND, f"No such file or directory: {req.path}")
        listed = below if req.recursive else sorted({prefix + p[len(prefix) :].split("/", 1)[0] for p in below})
        entries = [
            api_pb2.FileEntry(
                path=p,
                type=api_pb2.FileEntry.FileType.FILE if p in files else api_pb2.FileEntry.FileType.DIRECTORY,
                size=len(files.get(p, b"")),
            )
            for p in listed
        ]
        yield api_pb2.VolumeListFiles2Response(entries=entries)

    def rpc_ImageGetOrCreate(self, req: Any) -> Any:
        image_id = self.plane.object_id("im", "", str(req.image))
        return api_pb2.ImageGetOrCreateResponse(
            image_id=image_id,
            result=api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS),
            metadata=api_pb2.ImageMetadata(python_version_info="3.12.0", image_builder_version=IMAGE_BUILDER_VERSION),
        )

    def rpc_MountBatchedCheckExistence(self, req: Any) -> Any:
        missing = [h for h in req.sha256_hex_hashes if h not in self.plane.blobs]
        return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)

    def rpc_MountPutFile(self, req: Any) -> Any:
        if req.data_blob_id:
            raise GRPCError(Status.UNIMPLEMENTED, "blob uploads (files over 4 MiB) are not served by the test plane")
        self.plane.blobs[req.sha256_hex] = bytes(req.data)
        return api_pb2.MountPutFileResponse(exists=True)

    def rpc_MountGetOrCreate(self, req: Any) -> Any:
        mount_id = self.plane.object_id("mo", req.environment_name, req.deployment_name or str(req.files))
        self.plane.mounts[mount_id] = {f.filename: f.sha256_hex for f in req.files}
        return api_pb2.MountGetOrCreateResponse(mount_id=mount_id)

    # -- functions

    def rpc_FunctionPrecreate(self, req: Any) -> Any:
        function_id = req.existing_function_id or self.plane.new_id("fu")
        return api_pb2.FunctionPrecreateResponse(
            function_id=function_id, handle_metadata=self._handle(req.app_id, req.function_name, function_id)
        )

    def rpc_FunctionCreate(self, req: Any) -> Any:
        function_id = req.existing_function_id or self.plane.new_id("fu")
        if req.HasField("function_data"):  # several GPU types: the ranked form
            data = req.function_data
        else:
            f = req.function
            data = api_pb2.FunctionData(
                ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=f)],
                autoscaler_settings=f.autoscaler_settings,
                http_config=f.http_config,
                startup_timeout_secs=f.startup_timeout_secs,
                is_server=f.is_server,
                experimental_options=f.experimental_options,
                function_name=f.function_name,
                module_name=f.module_name,
                webhook_config=f.webhook_config,
            )
        function = data.ranked_functions[0].function
        self.plane.functions[function_id] = function
        self.plane.function_data[function_id] = data
        return api_pb2.FunctionCreateResponse(
            function_id=function_id,
            function_data=data,
            handle_metadata=self._handle(req.app_id, function.function_name, function_id),
        )

    def rpc_FunctionGet(self, req: Any) -> Any:
        app = self._deployed(req.app_name, req.environment_name)
        live = next((v for v in app.history if v.version == app.live), None) if app else None
        if live is None or req.object_tag not in live.function_ids:
            raise GRPCError(
                Status.NOT_FOUND,
                f"Lookup failed for Function '{req.object_tag}' from the "
                f"'{req.app_name}' app: app not found in environment "
                f"'{req.environment_name}'",
            )
        function_id = live.function_ids[req.object_tag]
        return api_pb2.FunctionGetResponse(
            function_id=function_id,
            function=self.plane.function_data[function_id],
            handle_metadata=self._handle(app.app_id, req.object_tag, function_id),
        )

    # -- calling a function (`Function.remote_gen`, as `fleetform stage` calls the stage function)

    def rpc_FunctionMap(self, req: Any) -> Any:
        """Runs the function's handler at once; its items wait for FunctionCallGetDataOut, its end
        (GeneratorDone, or the failure) for FunctionGetOutputs."""
        import pickle

        function = self.plane.functions[req.function_id]
        handler = self.plane.handlers.get(function.function_name)
        if handler is None:
            raise GRPCError(Status.UNIMPLEMENTED, f"no handler for function {function.function_name}")
        item = req.pipelined_inputs[0]
        args, kwargs = pickle.loads(item.input.args) if item.input.args else ((), {})
        call_id = self.plane.new_id("fc")
        try:
            self.plane.function_calls[call_id] = (list(handler(function, args, kwargs)), None)
        except Exception as exc:
            self.plane.function_calls[call_id] = ([], f"{type(exc).__name__}: {exc}")
        return api_pb2.FunctionMapResponse(
            function_call_id=call_id,
            function_call_jwt=f"jwt-{call_id}",
            pipelined_inputs=[api_pb2.FunctionPutInputsResponseItem(idx=0, input_id=f"in-{call_id}", input_jwt="jwt")],
        )

    async def rpc_FunctionCallGetDataOut(self, req: Any) -> Any:
        """The generator's items after `last_index`, then an open stream (the client closes it once
        FunctionGetOutputs said how many there are; a closed one it would ask again at once)."""
        import pickle

        items, _ = self.plane.function_calls[req.function_call_id]
        for index, value in enumerate(items, start=1):
            if index > req.last_index:
                yield api_pb2.DataChunk(data_format=api_pb2.DATA_FORMAT_PICKLE, data=pickle.dumps(value), index=index)
        await asyncio.sleep(3600)

    def rpc_FunctionGetOutputs(self, req: Any) -> Any:
        items, error = self.plane.function_calls[req.function_call_id]
        if error is not None:
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=error)
            data_format = api_pb2.DATA_FORMAT_UNSPECIFIED
        else:
            done = api_pb2.GeneratorDone(items_total=len(items)).SerializeToString()
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS, data=done)
            data_format = api_pb2.DATA_FORMAT_GENERATOR_DONE
        output = api_pb2.FunctionGetOutputsItem(
            result=result, idx=0, input_id=f"in-{req.function_call_id}", data_format=data_format
        )
        return api_pb2.FunctionGetOutputsResponse(outputs=[output], num_unfinished_inputs=0)

    def _handle(self, app_id: str, name: str, function_id: str) -> Any:
        """A function's metadata: its URL is a server's flash URL, or an ASGI function's web URL."""
        app = self._app(app_id)
        function = self.plane.functions.get(function_id)
        url = self.plane.urls.get(app.name, f"https://{WORKSPACE}-{app.environment}--{app.name}-{name}.modal.run")
        server = function is not None and function.is_server
        web = function is not None and bool(function.webhook_config.type)  # the gateway's ASGI function
        return api_pb2.FunctionHandleMetadata(
            function_name=name,
            function_type=function.function_type if function is not None else api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            definition_id=f"de-{function_id}",
            web_url=url if web else "",
            _experimental_flash_urls=[url] if server else [],
            app_id=app_id,
        )


def empty() -> Any:
    from google.protobuf import empty_pb2

    return empty_pb2.Empty()


def _abstract(name: str) -> Callable[..., Any]:
    async def method(self: Any, stream: Any) -> None:  # replaced by _wrap; here to satisfy the ABC
        raise GRPCError(Status.UNIMPLEMENTED, name)

    return method


for _name in list(ModalClientBase.__abstractmethods__):
    setattr(_Servicer, _name, _abstract(_name))
_Servicer.__abstractmethods__ = frozenset()
