"""Start-up logic for one vLLM server process, shared by every rendered app and `fleetform serve --local`.

`fleetform render` copies this file's sections, verbatim, into each generated Modal module (the
imports they use go to the module's top), and `fleetform serve --local` imports it: both start
vLLM, wait for it and stop it through the same code, so a local run proves the one on Modal. It
must therefore use the standard library only.

Each section starts with a line `# ---- NAME: what it does ---`. `process` goes into every module;
`snapshot` only into those of `cold_start: snapshot`, and nothing in `process` may use it.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# ---- process: start vLLM without a shell, wait until it is healthy, stop it ------------------------------

# The ASGI middleware that fences vLLM's development routes (the snapshot section installs it).
GUARD_MODULE = "fleetform_guard"
GUARD_MIDDLEWARE = GUARD_MODULE + ".DevRouteGuard"


class ServerExited(RuntimeError):
    """The vLLM process ended before it became healthy."""


class StartupTimeout(RuntimeError):
    """The vLLM process did not answer /health in time."""


class VLLMProcess:
    """One `vllm serve` process: start it, wait until it is healthy, send it requests, stop it."""

    def __init__(self, argv, port, env=None, log=print):
        self.argv = [str(a) for a in argv]  # a list, run without a shell: nothing in it is interpreted
        self.port = int(port)
        self.env = dict(env or {})  # on top of this process's environment
        self.headers = {}  # sent with every request this process makes to vLLM
        self.log = log
        self.proc = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self):
        env = {**os.environ, **self.env}
        if env.get("VLLM_SERVER_DEV_MODE", "0") not in ("", "0") and GUARD_MIDDLEWARE not in self.argv:
            # dev mode serves /sleep, /wake_up, /collective_rpc ... to anyone unless the guard is loaded
            raise RuntimeError(f"VLLM_SERVER_DEV_MODE is set but vLLM would not load {GUARD_MIDDLEWARE}: not starting")
        self.log("starting: " + " ".join(self.argv))
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=env)
        return self.proc

    def stop(self, grace=30.0):
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def request(self, method, path, body=None, timeout=60.0):
        """(status, parsed JSON or text) of one request to the server."""
        headers = {"Content-Type": "application/json", **self.headers}
        key = self.env.get("VLLM_API_KEY") or os.environ.get("VLLM_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read().decode(errors="replace")
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def healthy(self):
        try:
            return self.request("GET", "/health", timeout=5.0)[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout, interval=1.0):
        """Poll /health until it answers 200. Returns the seconds since start()."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerExited(f"vLLM exited with code {self.proc.returncode} before it became healthy")
            if self.healthy():
                elapsed = time.monotonic() - self.started_at
                self.log(f"healthy after {elapsed:.1f} s")
                return elapsed
            if time.monotonic() > deadline:
                raise StartupTimeout(f"vLLM did not answer /health within {timeout:.0f} s")
            time.sleep(interval)


def _has_revision(folder, revision):
    """Whether `folder` holds an adapter fetched at `revision` (its marker file says so)."""
    try:
        with open(os.path.join(folder, ".fleetform-revision")) as fh:
            return fh.read().strip() == revision
    except OSError:
        return False


def fetch_adapters(adapters, log=print):
    """Download each LoRA adapter at its pinned revision into its folder, unless already there.

    `adapters` are dicts with name, id, revision and path (the folder vLLM's --lora-modules names).
    A marker file records the revision, so a folder is trusted only for the commit it was made for.
    """
    for a in adapters:
        if _has_revision(a["path"], a["revision"]):
            continue
        # in the vLLM image, and needed only with adapters
        from huggingface_hub import snapshot_download

        t0 = time.monotonic()
        snapshot_download(repo_id=a["id"], revision=a["revision"], local_dir=a["path"])
        with open(os.path.join(a["path"], ".fleetform-revision"), "w") as fh:
            fh.write(a["revision"])
        log(f"fetched adapter {a['name']} ({a['id']}@{a['revision'][:7]}) in {time.monotonic() - t0:.1f} s")


