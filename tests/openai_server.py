"""A small OpenAI-compatible server (the parts of vLLM's API fleetform uses).

The client tests need a server whose timing is known in advance (so metric math
can be checked against it) and whose failures can be switched on at will (so
every error path is exercised offline). This module provides:

* ``make_app(config)``: an ``aiohttp.web`` app serving ``/health``,
  ``/v1/models`` and ``/v1/chat/completions`` (streaming and not);
* ``serve(config)``: an async context manager that runs it on 127.0.0.1 on a
  free port and yields a :class:`RunningServer` (URL, recorded requests,
  ``kill()``);
* a ``__main__`` entry point that serves it from a separate process (used by
  ``benchmarks/client_throughput.py`` so the server does not share the
  client's CPU core).

Timing: the first token is sent ``ttft_ms`` after the request arrives, then one
token every ``itl_ms`` (scheduled against absolute times, so no drift). With a
``knee``, both grow with the client connections busy beyond it (``ServerConfig.latency_at``),
so a concurrency search has a known answer: the knee. A
request gets ``output_tokens`` tokens, capped by its ``max_tokens``; with
``ignore_eos`` it gets exactly ``max_tokens``. Usage is reported with
``prompt_tokens`` = number of whitespace-separated words in the messages.

Like vLLM, the stream opens with a role chunk sent together with the first
token, every chunk has ``object == "chat.completion.chunk"``, the usage comes
in a last chunk with empty ``choices`` when ``stream_options.include_usage`` is
set, and the stream ends with ``data: [DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web


class Fault(str, Enum):
    """Failure a chat completion request can be made to suffer."""

    NONE = "none"
    SERVER_ERROR = "server_error"  # HTTP 500 with an OpenAI-style error body
    TRUNCATE = "truncate"  # stream stops cleanly but without `data: [DONE]`
    BAD_JSON = "bad_json"  # one chunk is not valid JSON (non-stream: the body)
    HANG = "hang"  # stop sending, keep the connection open
    STREAM_ERROR = "stream_error"  # vLLM-style `data: {"error": ...}` event mid-stream


@dataclass
class ServerConfig:
    """Behaviour of the test server; mutable so tests can flip faults live."""

    models: list[str] = field(default_factory=lambda: ["test-model"])
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    output_tokens: int = 8
    # If set, every route answers 401 unless all these headers match.
    require_headers: dict[str, str] | None = None
    fault: Fault = Fault.NONE
    # The fault hits chat requests number k * fault_every (1-based): 1 = all.
    fault_every: int = 1
    # Stream faults strike after this many tokens were sent.
    fault_after_tokens: int = 2
    # After this many chat requests, the next one kills the server: the
    # listening socket closes and every open connection is aborted.
    die_after: int | None = None
    # /health answers 503 this many times before answering 200.
    health_failures: int = 0
    # Upper bound on a HANG, so a broken test cannot wedge the suite.
    max_hang_s: float = 10.0
    # Send every stream write in two halves a moment apart, so events (and
    # lines) straddle network reads.
    split_writes: bool = False
    # Send the usage chunk when the request asks for it (False: never).
    report_usage: bool = True
    # Keep each chat request body in RunningServer.requests (off for speed).
    record_requests: bool = True
    # Text of token i (str.format with i): tests put markup-like text here to check it prints as sent.
    token_text: str = "tok{i} "
    # Latency that degrades with load: the load is the connections that have sent a chat request since the
    # server was last idle (none generating). A closed-loop level at concurrency c keeps c connections
    # alive, so it reads c however slowly a loaded machine sends their first requests (the most requests
    # generating at once can stay below c), never more, and levels drain in between. Beyond `knee` each
    # connection adds `ttft_ms_per_extra` of TTFT and `itl_ms_per_extra` of ITL to a request arriving now.
    # None: no load model, latency is constant.
    knee: int | None = None
    ttft_ms_per_extra: float = 0.0
    itl_ms_per_extra: float = 0.0
    # Prometheus text for GET /metrics (a stand-in for the fleet gateway's); None: no such route (404).
    metrics_text: str | None = None

    def latency_at(self, load: int) -> tuple[float, float]:
        """(TTFT, ITL) in ms for a request arriving at a load of `load` connections (its own included)."""
        extra = max(0, load - self.knee) if self.knee is not None else 0
        return self.ttft_ms + extra * self.ttft_ms_per_extra, self.itl_ms + extra * self.itl_ms_per_extra


@dataclass
class ServerState:
    """What the server saw; shared by the handlers and the test."""

    config: ServerConfig
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    chat_count: int = 0
    health_count: int = 0
    metrics_count: int = 0
    in_flight: int = 0  # chat requests being answered now
    # Chat requests still generating: a request leaves before its last write, so a closed-loop client's next
    # request finds the server idle when it was the only one (the load model starts a new count there).
    generating: int = 0
    clients: set[Any] = field(default_factory=set)  # the connections (peer addresses) since last idle
    max_in_flight: int = 0
    dead: bool = False
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    site: web.BaseSite | None = None

    async def kill(self) -> None:
        """Die like a crashed process: refuse new connections, drop open ones."""
        if self.dead:
            return
        self.dead = True
        if self.site is not None:
            await self.site.stop()
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()


STATE = web.AppKey("state", ServerState)


def _error(status: int, message: str, err_type: str) -> web.Response:
    """An error body shaped like vLLM's (OpenAI's) ``{"error": {...}}``."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return web.json_response(body, status=status)


