"""Build a rendered module's Modal objects with the real `modal` package and read their config.

Nothing here talks to Modal. The module is imported as `modal deploy` would import it; then the
Server's function is asked to create itself, with every dependency (image, volumes, secrets)
given a fake object id and the client's gRPC stub replaced by one that records the request. What
comes back is the exact `FunctionCreateRequest` proto Modal's SDK would send: GPU, volumes,
secrets, autoscaler settings, HTTP config, all as the SDK computed them from the decorator.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modal._utils.async_utils import synchronizer
from modal_proto import api_pb2


def import_module(path: Path) -> ModuleType:
    name = f"fleetform_rendered_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


@dataclass
class ServerConfig:
    app_name: str
    app_tags: dict
    request: api_pb2.FunctionCreateRequest
    ids: dict[str, str]  # fake object id -> repr of the object it stands for

    @property
    def ranked(self) -> list[api_pb2.Function]:
        data = self.request.function_data
        return [r.function for r in sorted(data.ranked_functions, key=lambda r: r.rank)]

    @property
    def function(self) -> api_pb2.Function:
        return self.ranked[0]

    @property
    def data(self) -> api_pb2.FunctionData:
        return self.request.function_data

    @property
    def gpus(self) -> list[tuple[str, int]]:
        return [(f.resources.gpu_config.gpu_type, f.resources.gpu_config.count) for f in self.ranked]

    @property
    def volumes(self) -> dict[str, str]:
        """mount path -> repr of the Volume object."""
        return {m.mount_path: self.ids[m.volume_id] for m in self.function.volume_mounts}

    @property
    def secrets(self) -> list[str]:
        return [self.ids[s] for s in self.function.secret_ids]


class _RecordingStub:
    def __init__(self) -> None:
        self.requests: list[api_pb2.FunctionCreateRequest] = []

    async def FunctionCreate(self, request, **_):  # noqa: N802 (gRPC method name)
        self.requests.append(request)
        if not request.HasField("function_data"):  # one GPU type: normalise to the ranked form
            request.function_data.CopyFrom(
                api_pb2.FunctionData(
                    ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=request.function)],
                    autoscaler_settings=request.function.autoscaler_settings,
                    http_config=request.function.http_config,
                    startup_timeout_secs=request.function.startup_timeout_secs,
                    is_server=request.function.is_server,
                    experimental_options=request.function.experimental_options,
                )
            )
        return api_pb2.FunctionCreateResponse(
            function_id="fu-test", function_data=request.function_data, handle_metadata=api_pb2.FunctionHandleMetadata()
        )


def server_config(path: Path) -> ServerConfig:
    return function_config(path, "serve")


def function_config(path: Path, name: str) -> ServerConfig:
    """The FunctionCreateRequest of the module's one function, `name` (a server, or a plain function)."""
    module = import_module(path)
    app = synchronizer._translate_in(module.app)
    functions = app._local_state.functions
    assert list(functions) == [name], f"expected one function named {name!r}, got {list(functions)}"
    fn = functions[name]
    ids: dict[str, str] = {}
    for i, dep in enumerate(fn._deps()):
        object_id = f"id-{i}"
        dep._object_id = object_id
        dep._is_hydrated = True
        ids[object_id] = repr(dep)
    stub = _RecordingStub()

    class _Client:
        _stub = stub

    class _LoadContext:
        client = _Client()
        app_id = "ap-test"
        environment_name = "test"

    asyncio.run(fn._load(fn, None, _LoadContext(), None))
    assert len(stub.requests) == 1
    return ServerConfig(app.name, dict(app._local_state.tags), stub.requests[0], ids)