def boot(proc, timeout, adapters=(), warm=()):
    """cold_start standard: fetch adapters, start vLLM, wait until healthy, then warm up every name in
    `warm` (see `warm_up`) before the caller reports ready. Returns seconds to healthy."""
    fetch_adapters(adapters, log=proc.log)
    proc.start()
    seconds = proc.wait_healthy(timeout)
    if warm:
        warm_up(proc, warm)
    return seconds


# Warm-up: the first user never pays a compile.

WARM_UP_PROMPT = "Say hello."


def warm_up(proc, names, requests=1, max_tokens=8):
    """Send `requests` short requests to each served name, LoRA adapters included, before traffic.

    A healthy vLLM still has first-request work left: the first request to an adapter JIT-compiles
    the LoRA Triton kernels (vLLM logs "Triton kernel JIT compilation during inference"), which cost
    the first user of an adapter seconds. Chat first; a model without a chat template answers 400
    there, so completions then. A name that fails both fails the start: a container that cannot
    serve one of its names must not take traffic. Returns seconds taken.
    """
    t0 = time.monotonic()
    for name in names:
        for _ in range(requests):
            chat = {"model": name, "max_tokens": max_tokens, "messages": [{"role": "user", "content": WARM_UP_PROMPT}]}
            status, answer = proc.request("POST", "/v1/chat/completions", chat, timeout=300.0)
            if status == 400:
                plain = {"model": name, "max_tokens": max_tokens, "prompt": WARM_UP_PROMPT}
                status, answer = proc.request("POST", "/v1/completions", plain, timeout=300.0)
            if status != 200:
                raise RuntimeError(f"warm-up request to {name!r} failed with HTTP {status}: {answer}")
    seconds = time.monotonic() - t0
    proc.log(f"warmed up {', '.join(names)} ({requests} request(s) each) in {seconds:.1f} s")
    return seconds


# ---- snapshot: warm up, sleep before the GPU snapshot, wake after restore, behind the guard ---------------

# Sleep mode needs VLLM_SERVER_DEV_MODE=1, which also serves /sleep, /wake_up, /collective_rpc and
# other routes nobody outside the container may call. vLLM loads this ASGI middleware
# (`--middleware fleetform_guard.DevRouteGuard`): a request passes when every path it may be
# routed on is a public API route, or when it carries the per-container admin token that only
# this process and vLLM's environment know.

