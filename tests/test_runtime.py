"""The start-up logic shared by rendered apps and `serve --local`, run for real against a stand-in vLLM."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from renderer.codegen import runtime
from renderer.codegen.render import render
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.endpoint.serve import LocalOptions, local_adapters, local_argv

from conftest import REPO
from modal_objects import import_module

FAKE = [sys.executable, str(Path(__file__).with_name("fake_vllm.py")), "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment(tmp_path: Path, extra: str = "", name: str = "demo"):
    f = tmp_path / f"{name}.yaml"
    f.write_text(
        f"name: {name}\nmodel:\n  id: org/model\n  revision: {'a' * 40}\n  served_model_names: [m1, m2]\n"
        f"gpu:\n  type: H100\n{extra}"
    )
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok, fleet.diagnostics
    return fleet.deployments[0]


# --- the guard ------------------------------------------------------------------------------------


def guard_app(token: str = "s3cret"):
    """A factory of the guard, loaded from its source as vLLM loads the module, with this admin token."""
    namespace: dict = {}
    exec(runtime.GUARD_SOURCE, namespace)

    def make(app):
        os.environ["FLEETFORM_ADMIN_TOKEN"] = token
        try:
            return namespace["DevRouteGuard"](app)
        finally:
            del os.environ["FLEETFORM_ADMIN_TOKEN"]

    return make


def guard_status(path: str, headers: dict[bytes, bytes] | None = None, token: str = "s3cret", **scope) -> int:
    """The status the guard answers for one request; `scope`: more ASGI scope keys (root_path, raw_path)."""
    seen, sent = {}, {}

    async def inner(_scope, receive, send):
        seen["passed"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(msg):
        if msg["type"] == "http.response.start":
            sent["status"] = msg["status"]

    async def receive():
        return {"type": "http.request", "body": b""}

    app = guard_app(token)(inner)
    asyncio.run(app({"type": "http", "path": path, "headers": list((headers or {}).items()), **scope}, receive, send))
    assert seen.get("passed", False) == (sent["status"] == 200)
    return sent["status"]


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/models", "/health", "/metrics", "/version", "/tokenize", "/v2/rerank"]
)
def test_guard_lets_public_routes_through(path):
    assert guard_status(path) == 200


@pytest.mark.parametrize(
    "path",
    ["/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache", "/healthz", "/v1", "/docs", "/"],
)
def test_guard_blocks_everything_else_without_the_token(path):
    assert guard_status(path) == 403
    assert guard_status(path, {b"x-fleetform-admin": b"wrong"}) == 403
    assert guard_status(path, {b"x-fleetform-admin": b"s3cret"}) == 200


def test_guard_with_no_token_configured_blocks_even_an_empty_header():
    assert guard_status("/sleep", {b"x-fleetform-admin": b""}, token="") == 403


# Each is a way to reach a development route through a path that looks public, or that a server
# (Starlette under --root-path, uvicorn's decoding) or a normalising proxy maps onto one.
BYPASSES = [
    dict(path="/v1/sleep", root_path="/v1"),  # vLLM --root-path /v1: Starlette routes on "/sleep"
    dict(path="/v1/collective_rpc", root_path="/v1"),
    dict(path="/metrics/sleep", root_path="/metrics"),
    dict(path="/health/wake_up", root_path="/health"),
    dict(path="/api/sleep", root_path="/api"),
    dict(path="/v1/../sleep"),
    dict(path="/health/../sleep"),
    dict(path="/v1/%2e%2e/sleep"),  # decoded once more
    dict(path="/v1/%252e%252e/sleep"),  # and again
    dict(path="/v1/../sleep", raw_path=b"/v1%2F..%2Fsleep"),  # as uvicorn hands it over
    dict(path="/v1//../sleep"),
    dict(path="//sleep"),
    dict(path="/./sleep"),
    dict(path="/sleep/"),
    dict(path="/sleep/."),
    dict(path="/SLEEP"),  # fail closed: not a public route in any case
    dict(path="/v1/models", raw_path=b"/sleep"),  # a path and raw path that disagree
    dict(path="/", root_path="/v1"),
]


@pytest.mark.parametrize("scope", BYPASSES, ids=lambda s: " ".join(f"{k}={v}" for k, v in s.items()))
def test_no_path_trick_reaches_a_development_route(scope):
    scope = dict(scope)
    path = scope.pop("path")
    assert guard_status(path, **scope) == 403
    assert guard_status(path, {b"x-fleetform-admin": b"s3cret"}, **scope) == 200


@pytest.mark.parametrize(
    "path,root_path",
    [
        ("/api/v1/chat/completions", "/api"),
        ("/v1/v1/models", "/v1"),
        ("/v1/models/", ""),
        ("/metrics/", ""),
        ("/v1/chat/completions", "/other"),
    ],
)
def test_public_routes_pass_under_a_root_path(path, root_path):
    assert guard_status(path, root_path=root_path, raw_path=path.encode()) == 200


def test_websockets_to_development_routes_are_closed():
    guard = guard_app()
    messages = []

    async def inner(scope, receive, send):
        messages.append("passed")

    async def send(message):
        messages.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    asyncio.run(guard(inner)({"type": "websocket", "path": "/sleep", "headers": []}, receive, send))
    assert messages == [{"type": "websocket.close", "code": 1008}]
    messages.clear()
    asyncio.run(guard(inner)({"type": "websocket", "path": "/v1/realtime", "headers": []}, receive, send))
    asyncio.run(guard(inner)({"type": "lifespan"}, receive, send))
    assert messages == ["passed", "passed"]


# --- the process ------------------------------------------------------------------------------------------


def test_boot_waits_for_health_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_BOOT_S", "0.5")
    port = free_port()
    proc = runtime.VLLMProcess(FAKE + ["m", "--port", str(port)], port=port, log=lambda m: None)
    try:
        elapsed = runtime.boot(proc, timeout=20)
        assert 0.5 <= elapsed < 15
        assert proc.healthy()
    finally:
        code = proc.stop(grace=5)
    assert code is not None and proc.proc.poll() is not None


def test_process_that_dies_is_reported(monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_EXIT", "3")
    port = free_port()
    proc = runtime.VLLMProcess(FAKE + ["m", "--port", str(port)], port=port, log=lambda m: None)
    with pytest.raises(runtime.ServerExited, match="code 3"):
        runtime.boot(proc, timeout=20)


def test_startup_timeout(monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_BOOT_S", "60")
    port = free_port()
    proc = runtime.VLLMProcess(FAKE + ["m", "--port", str(port)], port=port, log=lambda m: None)
    try:
        with pytest.raises(runtime.StartupTimeout):
            runtime.boot(proc, timeout=1)
    finally:
        proc.stop(grace=5)


def test_snapshot_sequence_with_the_guard_in_front(tmp_path, monkeypatch):
    """boot -> warm up -> sleep -> wake, through the guard vLLM loads with --middleware."""
    d = deployment(tmp_path, "engine:\n  cold_start: snapshot\n")
    assert "--enable-sleep-mode" in d.argv and runtime.GUARD_MIDDLEWARE in d.argv
    log_file = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log_file))
    port = free_port()
    argv = local_argv(d, LocalOptions(vllm=tuple(FAKE[:-1]) + ("serve",), port=port))
    proc = runtime.VLLMProcess(argv, port=port, env=d.process_env, log=lambda m: None)
    try:
        timings = runtime.boot_for_snapshot(proc, timeout=20, names=["m1"])
        assert set(timings) == {"boot_s", "warmup_s", "sleep_s"}
        # from outside (no token) the dev routes are closed; the public API stays open
        for path, want in (("/sleep?level=1", 403), ("/wake_up", 403), ("/v1/models", 200)):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", method="POST" if "models" not in path else "GET"
            )
            try:
                status = urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == want, path
        runtime.after_restore(proc)
    finally:
        proc.stop(grace=5)
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert entries[0]["env_dev_mode"] == "1"
    calls = [(e["method"], e["path"].split("?")[0], e["status"]) for e in entries[1:] if e.get("path") != "/health"]
    assert calls == [("POST", "/v1/chat/completions", 200)] * 3 + [
        ("POST", "/sleep", 200),
        ("POST", "/sleep", 403),
        ("POST", "/wake_up", 403),
        ("GET", "/v1/models", 200),
        ("POST", "/wake_up", 200),
    ]


def raw_request(port: int, method: str, path: str) -> int:
    """Send `path` exactly as written (http.client neither normalises nor re-encodes it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_path_tricks_through_a_root_path_never_reach_sleep_end_to_end(tmp_path, monkeypatch):
    """vLLM started with --root-path /metrics (a public prefix): Starlette routes /metrics/sleep on
    /sleep. From outside, every trick gets 403 and the server stays awake; the runtime's own calls
    (with the admin token) still work."""
    d = deployment(tmp_path, "engine:\n  cold_start: snapshot\n")
    log_file = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log_file))
    port = free_port()
    argv = local_argv(d, LocalOptions(vllm=tuple(FAKE[:-1]) + ("serve",), port=port)) + ["--root-path", "/metrics"]
    proc = runtime.VLLMProcess(argv, port=port, env=d.process_env, log=lambda m: None)
    tricks = [
        "/metrics/sleep",
        "/metrics/wake_up",
        "/metrics//sleep",
        "/metrics/./sleep",
        "/metrics/x/../sleep",
        "/metrics/%2e%2e/metrics/sleep",
        "/metrics%2Fsleep",
        "/v1/../metrics/sleep",
        "/sleep",
        "/metrics/sleep/",
    ]
    runtime.guard(proc)
    try:
        runtime.boot(proc, timeout=20)
        for path in tricks:
            assert raw_request(port, "POST", path + "?level=1") == 403, path
        assert raw_request(port, "GET", "/metrics/is_sleeping") == 403
        assert raw_request(port, "GET", "/v1/models") == 200  # the public API is untouched
        assert proc.request("GET", "/metrics/is_sleeping")[1] == {"is_sleeping": False}  # the token passes
    finally:
        proc.stop(grace=5)
    outside = [json.loads(line) for line in log_file.read_text().splitlines()[1:]]
    assert [e["status"] for e in outside if e["path"].split("?")[0] in [*tricks]] == [403] * len(tricks)


