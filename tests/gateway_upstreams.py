"""Small OpenAI-compatible upstreams for the gateway tests: `aiohttp.web` on 127.0.0.1, in-process.

Each upstream answers chat completions (streamed or not), completions and embeddings with bodies
that name the upstream, records every request it gets (path, headers, body), and can be told to
answer 503 to its first requests (a Modal container that is not ready yet), to require headers
(proxy auth or a Bearer key), and to space its stream's chunks in time. Every streamed chunk
carries the `time.monotonic()` at which it was written, so a test in the same process can tell
when each chunk left the upstream and when the gateway forwarded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class UpstreamConfig:
    name: str
    models: list[str] = field(default_factory=lambda: ["test-model"])
    chunks: int = 3  # tokens of a streamed chat completion
    chunk_interval: float = 0.0  # seconds between streamed chunks
    fail_first: int = 0  # answer 503 to this many requests before serving
    require_headers: dict[str, str] = field(default_factory=dict)  # else 401
    die_after_chunks: int | None = None  # drop the connection after this many streamed chunks
    answer_delay: float = 0.0  # seconds a non-streamed answer takes (a long generation)
    # Non-streamed chat answers break off after this many bytes: with their Content-Length announced
    # ("length") or chunked ("chunked"); None: answered whole.
    break_json_after: int | None = None
    break_mode: str = "length"


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class RunningUpstream:
    config: UpstreamConfig
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    stream_finished: int = 0
    stream_aborted: int = 0  # streams whose caller went away before the end
    aborted: asyncio.Event = field(default_factory=asyncio.Event)


def free_port() -> int:
    """A port nobody listens on right now (for an upstream that starts later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "upstream_test", "param": None, "code": status}}, status=status
    )


def make_app(state: RunningUpstream) -> web.Application:
    cfg = state.config

    @web.middleware
    async def record(request: web.Request, handler):
        body = await request.read()
        state.requests.append(
            Recorded(
                request.method,
                request.path,
                request.query_string,
                {k.lower(): v for k, v in request.headers.items()},
                body,
            )
        )
        if cfg.fail_first > 0:
            cfg.fail_first -= 1
            return _error(503, "container starting")
        for name, value in cfg.require_headers.items():
            if request.headers.get(name) != value:
                return _error(401, f"missing or wrong {name}")
        return await handler(request)

    async def chat(request: web.Request) -> web.StreamResponse:
        data = json.loads(await request.read())
        if not data.get("stream"):
            await asyncio.sleep(cfg.answer_delay)
            answer = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": data["model"],
                "upstream": cfg.name,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"hello from {cfg.name} " + "x" * 2000},
                    }
                ],
            }
            if cfg.break_json_after is None:
                return web.json_response(answer)
            raw = json.dumps(answer).encode()
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            if cfg.break_mode == "length":
                resp.content_length = len(raw)
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(raw[: cfg.break_json_after])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # the container died mid-answer
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for i in range(cfg.chunks):
                if i:
                    await asyncio.sleep(cfg.chunk_interval)
                chunk = {
                    "object": "chat.completion.chunk",
                    "model": data["model"],
                    "upstream": cfg.name,
                    "index": i,
                    "sent_at": time.monotonic(),
                    "choices": [{"index": 0, "delta": {"content": f"t{i} "}}],
                }
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if cfg.die_after_chunks is not None and i + 1 >= cfg.die_after_chunks:
                    assert request.transport is not None
                    request.transport.abort()  # the container died mid-answer
                    return resp
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            state.stream_aborted += 1
            state.aborted.set()
            raise
        state.stream_finished += 1
        return resp

    async def completions(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": data["model"],
                "upstream": cfg.name,
                "choices": [{"index": 0, "text": f"from {cfg.name}"}],
            }
        )

    async def embeddings(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        return web.json_response(
            {
                "object": "list",
                "model": data["model"],
                "upstream": cfg.name,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
            }
        )

    async def echo(request: web.Request) -> web.Response:
        """Every other route: says which path and body it got."""
        body = await request.read()
        return web.json_response(
            {
                "upstream": cfg.name,
                "path": request.path,
                "bytes": len(body),
                "content_type": request.headers.get("Content-Type", ""),
            }
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in cfg.models]})

    app = web.Application(middlewares=[record])
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/{tail:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def serve_upstream(config: UpstreamConfig, port: int = 0) -> AsyncIterator[RunningUpstream]:
    """Run one upstream on 127.0.0.1 (`port` 0: any free port) until the block ends."""
    state = RunningUpstream(config)
    runner = web.AppRunner(make_app(state), shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, bound = runner.addresses[0][:2]
        state.url = f"http://{host}:{bound}"
        yield state
    finally:
        await runner.cleanup()
