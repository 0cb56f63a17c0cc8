#!/usr/bin/env python3
"""The gateway's own relay loop per event, in-process: `GatewayApp._proxy` fed by a fake upstream response
(no sockets, no HTTP parsing) into a no-op ASGI `send`, so only the loop's own work is timed. Compares two
versions of `gateway_app.py`, interleaved, on the same machine; prints the median of 7 runs per content type.

    python benchmarks/gateway_relay.py OLD/gateway_app.py [NEW/gateway_app.py]

The whole cost of an event through a real server (aiohttp client, uvicorn, sockets) is
benchmarks/gateway_load.py's; this one isolates what a change to the loop adds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path

CURRENT = Path(__file__).resolve().parent.parent / "renderer" / "codegen" / "gateway_app.py"
DELTA = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": " token"}, "logprobs": None, "finish_reason": None}],
}
EVENT = (b"data: " + json.dumps(DELTA).encode() + b"\n\n").ljust(250)  # as gateway_load.py's upstream sends


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Content:
    def __init__(self, events: int) -> None:
        self.left = events

    async def readany(self) -> bytes:
        if self.left:
            self.left -= 1
            return EVENT
        return b""


class _Response:
    status = 200

    def __init__(self, events: int, content_type: str) -> None:
        self.content = _Content(events)
        self.headers = {"content-type": content_type}

    def release(self) -> None:
        pass


async def per_event(module, streams: int, events: int, content_type: str) -> float:
    app = module.GatewayApp({"m": module.Upstream("u", "http://x", "none")}, environ={})

    async def connect(upstream, scope, req):
        return _Response(events, content_type)

    async def send(message) -> None:
        pass

    app._connect = connect
    started = time.perf_counter()
    for _ in range(streams):
        await app._proxy(app.routes["m"], {}, send, module._Request(time.monotonic()), [])
    return (time.perf_counter() - started) / (streams * events)


def main() -> None:
    paths = {"old": sys.argv[1], "new": sys.argv[2] if len(sys.argv) > 2 else str(CURRENT)}
    modules = {label: load(path, f"gateway_app_{label}") for label, path in paths.items()}
    for content_type in ("text/event-stream", "application/json"):
        runs: dict[str, list[float]] = {label: [] for label in modules}
        for _ in range(7):
            for label, module in modules.items():
                runs[label].append(asyncio.run(per_event(module, 200, 500, content_type)))
        shown = ", ".join(f"{label} {sorted(r)[3] * 1e6:.2f} us" for label, r in runs.items())
        print(f"{content_type}: relay loop per event (median of 7): {shown}")


if __name__ == "__main__":
    main()