def test_snapshot_runtime_keeps_the_users_pythonpath(tmp_path, monkeypatch):
    """The guard's folder goes first on PYTHONPATH; what the process would have had stays after it."""
    d = deployment(tmp_path, "engine:\n  cold_start: snapshot\n")
    monkeypatch.setenv("PYTHONPATH", "/from/the/shell")
    argv = list(d.argv)
    inherited = runtime.VLLMProcess(argv, port=1, env={})
    own = runtime.VLLMProcess(argv, port=1, env={"PYTHONPATH": "/opt/mine" + os.pathsep + "/opt/more"})
    empty = runtime.VLLMProcess(argv, port=1, env={"PYTHONPATH": ""})
    for proc, rest in ((inherited, ["/from/the/shell"]), (own, ["/opt/mine", "/opt/more"]), (empty, [])):
        runtime.guard(proc)
        first, *after = proc.env["PYTHONPATH"].split(os.pathsep)
        assert (Path(first) / "fleetform_guard.py").is_file() and after == rest
        assert proc.headers == {"x-fleetform-admin": proc.env["FLEETFORM_ADMIN_TOKEN"]}


def test_snapshot_mode_refuses_to_run_without_the_guard(tmp_path):
    """Dev mode without the middleware would leave /sleep, /wake_up and /collective_rpc open."""
    d = deployment(tmp_path, "engine:\n  cold_start: snapshot\n")
    argv = list(d.argv)
    i = argv.index("--middleware")
    for without in (argv[:i] + argv[i + 2 :], argv[:i] + ["--other", runtime.GUARD_MIDDLEWARE] + argv[i + 2 :]):
        proc = runtime.VLLMProcess(without, port=1, env=d.process_env, log=lambda m: None)
        with pytest.raises(RuntimeError, match="needs `--middleware fleetform_guard.DevRouteGuard`"):
            runtime.boot_for_snapshot(proc, timeout=1, names=["m1"])
        assert proc.proc is None  # nothing was started


