"""The fleet gateway: its ASGI app driven in-process against two local OpenAI-compatible upstreams,
and the rendered module built with the real `modal` package. Offline; servers bind 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from modal_proto import api_pb2

from renderer.codegen import gateway as gateway_mod
from renderer.codegen.gateway import render_gateway
from renderer.codegen.gateway_app import (
    GATEWAY_KEY_ENV,
    PROXY_TOKEN_ID_ENV,
    PROXY_TOKEN_SECRET_ENV,
    GatewayApp,
    Upstream,
)
from renderer.codegen.render import RenderError
from renderer.config import spec
from renderer.config.load import load_fleet
from renderer.config.resolve import gateway_from, resolve
from renderer.config.spec import static_url

from gateway_upstreams import UpstreamConfig, free_port, serve_upstream
from modal_objects import import_module, server_config

KEY = "gw-test-key"
BETA_KEY_ENV = "FLEETFORM_UPSTREAM_KEY_BETA"
ENV = {GATEWAY_KEY_ENV: KEY, PROXY_TOKEN_ID_ENV: "wk-test", PROXY_TOKEN_SECRET_ENV: "ws-test", BETA_KEY_ENV: "beta-key"}
PROXY_HEADERS = {"Modal-Key": "wk-test", "Modal-Secret": "ws-test"}
BEARER_BETA = {"Authorization": "Bearer beta-key"}
GENERIC_503 = "The model is not available right now (its deployment may be starting): retry"


def run(coro, timeout: float = 20):
    """Run one async test body, bounded in time so a broken test cannot hang the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --- a minimal ASGI driver ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (time.monotonic() at send, bytes)
    complete: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def json(self):
        return json.loads(self.body)

    def events(self) -> list[tuple[float, dict | str]]:
        """Server-sent events, each with the time its bytes were forwarded."""
        out = []
        for t, chunk in self.chunks:
            for line in chunk.decode().split("\n"):
                if line.startswith("data: "):
                    data = line[6:]
                    out.append((t, data if data == "[DONE]" else json.loads(data)))
        return out