ADMIN_HEADER = "x-fleetform-admin"
GUARD_SOURCE = """
import hmac
import json
import os
import posixpath
from urllib.parse import unquote

PUBLIC = ("/v1/", "/v2/", "/health", "/ping", "/version", "/metrics", "/tokenize", "/detokenize",
          "/invocations", "/pooling", "/classify", "/score", "/rerank")


def route_path(path, root):
    # What Starlette routes on under a root path (vLLM's --root-path): what follows root_path.
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        path = path[len(root):]
    return path or "/"


def normal(path):
    # //, /./ and /../ resolved, as a proxy in front or another server version might.
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def route_paths(scope):
    # Every path the request may be routed on: its path and raw path, each decoded once more (and
    # again, to a fixed point), each with the root path taken off before and after normalising.
    root = scope.get("root_path") or ""
    sent = [scope.get("path") or "/"]
    if scope.get("raw_path"):
        sent.append(scope["raw_path"].decode("latin-1"))
    decoded = []
    for path in sent:
        while path not in decoded:
            decoded.append(path)
            path = unquote(path)
    found = set()
    for path in decoded:
        found.update((route_path(path, root), normal(route_path(path, root)), route_path(normal(path), root)))
    return found


def public(path):
    return any(path.startswith(prefix) if prefix.endswith("/") else (path == prefix or path.startswith(prefix + "/"))
               for prefix in PUBLIC)


class DevRouteGuard:
    # ASGI middleware: a request passes when every path it may be routed on is a public route,
    # or when it carries the admin token.

    def __init__(self, app):
        self.app = app
        self.token = os.environ.get("FLEETFORM_ADMIN_TOKEN", "").encode()

    def _allowed(self, scope):
        if all(public(p) for p in route_paths(scope)):
            return True
        sent = dict(scope.get("headers") or []).get(b"x-fleetform-admin", b"")
        return bool(self.token) and hmac.compare_digest(sent, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": "forbidden", "type": "forbidden", "code": 403}}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


def install_guard(env):
    """Write the guard module where the vLLM process can import it; returns `env` with the variables
    that load it: the module's folder first on PYTHONPATH (whatever PYTHONPATH the process would
    have had, from `env` or this process, stays after it) and the admin token."""
    directory = tempfile.mkdtemp(prefix="fleetform-guard-")
    with open(os.path.join(directory, GUARD_MODULE + ".py"), "w") as fh:
        fh.write(GUARD_SOURCE)
    path = env["PYTHONPATH"] if "PYTHONPATH" in env else os.environ.get("PYTHONPATH", "")
    return {
        **env,
        "PYTHONPATH": directory + (os.pathsep + path if path else ""),
        "FLEETFORM_ADMIN_TOKEN": secrets.token_urlsafe(32),
    }


def guard(proc):
    """Put the guard in front of `proc`'s development routes, and give `proc` the admin token.

    Refuses a command line that does not load the guard: dev mode without it leaves /sleep,
    /wake_up and /collective_rpc open to every caller.
    """
    if GUARD_MIDDLEWARE not in proc.argv or proc.argv[proc.argv.index(GUARD_MIDDLEWARE) - 1] != "--middleware":
        raise RuntimeError(f"cold_start snapshot needs `--middleware {GUARD_MIDDLEWARE}` on vLLM's command line")
    proc.env = install_guard(proc.env)
    proc.headers[ADMIN_HEADER] = proc.env["FLEETFORM_ADMIN_TOKEN"]


def sleep(proc, level=1):
    """Offload weights and free the KV cache (vLLM sleep mode). Returns seconds taken."""
    t0 = time.monotonic()
    status, answer = proc.request("POST", f"/sleep?level={int(level)}", timeout=600.0)
    if status != 200:
        raise RuntimeError(f"sleep failed with HTTP {status}: {answer}")
    return time.monotonic() - t0


def wake_up(proc):
    """Reload what sleep() offloaded. Returns seconds taken."""
    t0 = time.monotonic()
    status, answer = proc.request("POST", "/wake_up", timeout=600.0)
    if status != 200:
        raise RuntimeError(f"wake_up failed with HTTP {status}: {answer}")
    return time.monotonic() - t0


def boot_for_snapshot(proc, timeout, names, warmup_requests=3, adapters=()):
    """cold_start snapshot, before the snapshot: guard, boot, warm up every name, then sleep.

    Returns the seconds each step took. Sleeping (level 1) offloads the weights and frees the KV
    cache, so the GPU snapshot holds little device memory; what the warm-up compiled is in the snapshot.
    """
    guard(proc)
    timings = {"boot_s": boot(proc, timeout, adapters)}
    timings["warmup_s"] = warm_up(proc, names, requests=warmup_requests)
    timings["sleep_s"] = sleep(proc, level=1)
    proc.log(
        f"asleep: ready for the snapshot (boot {timings['boot_s']:.1f} s, warm-up {timings['warmup_s']:.1f} s, "
        f"sleep {timings['sleep_s']:.1f} s)"
    )
    return timings


def after_restore(proc):
    """cold_start snapshot, after restore: wake vLLM. Returns seconds taken."""
    seconds = wake_up(proc)
    proc.log(f"awake after {seconds:.2f} s")
    sys.stdout.flush()
    return seconds