@pytest.mark.parametrize("where", ["env", "environ"])
def test_dev_mode_without_the_guard_never_starts(monkeypatch, where):
    """However VLLM_SERVER_DEV_MODE got there (engine.env, the container's environment), vLLM does
    not start with its development routes open."""
    env = {"VLLM_SERVER_DEV_MODE": "1"} if where == "env" else {}
    if where == "environ":
        monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    port = free_port()
    proc = runtime.VLLMProcess(FAKE + ["m", "--port", str(port)], port=port, env=env, log=lambda m: None)
    try:
        with pytest.raises(RuntimeError, match="VLLM_SERVER_DEV_MODE is set but vLLM would not load"):
            runtime.boot(proc, timeout=5)
        assert proc.proc is None
    finally:
        proc.stop(grace=5)


def test_dev_mode_off_starts(monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_BOOT_S", "0")
    port = free_port()
    proc = runtime.VLLMProcess(
        FAKE + ["m", "--port", str(port)], port=port, env={"VLLM_SERVER_DEV_MODE": "0"}, log=lambda m: None
    )
    try:
        runtime.boot(proc, timeout=20)
    finally:
        proc.stop(grace=5)


def test_the_vllm_process_sees_both_the_guard_and_the_users_pythonpath(tmp_path, monkeypatch):
    d = deployment(tmp_path, "engine:\n  cold_start: snapshot\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    log_file = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log_file))
    port = free_port()
    argv = local_argv(d, LocalOptions(vllm=tuple(FAKE[:-1]) + ("serve",), port=port))
    proc = runtime.VLLMProcess(argv, port=port, env={**d.process_env, "PYTHONPATH": str(mine)}, log=lambda m: None)
    runtime.guard(proc)
    try:
        runtime.boot(proc, timeout=20)
    finally:
        proc.stop(grace=5)
    path = json.loads(log_file.read_text().splitlines()[0])["pythonpath"].split(os.pathsep)
    assert len(path) == 2 and path[0].split(os.sep)[-1].startswith("fleetform-guard-") and path[1] == str(mine)


# --- serve --local -----------------------------------------------------------------------------------------


def test_local_argv_substitutions(example_fleet):
    d = next(d for d in example_fleet.deployments if d.name == "llama-3-1-8b-fp8")
    argv = local_argv(
        d,
        LocalOptions(
            model_path="/tmp/dummy-llama-8b",
            load_format="dummy",
            port=8123,
            vllm=("python3", "-m", "vllm.entrypoints.cli.main", "serve"),
        ),
    )
    assert argv == [
        "python3",
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "/tmp/dummy-llama-8b",
        "--served-model-name",
        "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
        "llm",
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--uvicorn-log-level",
        "info",
        "--no-enforce-eager",
        "--tensor-parallel-size",
        "1",
        "--load-format",
        "dummy",
    ]
    # without options it is the rendered app's command line, token for token
    assert local_argv(d, LocalOptions()) == list(d.argv)


def test_serve_local_cli_runs_until_ctrl_c(tmp_path):
    d_file = tmp_path / "demo.yaml"
    d_file.write_text(f"name: demo\nmodel:\n  id: org/model\n  revision: {'a' * 40}\ngpu:\n  type: H100\n")
    port = free_port()
    log_file = tmp_path / "requests.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "renderer",
        "serve",
        "demo",
        str(d_file),
        "--local",
        "--port",
        str(port),
        "--vllm",
        f"{sys.executable} {Path(__file__).with_name('fake_vllm.py')}",
        "--startup-timeout",
        "30",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "FAKE_VLLM_LOG": str(log_file)}
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "serving" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert f"serving org/model at http://127.0.0.1:{port}/v1" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    argv = json.loads(log_file.read_text().splitlines()[0])["argv"]
    assert argv[:2] == ["serve", "org/model"] and argv[argv.index("--port") + 1] == str(port)


LORA = (
    "model:\n  id: org/model\n  revision: " + "a" * 40 + "\n  served_model_names: [m1]\n  max_lora_rank: 64\n"
    "  lora_adapters:\n    - {name: sql, id: org/sql-lora, revision: " + "b" * 40 + "}\n"
    "    - {name: chat, id: org/chat-lora, revision: " + "c" * 40 + "}\n"
)


def test_lora_adapters_render_flags_and_local_paths(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("name: demo\n" + LORA + "gpu:\n  type: H100\n")
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok, fleet.diagnostics
    d = fleet.deployments[0]
    argv = list(d.argv)
    assert argv[argv.index("--enable-lora") :] == [
        "--enable-lora",
        "--lora-modules",
        "sql=/root/.cache/huggingface/fleetform-lora/sql-bbbbbbbbbbbb",
        "chat=/root/.cache/huggingface/fleetform-lora/chat-cccccccccccc",
        "--max-lora-rank",
        "64",
    ]
    assert d.model.names == ("m1", "sql", "chat")
    local = local_argv(d, LocalOptions(lora_dir=str(tmp_path / "lora")))
    assert f"sql={tmp_path}/lora/sql-bbbbbbbbbbbb" in local


def test_fetch_adapters_downloads_pinned_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, revision, local_dir):
        calls.append((repo_id, revision))
        os.makedirs(local_dir, exist_ok=True)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    adapters = [{"name": "sql", "id": "org/sql-lora", "revision": "b" * 40, "path": str(tmp_path / "sql")}]
    runtime.fetch_adapters(adapters, log=lambda m: None)
    runtime.fetch_adapters(adapters, log=lambda m: None)  # already there at that revision: no download
    assert calls == [("org/sql-lora", "b" * 40)]
    runtime.fetch_adapters([{**adapters[0], "revision": "d" * 40}], log=lambda m: None)
    assert calls[-1] == ("org/sql-lora", "d" * 40)


def test_adapter_names_are_unique_across_the_fleet(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\n" + LORA + "gpu:\n  type: H100\n")
    (tmp_path / "b.yaml").write_text(
        f"name: b\nmodel:\n  id: org/other\n  revision: {'e' * 40}\n  served_model_names: [sql]\ngpu:\n  type: H100\n"
    )
    fleet = resolve(load_fleet([str(tmp_path)]))
    [err] = [d for d in fleet.diagnostics if d.is_error]
    assert err.code == "duplicate-served-name" and err.mark.file.endswith("b.yaml") and "'sql'" in err.message


def test_adapter_without_pinned_revision_is_rejected(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("name: demo\n" + LORA.replace("c" * 40, "main") + "gpu:\n  type: H100\n")
    fleet = resolve(load_fleet([str(f)]))
    [err] = fleet.diagnostics
    assert err.path == ("model", "lora_adapters", 1, "revision") and "not pinned" in err.message


# --- warm before ready -------------------------------------------------------------------------------------


def _logged(log_file: Path) -> list[tuple[str, str, int, str | None]]:
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    return [
        (e["method"], e["path"], e["status"], e.get("model")) for e in entries if e.get("path") not in (None, "/health")
    ]


def _ready_adapters(d, root: Path) -> list[dict[str, str]]:
    """The deployment's adapters, already fetched into `root` at their revisions (no hub)."""
    adapters = local_adapters(d, LocalOptions(lora_dir=str(root)))
    for a in adapters:
        os.makedirs(a["path"], exist_ok=True)
        Path(a["path"], ".fleetform-revision").write_text(a["revision"])
    return adapters


def lora_deployment(tmp_path: Path, extra: str = ""):
    f = tmp_path / "d.yaml"
    f.write_text("name: demo\n" + LORA + "gpu:\n  type: H100\n" + extra)
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok, fleet.diagnostics
    return fleet.deployments[0]


@pytest.mark.parametrize("cold_start", ["standard", "snapshot"])
def test_every_served_name_and_adapter_is_warmed_before_ready(tmp_path, monkeypatch, cold_start):
    """Standard and snapshot mode alike: one short request per name (adapters included) before the
    start-up returns, so the first user of an adapter pays no kernel compile."""
    d = lora_deployment(tmp_path, f"engine:\n  cold_start: {cold_start}\n")
    log_file = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log_file))
    port = free_port()
    opts = LocalOptions(vllm=tuple(FAKE[:-1]) + ("serve",), port=port, lora_dir=str(tmp_path / "lora"))
    proc = runtime.VLLMProcess(local_argv(d, opts), port=port, env=d.process_env, log=lambda m: None)
    adapters = _ready_adapters(d, tmp_path / "lora")
    try:
        if cold_start == "snapshot":
            runtime.boot_for_snapshot(proc, timeout=20, names=d.model.names, warmup_requests=1, adapters=adapters)
        else:
            runtime.boot(proc, timeout=20, adapters=adapters, warm=d.model.names)
    finally:
        proc.stop(grace=5)
    chats = [(path, model) for method, path, status, model in _logged(log_file) if path == "/v1/chat/completions"]
    assert chats == [("/v1/chat/completions", name) for name in ("m1", "sql", "chat")]


def test_warm_up_falls_back_to_completions_without_a_chat_template(tmp_path, monkeypatch):
    log_file = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log_file))
    monkeypatch.setenv("FAKE_VLLM_NO_CHAT_TEMPLATE", "1")
    port = free_port()
    proc = runtime.VLLMProcess(
        FAKE + ["m", "--served-model-name", "m1", "--port", str(port)], port=port, log=lambda m: None
    )
    try:
        runtime.boot(proc, timeout=20, warm=["m1"])
    finally:
        proc.stop(grace=5)
    assert _logged(log_file) == [
        ("POST", "/v1/chat/completions", 400, "m1"),
        ("POST", "/v1/completions", 200, "m1"),
    ]