async def call(
    app,
    method: str,
    path: str,
    body: dict | bytes | None = None,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    query: str = "",
    disconnect: asyncio.Event | None = None,
    on_chunk=None,
) -> Answer:
    """Drive the ASGI callable as a server would: one request, its body, then wait for disconnect."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    hdrs = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    gone = disconnect or asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    answer = Answer()

    async def send(message):
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            if message.get("body"):
                answer.chunks.append((time.monotonic(), message["body"]))
                if on_chunk:
                    on_chunk(message["body"])
            answer.complete = not message.get("more_body", False)

    await app(scope, receive, send)
    return answer


def make_gateway(alpha_url: str | None, beta_url: str | None, **kw) -> GatewayApp:
    """alpha: Modal proxy auth, models alpha-chat and alpha-small; beta: Bearer key, model beta-embed."""
    alpha = kw.pop("alpha", None) or Upstream("alpha", alpha_url, "proxy")
    beta = Upstream("beta", beta_url or "http://127.0.0.1:9", "api_key", key_env=BETA_KEY_ENV)
    kw.setdefault("environ", ENV)
    return GatewayApp(
        {"alpha-chat": alpha, "alpha-small": alpha, "beta-embed": beta}, backoff_initial=0.05, backoff_max=0.2, **kw
    )


def alpha_config(**kw) -> UpstreamConfig:
    return UpstreamConfig("alpha", ["alpha-chat", "alpha-small"], require_headers=PROXY_HEADERS, **kw)


def beta_config(**kw) -> UpstreamConfig:
    return UpstreamConfig("beta", ["beta-embed"], require_headers=BEARER_BETA, **kw)


def openai_error(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --- routing --------------------------------------------------------------------------------------------


def test_models_lists_every_served_name_without_waking_upstreams():
    async def body():
        async with serve_upstream(alpha_config()) as a, serve_upstream(beta_config()) as b:
            app = make_gateway(a.url, b.url)
            answer = await call(app, "GET", "/v1/models")
            one = await call(app, "GET", "/v1/models/beta-embed")
            await app.aclose()
            assert a.requests == [] and b.requests == []  # a static table: no GPU container woken
            return answer, one

    answer, one = run(body())
    assert answer.status == 200
    assert answer.json() == {
        "object": "list",
        "data": [
            {"id": "alpha-chat", "object": "model", "created": 0, "owned_by": "alpha"},
            {"id": "alpha-small", "object": "model", "created": 0, "owned_by": "alpha"},
            {"id": "beta-embed", "object": "model", "created": 0, "owned_by": "beta"},
        ],
    }
    assert one.json() == {"id": "beta-embed", "object": "model", "created": 0, "owned_by": "beta"}


def test_routes_by_model_with_each_upstreams_auth():
    raw = '{"model":  "alpha-small", "messages": [{"role": "user", "content": "h\u00e9llo \\u2603"}]}'.encode()

    async def body():
        async with serve_upstream(alpha_config()) as a, serve_upstream(beta_config()) as b:
            app = make_gateway(a.url, b.url)
            chat = await call(
                app, "POST", "/v1/chat/completions", raw, query="trace=1", headers={"x-request-id": "req-7"}
            )
            comp = await call(app, "POST", "/v1/completions", {"model": "alpha-chat", "prompt": "hi"})
            emb = await call(app, "POST", "/v1/embeddings", {"model": "beta-embed", "input": "hi"})
            await app.aclose()
            return a, b, chat, comp, emb

    a, b, chat, comp, emb = run(body())
    assert (chat.status, chat.json()["upstream"], chat.json()["model"]) == (200, "alpha", "alpha-small")
    assert (comp.status, comp.json()["upstream"]) == (200, "alpha")
    assert (emb.status, emb.json()["upstream"], emb.json()["data"][0]["embedding"]) == (200, "beta", [0.25, -0.5])
    assert chat.headers["content-type"].startswith("application/json")
    first = a.requests[0]
    assert (first.path, first.query, first.body) == ("/v1/chat/completions", "trace=1", raw)  # byte for byte
    assert first.headers["modal-key"] == "wk-test" and first.headers["modal-secret"] == "ws-test"
    assert first.headers["x-request-id"] == "req-7"
    assert "authorization" not in first.headers  # the gateway's own key never leaves the gateway
    assert [r.path for r in a.requests] == ["/v1/chat/completions", "/v1/completions"]
    assert [(r.path, r.headers["authorization"]) for r in b.requests] == [("/v1/embeddings", "Bearer beta-key")]
    assert all("modal-key" not in r.headers for r in b.requests)


def test_streams_from_two_upstreams_at_once_chunk_by_chunk():
    interval, chunks = 0.15, 5

    async def body():
        async with (
            serve_upstream(alpha_config(chunks=chunks, chunk_interval=interval)) as a,
            serve_upstream(beta_config(chunks=chunks, chunk_interval=interval)) as b,
        ):
            app = make_gateway(a.url, b.url)
            started = time.monotonic()
            answers = await asyncio.gather(
                call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True, "messages": []}),
                call(app, "POST", "/v1/chat/completions", {"model": "beta-embed", "stream": True, "messages": []}),
            )
            elapsed = time.monotonic() - started
            await app.aclose()
            return answers, elapsed

    (alpha, beta), elapsed = run(body())
    for answer, name in ((alpha, "alpha"), (beta, "beta")):
        assert answer.status == 200 and answer.complete
        assert answer.headers["content-type"] == "text/event-stream"
        events = answer.events()
        assert events[-1][1] == "[DONE]"
        tokens = [(t, e) for t, e in events if e != "[DONE]"]
        assert [e["index"] for _, e in tokens] == list(range(chunks)) and {e["upstream"] for _, e in tokens} == {name}
        # Each chunk is forwarded as soon as the upstream writes it, not when the stream ends.
        for forwarded, event in tokens:
            assert forwarded - event["sent_at"] < 0.1, (name, event["index"], forwarded - event["sent_at"])
        assert tokens[-1][0] - tokens[0][0] >= (chunks - 1) * interval * 0.9
        assert len(answer.chunks) >= chunks  # one send a chunk (at least), never one buffered body
    # The two streams ran side by side: beta's first token came before alpha's last, and the pair took
    # about one stream's time (0.6 s), not two.
    assert beta.events()[0][0] < alpha.events()[-2][0] and alpha.events()[0][0] < beta.events()[-2][0]
    assert elapsed < 2 * (chunks - 1) * interval


def test_unknown_model_is_openai_404():
    async def body():
        async with serve_upstream(alpha_config()) as a, serve_upstream(beta_config()) as b:
            app = make_gateway(a.url, b.url)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "gpt-17", "messages": []})
            await app.aclose()
            assert a.requests == [] and b.requests == []
            return answer

    answer = run(body())
    assert answer.status == 404
    assert answer.json() == openai_error(
        "The model `gpt-17` does not exist: GET /v1/models lists the models served here",
        "model_not_found",
        param="model",
    )


@pytest.mark.parametrize(
    "path, name",
    [("/v1/chat/completions", "x" * 1_000_000), ("/v1/completions", "y" * 5000), ("/v1/models/", "z" * 100_000)],
)
def test_unknown_model_404_is_bounded_and_lists_no_names(path, name):
    """A 1 MB name must not come back as a 1 MB answer, and the 404 names none of the served models."""
    app = make_gateway("http://127.0.0.1:9", "http://127.0.0.1:9")
    if path.startswith("/v1/models/"):
        answer = run(call(app, "GET", path + name))
    else:
        answer = run(call(app, "POST", path, {"model": name, "prompt": "hi"}))
    assert answer.status == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert len(answer.body) < 400, len(answer.body)
    assert not any(served in answer.body.decode() for served in ("alpha-chat", "alpha-small", "beta-embed"))


@pytest.mark.parametrize(
    "headers, key", [({}, "wrong-key"), ({}, None), ({"authorization": f"Basic {KEY}"}, None), ({}, KEY + "x")]
)
def test_bad_gateway_key_is_401(headers, key):
    async def body():
        async with serve_upstream(alpha_config()) as a:
            app = make_gateway(a.url, a.url)
            answers = [
                await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}, key=key, headers=headers),
                await call(app, "GET", "/v1/models", key=key, headers=headers),
            ]
            await app.aclose()
            assert a.requests == []
            return answers

    for answer in run(body()):
        assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "invalid_api_key"
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_gateway_without_its_key_refuses_everything():
    app = make_gateway("http://127.0.0.1:9", None, environ={})  # the Secret is missing: fail closed
    answer = run(call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}, key=""))
    assert answer.status == 500
    assert answer.json()["error"]["code"] == "gateway_misconfigured"
    assert GATEWAY_KEY_ENV in answer.json()["error"]["message"]


def test_missing_upstream_credentials_are_named():
    env = {GATEWAY_KEY_ENV: KEY}
    app = make_gateway("http://127.0.0.1:9", "http://127.0.0.1:9", environ=env)
    proxy = run(call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}))
    bearer = run(call(app, "POST", "/v1/embeddings", {"model": "beta-embed"}))
    assert proxy.status == bearer.status == 500
    assert PROXY_TOKEN_ID_ENV in proxy.json()["error"]["message"]
    assert BETA_KEY_ENV in bearer.json()["error"]["message"]


@pytest.mark.parametrize(
    "method, path, payload, status, code",
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", {"messages": []}, 400, "missing_model"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/models", None, 405, "method_not_allowed"),
        ("POST", "/v1/responses/resp_1/cancel", {"model": "alpha-chat"}, 404, "unknown_route"),
        ("GET", "/admin", None, 404, "unknown_route"),
        ("GET", "/v1/models/nope", None, 404, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_errors(method, path, payload, status, code):
    app = make_gateway("http://127.0.0.1:9", "http://127.0.0.1:9")
    answer = run(call(app, method, path, payload))
    assert answer.status == status and answer.json()["error"]["code"] == code
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_health_needs_no_key():
    app = make_gateway("http://127.0.0.1:9", None, environ={})
    answer = run(call(app, "GET", "/health", key=None))
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


# --- cold starts and timeouts -------------------------------------------------------------------------------


def test_cold_start_503s_are_waited_out():
    async def body():
        async with serve_upstream(alpha_config(fail_first=3)) as a:
            app = make_gateway(a.url, None, upstream_timeout=10)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "messages": []})
            await app.aclose()
            return a, answer

    a, answer = run(body())
    assert answer.status == 200 and answer.json()["upstream"] == "alpha"
    assert len(a.requests) == 4  # three 503s while "starting", then served


def test_cold_start_connection_refused_until_the_upstream_listens():
    port = free_port()

    async def body():
        app = make_gateway(f"http://127.0.0.1:{port}", None, upstream_timeout=10)
        started = time.monotonic()
        request = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}))
        await asyncio.sleep(0.4)
        assert not request.done()
        async with serve_upstream(alpha_config(), port=port):
            answer = await request
        await app.aclose()
        return answer, time.monotonic() - started

    answer, elapsed = run(body())
    assert answer.status == 200 and answer.json()["upstream"] == "alpha"
    assert elapsed >= 0.4


def test_upstream_down_past_the_timeout_is_503():
    port = free_port()  # nothing ever listens here

    async def body():
        app = make_gateway(f"http://127.0.0.1:{port}", None, upstream_timeout=0.6)
        started = time.monotonic()
        answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
        await app.aclose()
        return answer, time.monotonic() - started

    answer, elapsed = run(body())
    assert answer.status == 503 and answer.headers["retry-after"] == "10"
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "upstream_unavailable", None)
    assert error["message"] == GENERIC_503
    assert 0.6 <= elapsed < 2.0


def test_upstream_answering_503_past_the_timeout_is_503():
    log = []

    async def body():
        async with serve_upstream(alpha_config(fail_first=10_000)) as a:
            app = make_gateway(a.url, None, upstream_timeout=0.5, log=log.append)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
            await app.aclose()
            return a, answer

    a, answer = run(body())
    assert answer.status == 503 and answer.json()["error"]["message"] == GENERIC_503
    line = json.loads(log[-1])
    assert (line["model"], line["upstream"], line["status"]) == ("alpha-chat", "alpha", 503)
    assert line["error"] == "deployment alpha: not ready within 0.5 s (last: HTTP 503)"
    assert 2 <= len(a.requests) <= 10  # retried with backoff, not hammered


def test_upstream_url_is_looked_up_once():
    calls = []

    async def body():
        async with serve_upstream(alpha_config()) as a:

            async def lookup():
                calls.append(1)
                await asyncio.sleep(0.05)
                return a.url + "/"

            app = make_gateway(None, None, alpha=Upstream("alpha", None, "proxy", lookup=lookup))
            answers = await asyncio.gather(
                *(call(app, "POST", "/v1/completions", {"model": "alpha-chat"}) for _ in range(3))
            )
            await app.aclose()
            return answers

    assert [a.status for a in run(body())] == [200, 200, 200]
    assert calls == [1]


def test_failed_lookup_is_503_and_retried_next_time():
    attempts = []

    async def lookup():
        attempts.append(1)
        raise RuntimeError("App 'alpha' not found in environment 'main'")

    log = []
    app = make_gateway(None, None, alpha=Upstream("alpha", None, "proxy", lookup=lookup), log=log.append)
    first = run(call(app, "POST", "/v1/completions", {"model": "alpha-chat"}))
    run(call(app, "POST", "/v1/completions", {"model": "alpha-chat"}))
    assert first.status == 503
    assert first.json()["error"]["message"] == GENERIC_503
    assert json.loads(log[0])["error"] == (
        "deployment alpha: lookup failed: App 'alpha' not found in environment 'main'"
    )
    assert len(attempts) == 2


def test_caller_disconnect_stops_the_upstream_stream():
    async def body():
        async with serve_upstream(alpha_config(chunks=200, chunk_interval=0.02)) as a:
            app = make_gateway(a.url, None)
            gone = asyncio.Event()
            answer = await call(
                app,
                "POST",
                "/v1/chat/completions",
                {"model": "alpha-chat", "stream": True},
                disconnect=gone,
                on_chunk=lambda _: gone.set(),
            )
            await asyncio.wait_for(a.aborted.wait(), 3)  # the upstream saw its caller leave
            await app.aclose()
            return a, answer

    a, answer = run(body())
    assert answer.status == 200 and not answer.complete
    assert a.stream_aborted == 1 and a.stream_finished == 0


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event():
    async def body():
        async with serve_upstream(alpha_config(chunks=10, die_after_chunks=2)) as a:
            app = make_gateway(a.url, None)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True})
            await app.aclose()
            return answer

    answer = run(body())
    assert answer.status == 200 and answer.complete  # the status was sent; the stream still ends cleanly
    events = [e for _, e in answer.events()]
    assert [e["index"] for e in events[:-1]] == [0, 1]
    assert events[-1]["error"]["code"] == "upstream_disconnected"
    assert events[-1]["error"]["message"] == "The model's answer broke off: retry"  # no host, no deployment


def test_lifespan_closes_the_pool():
    async def body():
        app = make_gateway("http://127.0.0.1:9", None)
        await app._client()
        inbox = asyncio.Queue()
        for m in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
            inbox.put_nowait(m)
        sent = []

        async def send(m):
            sent.append(m["type"])

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        return app, sent

    app, sent = run(body())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app._session is None


# --- the rendered gateway module ------------------------------------------------------------------------------


@pytest.fixture
def rendered(example_fleet, tmp_path):
    gw = render_gateway(
        example_fleet.deployments, gateway_from({"enabled": True, "min_containers": 1, "max_containers": 3})
    )
    path = tmp_path / gw.filename
    path.write_text(gw.text)
    return gw, path


def test_rendered_gateway_builds_its_modal_app(rendered):
    gw, path = rendered
    cfg = server_config(path)  # one function named "serve", created as Modal's SDK would
    f = cfg.function
    assert (cfg.app_name, cfg.app_tags) == ("fleetform-gateway", {"managed-by": "fleetform"})
    assert f.webhook_config.type == api_pb2.WEBHOOK_TYPE_ASGI_APP
    assert cfg.secrets == [
        "modal.Secret.from_name('fleetform-gateway-key')",
        "modal.Secret.from_name('fleetform-gateway-upstreams')",
    ]
    assert (f.max_concurrent_inputs, f.target_concurrent_inputs) == (400, 250)
    assert (f.autoscaler_settings.min_containers, f.autoscaler_settings.max_containers) == (1, 3)
    assert f.timeout_secs == 3600
    assert (f.resources.milli_cpu, f.resources.memory_mb) == (1000, 1024)
    assert not f.resources.gpu_config.gpu_type  # CPU only
    assert "Image(" in " ".join(cfg.ids.values())


def test_rendered_routing_table_covers_every_served_name(rendered, example_fleet):
    gw, path = rendered
    module = import_module(path)
    expected = {name: d.name for d in example_fleet.deployments for name in d.model.names}
    assert module.ROUTES == expected == gw.routes
    assert module.UPSTREAMS["qwen2-5-7b-awq"] == {
        "app": "qwen2-5-7b-awq",
        "modal_env": None,
        "url": None,
        "auth": "api_key",
        "key_env": "FLEETFORM_UPSTREAM_KEY_QWEN2_5_7B_AWQ",
    }
    assert module.UPSTREAMS["llama-3-1-8b-fp8"]["auth"] == "proxy"
    assert (module.UPSTREAM_TIMEOUT, module.REQUEST_TIMEOUT) == (600, 3600)
    assert f'uv_pip_install("{gateway_mod.AIOHTTP_REQUIREMENT}")' in gw.text


def test_gateway_app_is_embedded_verbatim(rendered):
    gw, _ = rendered
    source = Path(gateway_mod.__file__).with_name("gateway_app.py").read_text().rstrip("\n")
    assert source in gw.text
    assert "\nfrom __future__ import" not in source  # it is pasted mid-module


def test_rendered_module_serves_through_its_own_lookup(rendered, monkeypatch):
    """The module's `serve` factory, its `lookup_url` (with Modal's lookup faked) and its embedded
    GatewayApp, end to end against two local upstreams."""
    _, path = rendered
    module = import_module(path)
    monkeypatch.setenv(GATEWAY_KEY_ENV, KEY)
    monkeypatch.setenv(PROXY_TOKEN_ID_ENV, "wk-test")
    monkeypatch.setenv(PROXY_TOKEN_SECRET_ENV, "ws-test")
    monkeypatch.setenv("FLEETFORM_UPSTREAM_KEY_QWEN2_5_7B_AWQ", "beta-key")
    urls, asked = {}, []

    class FakeServer:
        def __init__(self, app_name):
            self.app_name = app_name

            async def aio():
                return urls.get(app_name)

            self.get_url = type("GetUrl", (), {"aio": staticmethod(aio)})()

    def from_name(app_name, name, environment_name=None):
        asked.append((app_name, name, environment_name))
        return FakeServer(app_name)

    monkeypatch.setattr(module.modal.Server, "from_name", from_name)

    async def body():
        async with serve_upstream(alpha_config()) as a, serve_upstream(beta_config()) as b:
            urls.update({"llama-3-1-8b-fp8": a.url, "qwen2-5-7b-awq": b.url})
            app = module.serve.local()  # the @modal.asgi_app factory, run here
            assert isinstance(app, module.GatewayApp)
            llm = await call(app, "POST", "/v1/chat/completions", {"model": "llm", "messages": []})
            awq = await call(app, "POST", "/v1/chat/completions", {"model": "qwen2.5-7b-awq", "messages": []})
            missing = await call(app, "POST", "/v1/chat/completions", {"model": "qwen2.5-7b-instruct"})
            await app.aclose()
            return llm, awq, missing

    llm, awq, missing = run(body())
    assert (llm.status, llm.json()["upstream"]) == (200, "alpha")
    assert (awq.status, awq.json()["upstream"]) == (200, "beta")
    assert missing.status == 503 and missing.json()["error"]["message"] == GENERIC_503
    assert asked == [
        ("llama-3-1-8b-fp8", "serve", None),
        ("qwen2-5-7b-awq", "serve", None),
        ("qwen2-5-7b-instruct", "serve", None),
    ]


def test_render_is_deterministic_and_hashed(example_fleet):
    one = render_gateway(example_fleet.deployments, gateway_from({"enabled": True}))
    two = render_gateway(reversed(example_fleet.deployments), gateway_from({"enabled": True}))
    assert one.text == two.text
    assert one.text.splitlines()[1] == f"# fleetform-hash: {one.content_hash}"
    assert one.text.startswith("# Generated by fleetform ")
    assert one.filename == "fleetform-gateway.py"


def test_workspace_writes_static_urls(example_fleet):
    deployments = list(example_fleet.deployments)
    deployments[0] = dataclasses.replace(deployments[0], modal_env="prod")
    gw = render_gateway(deployments, gateway_from({"enabled": True, "workspace": "acme"}))
    urls = {u.name: u.url for u in gw.upstreams}
    assert urls[deployments[0].name] == f"https://acme-prod--{deployments[0].name}-serve.modal.run"
    assert urls["qwen2-5-7b-awq"] == "https://acme--qwen2-5-7b-awq-serve.modal.run"
    assert static_url("acme", "x", "main") == "https://acme--x-serve.modal.run"


def test_gateway_defaults_come_from_the_schema():
    assert gateway_from({"enabled": True}) == spec.Gateway(
        name="fleetform-gateway",
        api_key_secret="fleetform-gateway-key",
        upstream_secret="fleetform-gateway-upstreams",
        upstream_timeout=600,
        request_timeout=3600,
        min_containers=0,
        max_containers=None,
        target_concurrency=250,
        max_concurrency=400,
        workspace=None,
    )
    assert gateway_from({"enabled": True, "upstream_timeout": "15m", "request_timeout": 7200}).upstream_timeout == 900
    assert gateway_from(None) is None and gateway_from({"enabled": False, "name": "gw"}) is None


def test_schema_examples_validate():
    from renderer.config.schema import load_schema
    from renderer.config.schema import validator as _validator

    gateway = load_schema("fleet.schema.json")["properties"]["gateway"]
    validator = _validator("fleet.schema.json", "/properties/gateway")
    for example in gateway["examples"]:
        assert not list(validator.iter_errors(example))
    for prop, sub in gateway["properties"].items():
        for example in sub.get("examples", []):
            assert not list(validator.iter_errors({prop: example})), (prop, example)
    errors = list(validator.iter_errors({"enabled": True, "upstream_timout": "5m"}))
    assert errors and errors[0].validator == "additionalProperties"


def fleet_with_gateway(tmp_path, gateway: str, deployments: dict[str, str] | None = None) -> Path:
    """The example fleet with `gateway` (YAML lines under `gateway:`) appended to its fleet.yaml."""
    import shutil

    from conftest import REPO

    root = tmp_path / "deployments"
    shutil.copytree(REPO / "deployments", root)
    fleet = root / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "\ngateway:\n  enabled: true\n" + gateway)
    for name, text in (deployments or {}).items():
        (root / name).write_text(text)
    return root


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text))


@pytest.mark.parametrize(
    "gateway, field, problem",
    [
        (
            "  upstream_timeout: 1h\n  request_timeout: 1h\n",
            "request_timeout",
            "request_timeout (3600 s) must be longer than upstream_timeout (3600 s)",
        ),
        ("  upstream_timeout: 2h\n", "upstream_timeout", "request_timeout (3600 s) must be longer"),
        ("  max_concurrency: 100\n", "max_concurrency", "target_concurrency 250 is above max_concurrency 100"),
        ("  request_timeout: 25h\n", "request_timeout", "over Modal's 24 h limit"),
        ("  name: qwen2-5-7b-awq\n", "name", "gateway name 'qwen2-5-7b-awq' is also a deployment's name"),
        ("  min_containers: 5\n  max_containers: 2\n", "min_containers", "min_containers 5 is above max_containers 2"),
        (
            "  target_concurrency: 50\n  max_concurrency: 10\n",
            "target_concurrency",
            "target_concurrency 50 is above max_concurrency 10",
        ),
        ("  workspace: a-very-long-workspace-name-for-the-team\n", "workspace", "over 63 characters"),
    ],
)
def test_gateway_problems_are_diagnostics_at_their_own_field(tmp_path, gateway, field, problem):
    root = fleet_with_gateway(tmp_path, gateway)
    resolved = resolve(load_fleet([str(root)]))
    errors = [d for d in resolved.diagnostics if d.is_error]
    assert len(errors) == 1 or field == "workspace", errors  # one URL a deployment and Modal environment
    for d in errors:
        assert problem in d.message and d.code == "gateway"
        assert (d.mark.file, d.mark.line) == (str(root / "fleet.yaml"), line_of(root / "fleet.yaml", f"{field}:"))
        assert d.path == ("gateway", field)


def test_a_long_host_name_in_one_environment_names_it(tmp_path):
    """The URL depends on the Modal environment: a label that is too long only in prod says so."""
    root = fleet_with_gateway(tmp_path, "  workspace: team-of-twenty-five-chars\n")
    fleet = root / "fleet.yaml"
    fleet.write_text(
        fleet.read_text().replace("modal_environment: llm-prod", "modal_environment: production-east-region")
    )
    errors = [d for d in resolve(load_fleet([str(root)])).diagnostics if d.is_error]
    assert errors and all(d.message.endswith("(in environment prod)") for d in errors)


def test_validate_with_the_gateway_on_loads_no_template_engine(tmp_path):
    import subprocess
    import sys

    root = fleet_with_gateway(tmp_path, "  min_containers: 1\n")
    code = (
        f"import sys, renderer.cli as c; rc = c.main(['validate', {str(root)!r}]); "
        "print(rc, 'jinja2' in sys.modules, any(m.startswith('renderer.codegen.gateway') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stderr


def test_the_config_stage_imports_nothing_from_codegen():
    import ast

    from conftest import REPO

    for path in (REPO / "renderer" / "config").glob("*.py"):
        if path.name == "resolve.py":
            continue  # its vLLM command line (build_vllm_args) moves to vllm_args.py, runtime constant and all
        tree = ast.parse(path.read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not [m for m in imported if m.startswith("renderer.codegen")], path.name
    source = (REPO / "renderer" / "config" / "resolve.py").read_text()
    assert "renderer.codegen.gateway" not in source and "renderer.codegen.render" not in source


def test_values_only_reach_the_module_as_literals(example_fleet):
    cfg = dataclasses.replace(gateway_from({"enabled": True}), upstream_secret="up'); import os  #")
    gw = render_gateway(example_fleet.deployments, cfg)
    assert 'modal.Secret.from_name("up\'); import os  #")' in gw.text
    bad = dataclasses.replace(cfg, api_key_secret="key\nimport os")
    with pytest.raises(RenderError):
        render_gateway(example_fleet.deployments, bad)