@web.middleware
async def _gatekeeper(request: web.Request, handler: Any) -> web.StreamResponse:
    """Track connections (for kill) and enforce the configured auth headers."""
    state = request.app[STATE]
    if state.config.die_after is not None and request.transport is not None:
        state.transports.add(request.transport)
    required = state.config.require_headers
    if required and any(request.headers.get(k) != v for k, v in required.items()):
        return _error(401, "missing or invalid credentials", "AuthenticationError")
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.health_count += 1
    if state.health_count <= state.config.health_failures:
        return web.Response(status=503, text="engine starting")
    return web.Response(status=200)


async def _metrics(request: web.Request) -> web.Response:
    text = request.app[STATE].config.metrics_text
    if text is None:
        raise web.HTTPNotFound()
    request.app[STATE].metrics_count += 1
    return web.Response(text=text, content_type="text/plain")


async def _models(request: web.Request) -> web.Response:
    created = int(time.time())
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": "vllm", "root": m}
        for m in request.app[STATE].config.models
    ]
    return web.json_response({"object": "list", "data": data})


def _prompt_tokens(messages: Any) -> int:
    """Word count of all message contents: a stand-in for a tokenizer."""
    total = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content", "") if isinstance(message, dict) else ""
        total += len(str(content).split())
    return total


def _output_tokens(config: ServerConfig, body: dict[str, Any]) -> int:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens and body.get("ignore_eos"):
        return int(max_tokens)
    return min(config.output_tokens, int(max_tokens or config.output_tokens))


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _hang(state: ServerState) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.closing.wait(), state.config.max_hang_s)


def _chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    chunk = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "request body is not valid JSON", "BadRequestError")
    model = body.get("model")
    if model not in config.models:
        return _error(404, f"The model `{model}` does not exist.", "NotFoundError")

    state.chat_count += 1
    index = state.chat_count
    if config.die_after is not None and index > config.die_after:
        await state.kill()
        return web.Response(status=500)  # never delivered: the connection is gone
    if config.record_requests:
        state.requests.append(body)
        state.headers.append(dict(request.headers))

    fault = config.fault if index % max(config.fault_every, 1) == 0 else Fault.NONE
    if fault is Fault.SERVER_ERROR:
        return _error(500, "simulated engine failure", "InternalServerError")
    n_out = _output_tokens(config, body)
    n_in = _prompt_tokens(body.get("messages"))
    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    if state.generating == 0:
        state.clients = set()
    state.generating += 1
    state.clients.add(request.transport.get_extra_info("peername") if request.transport else None)
    ttft_ms, itl_ms = config.latency_at(len(state.clients))
    done = _Done(state)
    try:
        if body.get("stream"):
            return await _stream(request, body, n_in, n_out, fault, ttft_ms, itl_ms, done)
        return await _complete(request, body, n_in, n_out, fault, ttft_ms, itl_ms, done)
    finally:
        done()
        state.in_flight -= 1


class _Done:
    """Take a request out of `ServerState.generating`, once."""

    def __init__(self, state: ServerState) -> None:
        self.state: ServerState | None = state

    def __call__(self) -> None:
        if self.state is not None:
            self.state.generating -= 1
            self.state = None


async def _complete(
    request: web.Request,
    body: dict[str, Any],
    n_in: int,
    n_out: int,
    fault: Fault,
    ttft_ms: float,
    itl_ms: float,
    done: _Done,
) -> web.Response:
    state = request.app[STATE]
    config = state.config
    start = asyncio.get_running_loop().time()
    if fault is Fault.HANG:
        await _hang(state)
        return web.Response(status=500)
    await _sleep_until(start + (ttft_ms + max(n_out - 1, 0) * itl_ms) / 1000)
    done()
    if fault is Fault.BAD_JSON:
        return web.Response(text='{"id": "chatcmpl-1", "choices": [', content_type="application/json")
    text = "".join(config.token_text.format(i=i) for i in range(n_out))
    reply = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }
    return web.json_response(reply)


