#!/usr/bin/env python3
"""A stand-in for `vllm serve` in tests: the same command line, a few of the same routes.

It parses the real argv the runtime passes (`serve MODEL ... --port N [--middleware X.Y]
[--root-path P] [--lora-modules NAME=PATH ...]`), answers /health after FAKE_VLLM_BOOT_S seconds,
serves a tiny chat completion (and completion) for its served names and adapters, 404 for any other
`model` as vLLM does, and 400 on chat when FAKE_VLLM_NO_CHAT_TEMPLATE is set (a model without one),
and implements sleep mode's /sleep, /wake_up and /is_sleeping. When given `--middleware`, it
imports that ASGI class exactly as vLLM does (from PYTHONPATH) and puts it in front of every
route, so tests prove the guard the runtime installs. The ASGI scope is built as uvicorn and
FastAPI build it (`path` percent-decoded, `raw_path` as sent, `root_path` from --root-path), and
routes are matched as Starlette matches them (exactly, on the path after the root path), so a
path trick that would reach a route in vLLM reaches it here too. Every request is appended to
FAKE_VLLM_LOG as JSON lines, after a first line with its argv and pid.

A streamed chat completion (what `fleetform bench` sends) gets `data:` chunks, a usage chunk and
`[DONE]` as vLLM sends them, with a latency that follows the engine settings on its command line, so
`fleetform tune --engine` has a known answer: a request arriving while more than `--max-num-seqs`
clients are busy waits FAKE_VLLM_QUEUE_MS (50) more for its first token per client beyond it, as vLLM
queues them. The busy clients are the connections that have streamed a chat completion since the
server was last idle (none generating), as tests/openai_server.py counts them: the server speaks
HTTP/1.1 with keep-alive, so a closed-loop client at concurrency c holds c connections for its level
and its load reads c however slowly a loaded machine sends the first requests, where counting the
requests generating at once can stay below c when the last first request arrives after the first
one is done. The first token comes after FAKE_VLLM_TTFT_MS (2), then one every FAKE_VLLM_ITL_MS: a
number, or `SEQS:MS,...` by `--max-num-seqs` (bigger batches, slower tokens). FAKE_VLLM_OUTPUT_TOKENS
(4) tokens, or `max_tokens` with `ignore_eos`. FAKE_VLLM_EXIT_WITH="--flag value" exits at start when the
command line has that flag with that value (a setting vLLM refuses).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

argv = sys.argv[1:]
assert argv[0] == "serve", argv
PORT = int(argv[argv.index("--port") + 1])
MODEL_NAMES = []
if "--served-model-name" in argv:
    i = argv.index("--served-model-name") + 1
    while i < len(argv) and not argv[i].startswith("--"):
        MODEL_NAMES.append(argv[i])
        i += 1
if "--lora-modules" in argv:
    i = argv.index("--lora-modules") + 1
    while i < len(argv) and not argv[i].startswith("--"):
        MODEL_NAMES.append(argv[i].split("=", 1)[0])
        i += 1
BOOT_S = float(os.environ.get("FAKE_VLLM_BOOT_S", "0.2"))
NO_CHAT_TEMPLATE = bool(os.environ.get("FAKE_VLLM_NO_CHAT_TEMPLATE"))
EXIT_EARLY = os.environ.get("FAKE_VLLM_EXIT")  # exit with this code instead of serving
LOG = os.environ.get("FAKE_VLLM_LOG")
ROOT_PATH = argv[argv.index("--root-path") + 1] if "--root-path" in argv else ""
STARTED = time.monotonic()
STATE = {"sleeping": False}
# without the flag, FAKE_VLLM_DEFAULT_SEQS plays vLLM's own default (unset: no queueing at all)
MAX_NUM_SEQS = (
    int(argv[argv.index("--max-num-seqs") + 1])
    if "--max-num-seqs" in argv
    else int(os.environ["FAKE_VLLM_DEFAULT_SEQS"])
    if os.environ.get("FAKE_VLLM_DEFAULT_SEQS")
    else None
)
TTFT_MS = float(os.environ.get("FAKE_VLLM_TTFT_MS", "2"))
QUEUE_MS = float(os.environ.get("FAKE_VLLM_QUEUE_MS", "50"))
OUTPUT_TOKENS = int(os.environ.get("FAKE_VLLM_OUTPUT_TOKENS", "4"))
EXIT_WITH = os.environ.get("FAKE_VLLM_EXIT_WITH", "").split()
LOAD: dict = {"generating": 0, "clients": set()}  # the connections streaming since the server was last idle
LOAD_LOCK = threading.Lock()


def itl_ms() -> float:
    text = os.environ.get("FAKE_VLLM_ITL_MS", "1")
    if ":" not in text:
        return float(text)
    by_seqs = dict(part.split(":") for part in text.split(","))
    return float(by_seqs[str(MAX_NUM_SEQS)])


MIDDLEWARE = None
if "--middleware" in argv:
    module, _, cls = argv[argv.index("--middleware") + 1].rpartition(".")
    MIDDLEWARE = getattr(importlib.import_module(module), cls)


def log(entry: dict) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps(entry) + "\n")


def route(method: str, path: str, body: dict) -> tuple[int, dict]:
    if path == "/health":
        return (200, {}) if time.monotonic() - STARTED >= BOOT_S else (503, {})
    if path == "/v1/models":
        return 200, {"data": [{"id": n} for n in MODEL_NAMES]}
    if path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
        if STATE["sleeping"]:
            return 503, {"error": "asleep"}
        if MODEL_NAMES and body.get("model") not in MODEL_NAMES:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        if path == "/v1/chat/completions" and NO_CHAT_TEMPLATE:
            return 400, {"error": {"message": "default chat template is no longer allowed"}}
        return 200, {"choices": [{"message": {"content": "hello"}}], "usage": {"completion_tokens": 1}}
    if path == "/sleep" and method == "POST":
        STATE["sleeping"] = True
        return 200, {}
    if path == "/wake_up" and method == "POST":
        STATE["sleeping"] = False
        return 200, {}
    if path == "/is_sleeping":
        return 200, {"is_sleeping": STATE["sleeping"]}
    return 404, {"error": "not found"}


def route_path(scope) -> str:
    """Starlette's get_route_path: under a root path, what follows it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (path == root or path[len(root)] == "/"):
        return path[len(root) :]
    return path


