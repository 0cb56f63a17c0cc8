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
FAKE_VLLM_LOG as JSON lines.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
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
    app = MIDDLEWARE(asgi_inner) if MIDDLEWARE else asgi_inner
    raw = path.split("?")[0]
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


class Handler(BaseHTTPRequestHandler):
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


if __name__ == "__main__":
    if EXIT_EARLY:
        sys.exit(int(EXIT_EARLY))
    log(
        {
            "argv": argv,
            "env_dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE"),
            "pythonpath": os.environ.get("PYTHONPATH"),
        }
    )
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