async def _stream(
    request: web.Request,
    body: dict[str, Any],
    n_in: int,
    n_out: int,
    fault: Fault,
    ttft_ms: float,
    itl_ms: float,
    done: _Done,
) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    start = asyncio.get_running_loop().time()
    rid, model, created = f"chatcmpl-{state.chat_count}", body["model"], int(time.time())
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    batch = itl_ms <= 0  # zero delays: one write, so the server stays cheap
    pending: list[bytes] = []
    try:
        for i in range(n_out):
            if not batch:
                await _sleep_until(start + (ttft_ms + i * itl_ms) / 1000)
            elif i == 0 and ttft_ms > 0:
                await _sleep_until(start + ttft_ms / 1000)
            if fault is not Fault.NONE and i == config.fault_after_tokens:
                await resp.write(b"".join(pending))
                return await _strike(state, resp, fault)
            if i == 0:
                pending.append(_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
            finish = "length" if i == n_out - 1 else None
            pending.append(_chunk(rid, model, created, {"content": config.token_text.format(i=i)}, finish))
            if not batch:
                await _write(resp, b"".join(pending), config.split_writes)
                pending.clear()
        if config.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
            last = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            pending.append(b"data: " + json.dumps(last).encode() + b"\n\n")
        pending.append(b"data: [DONE]\n\n")
        done()
        await _write(resp, b"".join(pending), config.split_writes)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away (timeout) or the server was killed
    return resp


async def _write(resp: web.StreamResponse, data: bytes, split: bool) -> None:
    if split and len(data) > 1:
        half = len(data) // 2
        await resp.write(data[:half])
        await asyncio.sleep(0.002)
        data = data[half:]
    await resp.write(data)


async def _strike(state: ServerState, resp: web.StreamResponse, fault: Fault) -> web.StreamResponse:
    """Break an open stream the configured way."""
    if fault is Fault.BAD_JSON:
        await resp.write(b'data: {"id": "chatcmpl-x", "object": "chat.completion.chunk", "choi\n\n')
    elif fault is Fault.HANG:
        await _hang(state)
        return resp
    elif fault is Fault.STREAM_ERROR:
        error = {"error": {"message": "simulated engine crash", "type": "InternalServerError", "code": 500}}
        await resp.write(b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n")
    # TRUNCATE (and after BAD_JSON): finish the HTTP response without [DONE].
    await resp.write_eof()
    return resp


def make_app(config: ServerConfig) -> web.Application:
    """Build the app; its state (``app[STATE]``) records what it served."""
    app = web.Application(middlewares=[_gatekeeper])
    app[STATE] = ServerState(config=config)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/chat/completions", _chat)
    return app


@dataclass
class RunningServer:
    """Handle on a started test server."""

    url: str
    state: ServerState

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.state.requests

    async def kill(self) -> None:
        await self.state.kill()


@contextlib.asynccontextmanager
async def serve(config: ServerConfig | None = None, port: int = 0) -> AsyncIterator[RunningServer]:
    """Run the app on 127.0.0.1 (a free port by default) for the block's duration."""
    app = make_app(config or ServerConfig())
    state = app[STATE]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        state.site = site
        host, bound = runner.addresses[0][:2]
        yield RunningServer(url=f"http://{host}:{bound}", state=state)
    finally:
        state.closing.set()
        await runner.cleanup()


async def _main(args: argparse.Namespace) -> None:
    config = ServerConfig(
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        output_tokens=args.output_tokens,
        record_requests=False,
        knee=args.knee,
        ttft_ms_per_extra=args.ttft_ms_per_extra,
        itl_ms_per_extra=args.itl_ms_per_extra,
        **({"models": args.model} if args.model else {}),
        **({"token_text": args.token_text} if args.token_text else {}),
    )
    async with serve(config, port=args.port) as server:
        print(server.url, flush=True)
        # Serve until stdin closes, so the parent can stop us without signals.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _wait_stdin_eof)


def _wait_stdin_eof() -> None:
    import sys

    while sys.stdin.read(4096):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run the OpenAI-compatible test server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--model", action="append", help="a served model name (repeatable)")
    parser.add_argument("--token-text", help="text of token i, e.g. 'tok{i} '")
    parser.add_argument("--knee", type=int, help="client connections busy beyond which latency grows")
    parser.add_argument("--ttft-ms-per-extra", type=float, default=0.0, help="TTFT added per connection beyond --knee")
    parser.add_argument("--itl-ms-per-extra", type=float, default=0.0, help="ITL added per connection beyond --knee")
    asyncio.run(_main(parser.parse_args()))