async def asgi_inner(scope, receive, send):
    message = await receive()
    try:
        request = json.loads(message.get("body") or b"{}")
    except ValueError:
        request = {}
    status, body = route(scope["method"], route_path(scope), request if isinstance(request, dict) else {})
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


def through_middleware(method: str, path: str, headers: dict[str, str], request: bytes = b"") -> tuple[int, bytes]:
    raw = path.split("?")[0]
    if MIDDLEWARE is None:  # the same routing, without an event loop per request (load tests send many)
        try:
            body = json.loads(request or b"{}")
        except ValueError:
            body = {}
        scope = {"path": urllib.parse.unquote(raw), "root_path": ROOT_PATH}
        status, reply = route(method, route_path(scope), body if isinstance(body, dict) else {})
        return status, json.dumps(reply).encode()
    app = MIDDLEWARE(asgi_inner)
    scope = {
        "type": "http",
        "method": method,
        "path": urllib.parse.unquote(raw),
        "raw_path": raw.encode("latin-1"),
        "root_path": ROOT_PATH,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    out: dict = {}

    async def receive():
        return {"type": "http.request", "body": request, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] = out.get("body", b"") + message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out.get("body", b"")


def stream_chat(handler: BaseHTTPRequestHandler, request: dict) -> None:
    """A streamed chat completion, timed by the load model of the module docstring."""
    n_out = int(request.get("max_tokens") or OUTPUT_TOKENS)
    if not request.get("ignore_eos"):
        n_out = min(n_out, OUTPUT_TOKENS)
    with LOAD_LOCK:
        if LOAD["generating"] == 0:
            LOAD["clients"] = set()
        LOAD["generating"] += 1
        LOAD["clients"].add(handler.client_address)
        load = len(LOAD["clients"])
    extra = max(0, load - MAX_NUM_SEQS) if MAX_NUM_SEQS is not None else 0
    start, ttft, itl = time.monotonic(), (TTFT_MS + extra * QUEUE_MS) / 1000, itl_ms() / 1000
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")  # no length up front, and the connection stays open
    handler.end_headers()

    def send(data: bytes) -> None:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    def event(body: dict) -> bytes:
        return b"data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", **body}).encode()

    try:
        for i in range(n_out):
            time.sleep(max(0.0, start + ttft + i * itl - time.monotonic()))
            delta = {"role": "assistant", "content": "tok "} if i == 0 else {"content": "tok "}
            send(event({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
        usage = {"prompt_tokens": len(json.dumps(request.get("messages")).split()), "completion_tokens": n_out}
    finally:
        with LOAD_LOCK:
            LOAD["generating"] -= 1
    send(event({"choices": [], "usage": usage}) + b"\n\ndata: [DONE]\n\n")
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's uvicorn: every reply has a length or is chunked
    disable_nagle_algorithm = True  # as asyncio's sockets: else each token waits for the last one's ACK

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = self.rfile.read(length) if length else b""
        status, body = through_middleware(method, self.path, dict(self.headers), request)
        entry = {"method": method, "path": self.path, "status": status}
        try:
            entry["model"] = json.loads(request)["model"]
        except (ValueError, KeyError, TypeError):
            pass
        log(entry)
        if status == 200 and self.path == "/v1/chat/completions" and json.loads(request).get("stream"):
            stream_chat(self, json.loads(request))
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # uvicorn's backlog: with socketserver's 5, the 6th of many connects at once waits for the client to
    # send its SYN again, a second of TTFT that no engine setting explains
    request_queue_size = 2048


if __name__ == "__main__":
    if EXIT_EARLY:
        sys.exit(int(EXIT_EARLY))
    if EXIT_WITH and any(argv[i : i + 2] == EXIT_WITH for i in range(len(argv))):
        print(f"fake vllm: refusing {' '.join(EXIT_WITH)}", file=sys.stderr)
        sys.exit(1)
    log(
        {
            "argv": argv,
            "pid": os.getpid(),
            "env_dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE"),
            "pythonpath": os.environ.get("PYTHONPATH"),
        }
    )
    Server(("127.0.0.1", PORT), Handler).serve_forever()
