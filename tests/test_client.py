"""Offline tests of renderer.endpoint.client against the local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import pytest
from rich.console import Console

from renderer.cli.views import render_smoke_report
from renderer.endpoint.client import (
    JAR_JAR,
    PIRATE,
    SVD,
    ClientError,
    Endpoint,
    FailureKind,
    SmokeReport,
    auth_headers,
    http_error,
    run_smoke,
    smoke_test,
    wait_for_health,
)

from openai_server import Fault, ServerConfig, serve

MODEL = "test-model"
PROXY_ENV = {"MODAL_PROXY_TOKEN_ID": "wk-1", "MODAL_PROXY_TOKEN_SECRET": "ws-1"}


def smoke(config: ServerConfig, names: list[str] | None = None, endpoint: Endpoint | None = None, **kw):
    """Run a smoke test against a fresh server; return (report, server state).

    ``endpoint`` supplies auth only: its URL is replaced by the server's.
    """

    async def go():
        async with serve(config) as srv:
            auth = endpoint or Endpoint(srv.url)
            ep = Endpoint(srv.url, auth.headers, auth.auth_hint)
            kw.setdefault("max_tokens", 8)
            kw.setdefault("health_interval", 0.01)
            kw.setdefault("health_timeout", 3.0)  # a regression must not hang the suite
            kw.setdefault("request_timeout", 5.0)
            report = await smoke_test(ep, [MODEL] if names is None else names, **kw)
            return report, srv.state

    return asyncio.run(go())


def step(report: SmokeReport, name: str):
    return next(s for s in report.steps if s.name == name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- auth and URLs


def test_auth_headers_per_kind():
    assert auth_headers("none", {}) == {}
    assert auth_headers("proxy", PROXY_ENV) == {"Modal-Key": "wk-1", "Modal-Secret": "ws-1"}
    assert auth_headers("api_key", {"FLEETFORM_API_KEY": "k"}) == {"Authorization": "Bearer k"}
    assert auth_headers("api_key", {"MY_KEY": "z"}, api_key_var="MY_KEY") == {"Authorization": "Bearer z"}


@pytest.mark.parametrize(
    ("kind", "env", "needle"),
    [
        ("proxy", {}, "MODAL_PROXY_TOKEN_ID and MODAL_PROXY_TOKEN_SECRET"),
        ("proxy", {"MODAL_PROXY_TOKEN_ID": "x"}, "MODAL_PROXY_TOKEN_SECRET"),
        ("api_key", {}, "FLEETFORM_API_KEY"),
        ("bogus", {}, "unknown auth kind"),
    ],
)
def test_auth_headers_missing_env_is_clear(kind, env, needle):
    with pytest.raises(ClientError) as info:
        auth_headers(kind, env)
    assert needle in str(info.value)
    assert info.value.kind is (FailureKind.OTHER if kind == "bogus" else FailureKind.AUTH)


def test_endpoint_url_tolerates_slash_and_v1():
    for base in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert Endpoint(base).url("/v1/models") == "http://h:1/v1/models"


@pytest.mark.parametrize(
    ("status", "body", "kind", "needle"),
    [
        (401, "modal-http: missing credentials", FailureKind.AUTH, "authentication failed"),
        (403, "", FailureKind.AUTH, "HTTP 403"),
        (404, '{"error": {"message": "The model `x` does not exist."}}', FailureKind.NOT_FOUND, "`x` does not exist"),
        (400, '{"object": "error", "message": "too long"}', FailureKind.BAD_REQUEST, "too long"),
        (422, '{"detail": "field required"}', FailureKind.BAD_REQUEST, "field required"),
        (503, "<html> upstream   down </html>", FailureKind.SERVER_ERROR, "<html> upstream down </html>"),
        (302, "", FailureKind.OTHER, "unexpected HTTP 302"),
    ],
)
def test_http_error_mapping(status, body, kind, needle):
    err = http_error(status, body, Endpoint.from_env("http://x", "proxy", PROXY_ENV), "GET /health")
    assert err.kind is kind and err.status == status
    assert needle in err.message
    if kind is FailureKind.AUTH:
        assert "MODAL_PROXY_TOKEN_ID/MODAL_PROXY_TOKEN_SECRET" in err.message


# ---------------------------------------------------------------- smoke test: success


def test_smoke_success_runs_every_step_with_reference_prompts():
    report, state = smoke(ServerConfig(ttft_ms=40, itl_ms=10, output_tokens=5))
    assert report.ok, report.to_dict()
    assert [s.name for s in report.steps] == ["health", "models", "chat", "stream 1", "stream 2"]
    # The chat step and both streams used the reference example's prompts.
    systems = [r["messages"][0]["content"] for r in state.requests]
    assert systems == [PIRATE, PIRATE, JAR_JAR]
    assert all(r["messages"][-1] == {"role": "user", "content": SVD} for r in state.requests)
    assert [r["stream"] for r in state.requests] == [False, True, True]
    assert all(r["stream_options"] == {"include_usage": True} for r in state.requests[1:])
    for name in ("stream 1", "stream 2"):
        s = step(report, name)
        assert s.text == "tok0 tok1 tok2 tok3 tok4 "
        assert s.completion_tokens == 5  # from usage
        assert 0.035 <= s.ttft_s <= 0.09
        assert 60 <= s.tokens_per_s <= 110  # one token per 10 ms
    assert step(report, "stream 2").prompt_tokens == len((JAR_JAR + " " + SVD).split())
    chat = step(report, "chat")
    assert chat.completion_tokens == 5 and chat.text.startswith("tok0")
    json.dumps(report.to_dict())  # JSON-ready


def test_smoke_custom_prompt_and_proxy_auth():
    cfg = ServerConfig(require_headers={"Modal-Key": "wk-1", "Modal-Secret": "ws-1"})
    report, state = smoke(cfg, endpoint=Endpoint.from_env("http://unused", "proxy", PROXY_ENV), prompts=["hi there"])
    assert report.ok, report.to_dict()
    assert [s.name for s in report.steps][-1] == "stream"
    assert state.requests[-1]["messages"] == [{"role": "user", "content": "hi there"}]


def test_run_smoke_is_a_blocking_wrapper():
    report = run_smoke(Endpoint(f"http://127.0.0.1:{free_port()}"), [MODEL], health_timeout=0.05)
    assert isinstance(report, SmokeReport) and step(report, "health").failure is FailureKind.CONNECT


def test_smoke_without_names_takes_the_servers():
    report, state = smoke(ServerConfig(models=["a", "b"]), names=[])
    assert report.ok and report.model == "a" and report.available_models == ["a", "b"]
    assert {r["model"] for r in state.requests} == {"a"}


def test_smoke_without_names_against_a_server_serving_none_fails_the_models_step():
    report, _ = smoke(ServerConfig(models=[]), names=[])
    assert not report.ok and [s.name for s in report.steps] == ["health", "models"]
    assert step(report, "models").error == "the server lists no model at /v1/models"


def test_render_smoke_report_shows_steps_and_texts():
    report, _ = smoke(ServerConfig(output_tokens=3))
    console = Console(file=io.StringIO(), width=200, record=True)
    render_smoke_report(report, console)
    out = console.export_text()
    assert "passed" in out and "stream 2" in out and "tok0 tok1 tok2" in out and JAR_JAR in out


def test_events_split_across_network_reads_are_reassembled():
    report, _ = smoke(ServerConfig(ttft_ms=5, itl_ms=5, output_tokens=6, split_writes=True))
    assert report.ok, report.to_dict()
    s = step(report, "stream 1")
    assert s.text == "tok0 tok1 tok2 tok3 tok4 tok5 " and s.completion_tokens == 6


@pytest.mark.parametrize(
    ("line", "kind", "needle"),
    [
        (b'data: {"object": "chat.completion", "choices": []}', FailureKind.BAD_STREAM, "not 'chat.completion.chunk'"),
        (b"data: [1, 2]", FailureKind.BAD_STREAM, "not a JSON object"),
        (b"data: \xff\xfe", FailureKind.BAD_STREAM, "not JSON"),
        (b'data: {"object": "error", "message": "oom"}', FailureKind.SERVER_ERROR, "oom"),
    ],
)
def test_stream_parser_rejects_bad_events(line, kind, needle):
    from renderer.endpoint.client import _EventParser

    with pytest.raises(ClientError) as info:
        _EventParser(True).line(line)
    assert info.value.kind is kind and needle in info.value.message


def test_stream_parser_skips_role_opener_and_non_data_lines():
    from renderer.endpoint.client import _EventParser

    def chunk(delta: dict, usage: dict | None = None) -> bytes:
        body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}] if delta else []}
        if usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode()

    parser = _EventParser(True)
    lines = [
        b": ping",
        b"event: message",
        chunk({"role": "assistant", "content": ""}),
        b"",
        chunk({"content": "a"}),
        chunk({"reasoning_content": "r"}),
        chunk({}, {"completion_tokens": 2}),
        b"data: [DONE]",
    ]
    assert [parser.line(x) for x in lines] == [False] * 7 + [True]
    result = parser.result(0.0)
    assert result.text == "a" and len(result.itl) == 1 and result.output_tokens == 2


# ---------------------------------------------------------------- smoke test: failures


def test_smoke_auth_failure_names_proxy_variables():
    cfg = ServerConfig(require_headers={"Modal-Key": "right", "Modal-Secret": "right"})
    report, _ = smoke(cfg, endpoint=Endpoint.from_env("http://unused", "proxy", PROXY_ENV), health_timeout=5)
    assert not report.ok and [s.name for s in report.steps] == ["health"]
    health = step(report, "health")
    assert health.failure is FailureKind.AUTH and health.status == 401
    assert "authentication failed" in health.error
    assert "MODAL_PROXY_TOKEN_ID/MODAL_PROXY_TOKEN_SECRET" in health.error
    assert health.seconds < 2  # not retried until the health timeout


def test_smoke_auth_failure_names_api_key_variable():
    cfg = ServerConfig(require_headers={"Authorization": "Bearer right"})
    ep = Endpoint.from_env("http://unused", "api_key", {"FLEETFORM_API_KEY": "wrong"})
    report, _ = smoke(cfg, endpoint=ep)
    assert step(report, "health").failure is FailureKind.AUTH
    assert "FLEETFORM_API_KEY" in step(report, "health").error


def test_smoke_connection_refused():
    async def go():
        return await smoke_test(
            Endpoint(f"http://127.0.0.1:{free_port()}"), [MODEL], health_timeout=0.2, health_interval=0.05
        )

    report = asyncio.run(go())
    health = step(report, "health")
    assert not report.ok and health.failure is FailureKind.CONNECT
    assert "cannot connect to 127.0.0.1" in health.error and "not healthy after 0.2s" in health.error


def test_smoke_waits_for_health_then_passes():
    report, state = smoke(ServerConfig(health_failures=3))
    assert report.ok and state.health_count == 4


def test_smoke_health_never_ready_reports_last_server_error():
    report, state = smoke(ServerConfig(health_failures=10**6), health_timeout=0.2, health_interval=0.02)
    health = step(report, "health")
    assert health.failure is FailureKind.SERVER_ERROR and "HTTP 503" in health.error
    assert "engine starting" in health.error and state.health_count >= 2


def test_smoke_missing_served_name_is_reported():
    report, _ = smoke(ServerConfig(models=[MODEL]), names=[MODEL, "alias"])
    assert report.missing_models == ["alias"]
    models = step(report, "models")
    assert models.failure is FailureKind.NOT_FOUND and "does not serve alias" in models.error
    assert step(report, "chat").ok and step(report, "stream 1").ok  # first name is served


def test_smoke_unknown_model_404_lists_served_names():
    report, _ = smoke(ServerConfig(models=["a-model", "b-model"]), names=["nope"])
    chat = step(report, "chat")
    assert chat.failure is FailureKind.NOT_FOUND and chat.status == 404
    assert "`nope` does not exist" in chat.error and "the server serves: a-model, b-model" in chat.error
    assert step(report, "stream 2").failure is FailureKind.NOT_FOUND


def test_smoke_server_error_quotes_the_body():
    report, _ = smoke(ServerConfig(fault=Fault.SERVER_ERROR))
    for name in ("chat", "stream 1", "stream 2"):
        s = step(report, name)
        assert s.failure is FailureKind.SERVER_ERROR and s.status == 500
        assert "simulated engine failure" in s.error
    assert step(report, "health").ok and step(report, "models").ok


def test_smoke_truncated_stream():
    report, _ = smoke(ServerConfig(fault=Fault.TRUNCATE, output_tokens=6))
    assert step(report, "chat").ok
    s = step(report, "stream 1")
    assert s.failure is FailureKind.BAD_STREAM and "without `data: [DONE]`" in s.error


def test_smoke_malformed_json():
    report, _ = smoke(ServerConfig(fault=Fault.BAD_JSON, output_tokens=6))
    assert step(report, "chat").failure is FailureKind.BAD_STREAM
    assert "malformed chat completion" in step(report, "chat").error
    s = step(report, "stream 2")
    assert s.failure is FailureKind.BAD_STREAM and "chunk is not JSON" in s.error


def test_smoke_hanging_stream_times_out():
    t0 = time.perf_counter()
    report, _ = smoke(ServerConfig(fault=Fault.HANG, output_tokens=6), request_timeout=0.3)
    for name in ("chat", "stream 1", "stream 2"):
        s = step(report, name)
        assert s.failure is FailureKind.TIMEOUT and "timed out" in s.error
    assert time.perf_counter() - t0 < 3


def test_render_smoke_report_failure():
    report, _ = smoke(ServerConfig(fault=Fault.SERVER_ERROR))
    console = Console(file=io.StringIO(), width=250, record=True)
    render_smoke_report(report, console)
    out = console.export_text()
    assert "FAILED" in out and "server_error" in out and "simulated engine failure" in out
    assert report.to_dict()["steps"][2]["failure"] == "server_error"


# ---------------------------------------------------------------- wait_for_health


def test_wait_for_health_returns_after_retries():
    async def go():
        async with serve(ServerConfig(health_failures=2)) as srv:
            waited = await wait_for_health(Endpoint(srv.url), timeout=5, interval=0.05)
            return waited, srv.state.health_count

    waited, count = asyncio.run(go())
    assert count == 3 and 0.09 <= waited < 2


def test_wait_for_health_404_is_fatal():
    async def go():
        async with serve(ServerConfig()) as srv:
            t0 = time.perf_counter()
            with pytest.raises(ClientError) as info:
                await wait_for_health(Endpoint(srv.url + "/nested"), timeout=5, interval=0.05)
            return info.value, time.perf_counter() - t0

    err, took = asyncio.run(go())
    assert err.kind is FailureKind.NOT_FOUND and took < 1