def test_a_name_the_server_cannot_serve_fails_the_start(tmp_path):
    """A container that cannot answer one of its names must not report ready."""
    port = free_port()
    proc = runtime.VLLMProcess(
        FAKE + ["m", "--served-model-name", "m1", "--port", str(port)], port=port, log=lambda m: None
    )
    try:
        with pytest.raises(RuntimeError, match="warm-up request to 'missing' failed with HTTP 404"):
            runtime.boot(proc, timeout=20, warm=["m1", "missing"])
    finally:
        proc.stop(grace=5)


def test_the_rendered_app_warms_every_name(tmp_path, monkeypatch):
    """The module Modal runs: its container start-up (the class Modal's server wraps) boots with
    the served names and the adapters to warm. Read from the imported module, built with the real `modal`."""
    d = lora_deployment(tmp_path)
    path = tmp_path / "demo.py"
    path.write_text(render(d).text)
    module = import_module(path)
    assert module.WARM_UP_NAMES == ["m1", "sql", "chat"]
    calls = []
    monkeypatch.setattr(module, "VLLMProcess", lambda *a, **kw: "proc")
    monkeypatch.setattr(module, "boot", lambda proc, **kw: calls.append((proc, kw)))
    user_cls = module.Serve._get_user_cls()
    user_cls.start._get_raw_f()(user_cls.__new__(user_cls))  # what Modal runs when a container starts
    [(proc, kw)] = calls
    assert proc == "proc" and kw["warm"] == ["m1", "sql", "chat"] and len(kw["adapters"]) == 2
