"""The gateway's failure modes (issue 14): big bodies, slow generations, broken answers, leaky errors,
stale connections, logs, routes, CORS and /metrics. Driven in-process against local upstreams on
127.0.0.1, as in test_gateway."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from test_gateway import (
    ENV,
    GENERIC_503,
    alpha_config,
    beta_config,
    call,
    make_gateway,
    run,
)

from renderer.codegen import gateway_app
from renderer.codegen.gateway_app import (
    METRICS_KEY_ENV,
    ROUTED_PATHS,
    GatewayApp,
    GatewayError,
    Upstream,
    UpstreamBroken,
)

from gateway_upstreams import serve_upstream


async def max_loop_lag(work) -> tuple[float, object]:
    """Run `work` while a ticker measures the longest stall of the event loop (seconds)."""
    worst, stop = 0.0, False

    async def tick():
        nonlocal worst
        last = time.monotonic()
        while not stop:
            await asyncio.sleep(0.002)
            now = time.monotonic()
            worst, last = max(worst, now - last - 0.002), now

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.01)
    try:
        result = await work
    finally:
        stop = True
        await ticker
    return worst, result


# --- 1: the body is scanned for `model`, never parsed whole on the event loop ------------------------------


@pytest.mark.parametrize("shape", ["text", "token_ids", "many_strings"])
def test_a_30_mb_body_does_not_stall_the_event_loop(shape):
    size = 30 * 1024 * 1024
    if shape == "text":
        payload = {"messages": [{"role": "user", "content": 'word \\" [x] {y} ' * (size // 17)}]}
    elif shape == "token_ids":
        payload = {"prompt": [10000 + i % 90000 for i in range(size // 7)]}  # 7 bytes a token id
    else:
        payload = {"input": ["ab"] * (size // 6)}
    raw = json.dumps(payload).encode()[:-1] + b', "model": "not-served"}'  # the OpenAI SDK puts model last
    assert 25 * 1024 * 1024 < len(raw) < gateway_app.MAX_BODY_BYTES

    async def body():
        app = make_gateway("http://127.0.0.1:9", None)
        return await max_loop_lag(call(app, "POST", "/v1/chat/completions", raw))

    lag, answer = run(body(), timeout=120)
    assert answer.status == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert lag < 0.1, f"the event loop stalled {lag * 1000:.0f} ms"


def test_bodies_held_at_once_are_bounded():
    """A body over the per-request limit is refused from its Content-Length; bodies held together past
    the memory budget get a 503 the client retries, and the budget is given back afterwards."""

    async def body():
        async with serve_upstream(alpha_config(answer_delay=0.3)) as a:
            app = make_gateway(a.url, None, max_body_bytes=4000, max_buffered_bytes=6000)
            big = {"model": "alpha-chat", "messages": [{"role": "user", "content": "x" * 3000}]}
            too_big = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "p": "x" * 5000})
            first = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", big))
            await asyncio.sleep(0.1)  # the first is waiting for its upstream, its body held
            second = await call(app, "POST", "/v1/chat/completions", big)
            first = await first
            held_after = app.buffered
            third = await call(app, "POST", "/v1/chat/completions", big)
            await app.aclose()
            return too_big, first, second, third, held_after

    too_big, first, second, third, held_after = run(body())
    assert too_big.status == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert first.status == 200 and third.status == 200
    assert second.status == 503 and second.json()["error"]["code"] == "overloaded"
    assert second.headers["retry-after"] == "1"
    assert held_after == 0


def test_the_body_is_released_once_the_upstream_has_it():
    """A stream that lasts does not keep its request body counted (nor referenced) for its whole life."""

    async def body():
        async with serve_upstream(alpha_config(chunks=20, chunk_interval=0.02)) as a:
            app = make_gateway(a.url, None)
            stream = asyncio.ensure_future(
                call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True, "pad": "x" * 100_000})
            )
            await asyncio.sleep(0.2)
            during = app.buffered
            answer = await stream
            await app.aclose()
            return during, answer

    during, answer = run(body())
    assert answer.status == 200 and answer.complete
    assert during == 0


def test_a_big_body_reaches_the_upstream_whole_with_its_length(monkeypatch):
    monkeypatch.setattr(gateway_app, "SCAN_SLICE", 16 * 1024)
    raw = json.dumps({"input": list(range(40_000)), "model": "beta-embed"}).encode()
    assert len(raw) > 4 * gateway_app.SCAN_SLICE  # sent in slices

    async def body():
        async with serve_upstream(beta_config()) as b:
            app = make_gateway(None, b.url, alpha=Upstream("alpha", "http://127.0.0.1:9", "proxy"))
            answer = await call(app, "POST", "/tokenize", raw)
            await app.aclose()
            return b, answer

    b, answer = run(body())
    assert answer.status == 200 and answer.json()["bytes"] == len(raw)
    assert b.requests[0].body == raw and b.requests[0].headers["content-length"] == str(len(raw))
    assert "transfer-encoding" not in b.requests[0].headers


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(["str", "int", "float", "list", "dict", "lit"] if depth < 5 else ["str", "int", "lit"])
    if kind == "str":
        return "".join(
            rng.choice(['"', "\\", "[", "]", "{", "}", ",", ":", "a", "é", "\u2603", "\n", " ", "/"])
            for _ in range(rng.randint(0, 12))
        )
    if kind == "int":
        return rng.randint(-(10**6), 10**6)
    if kind == "float":
        return rng.random() * 1e6
    if kind == "lit":
        return rng.choice([True, False, None])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        random_json(rng, 5) if rng.random() < 0.5 else "model": random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


@pytest.mark.parametrize("slice_bytes", [3, 7, 64, 1 << 18])
def test_the_scan_reads_model_as_a_json_parser_does(monkeypatch, slice_bytes):
    """Against json.loads on random documents (quotes, backslashes and brackets inside strings, nesting,
    duplicate keys, escaped keys, any spacing), with slices small enough to cut every token."""
    monkeypatch.setattr(gateway_app, "SCAN_SLICE", slice_bytes)
    rng = random.Random(slice_bytes)
    checked = 0
    for _ in range(400):
        doc = {k: random_json(rng, 1) for k in ("a", "messages", "b")[: rng.randint(0, 3)]}
        for _ in range(rng.randint(0, 2)):
            doc["model"] = rng.choice(["alpha-chat", 'm/odel "x"', "\u00e9\u2603", 3, None, [1], ""])
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 0, 2]))
        if rng.random() < 0.3 and '"model"' in text:
            text = text.replace('"model"', '"mod\\u0065l"', 1)
        if rng.random() < 0.3 and doc:
            text = text[:-1] + ', "model": "last-wins"}'
        raw = text.encode()
        expected = json.loads(raw).get("model")
        try:
            got = run(gateway_app._json_model(raw))
        except GatewayError as err:
            assert err.status == 400
            assert not (isinstance(expected, str) and expected), (raw, err.body)
        else:
            assert got == expected, raw
            checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "alpha-chat", "x": ' + b"[" * 100_000 + b"]" * 99_999 + b"}",  # 100,000 deep, one short
        b'{"model": "alpha-chat", "x": [' + b'{"a": ' * 50_000 + b"}",
        b'{"model": "alpha-chat"',
        b'{"model": "alpha-chat",}',
        b'{"model": "alpha-chat"} trailing',
        b'{"model": "alpha-\xff\xfe"}',  # not UTF-8
        b'{"model": "alpha-\\ud800-\\x"}',  # a bad escape
        b'\xff\xfe{\x00"\x00m\x00',
        b"",
        b"   ",
        b'{"model": 7}',
        b'{"model": null}',
        b'{"model": ""}',
        b'{"model" "alpha-chat"}',
        b'{model: "alpha-chat"}',
        b'{"x": tru, "model": "alpha-chat"}',
        b'{"x": "unterminated, "model": "alpha-chat"}',
        b'{"model": "alpha-chat", "x": "' + b"a" * 300_000,
        b"{" + b'"k": 1, ' * 1001 + b'"model": "alpha-chat"}',  # walking a million keys would only burn CPU
    ],
)
def test_every_unreadable_body_is_an_openai_400(raw):
    log = []
    app = make_gateway("http://127.0.0.1:9", None, log=log.append)
    answer = run(call(app, "POST", "/v1/chat/completions", raw))
    assert answer.status == 400, answer.body[:200]
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert answer.json()["error"]["code"] in ("invalid_json", "missing_model", "invalid_model")
    assert json.loads(log[-1])["status"] == 400


def test_a_deep_but_valid_body_is_routed_not_a_500():
    raw = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "model": "nope"}'
    answer = run(call(make_gateway("http://127.0.0.1:9", None), "POST", "/v1/completions", raw))
    assert answer.status == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_an_unexpected_error_is_an_openai_500_and_a_log_line(monkeypatch):
    log = []
    app = make_gateway("http://127.0.0.1:9", None, log=log.append)

    def broken(*_):
        raise KeyError("surprise")

    monkeypatch.setattr(app, "_upstream_headers", broken)
    answer = run(call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}))
    assert answer.status == 500 and answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == {
        "message": "internal gateway error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    line = json.loads(log[-1])
    assert (line["model"], line["upstream"], line["status"], line["error"]) == (
        "alpha-chat",
        "alpha",
        500,
        "KeyError: 'surprise'",
    )


# --- 2: the cold-start wait is not the generation's time limit ---------------------------------------------


def test_a_long_non_streamed_generation_is_not_a_cold_start_503():
    async def body():
        async with serve_upstream(alpha_config(answer_delay=1.0)) as a:
            app = make_gateway(a.url, None, upstream_timeout=0.3)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "messages": []})
            await app.aclose()
            return a, answer

    a, answer = run(body())
    assert answer.status == 200 and answer.json()["upstream"] == "alpha"
    assert len(a.requests) == 1  # one generation, never restarted


def test_an_upstream_silent_past_read_timeout_is_a_504_without_retry_after():
    async def body():
        async with serve_upstream(alpha_config(answer_delay=2.0)) as a:
            app = make_gateway(a.url, None, upstream_timeout=5, read_timeout=0.3)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "messages": []})
            await app.aclose()
            return a, answer

    a, answer = run(body())
    assert answer.status == 504 and answer.json()["error"]["code"] == "upstream_timeout"
    assert "retry-after" not in answer.headers  # an SDK must not start the generation again at once
    assert len(a.requests) == 1


# --- 3: a broken answer is visibly broken ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_a_non_streamed_answer_cut_short_is_not_a_clean_200(mode):
    log = []

    async def body():
        async with serve_upstream(alpha_config(break_json_after=300, break_mode=mode)) as a:
            app = make_gateway(a.url, None, log=log.append)
            answer, raised = None, None

            async def guarded(scope, receive, send):
                nonlocal raised
                try:
                    await app(scope, receive, send)
                except UpstreamBroken as exc:  # the ASGI server drops the connection on this
                    raised = exc

            answer = await call(guarded, "POST", "/v1/chat/completions", {"model": "alpha-chat", "messages": []})
            await app.aclose()
            return answer, raised

    answer, raised = run(body())
    assert answer.status == 200 and not answer.complete and raised is not None
    assert len(answer.body) == 300
    if mode == "length":
        assert int(answer.headers["content-length"]) > 300  # the client sees the answer is short
    line = json.loads(log[-1])
    assert line["upstream"] == "alpha" and "broke off its answer after 300 bytes" in line["error"]


def test_content_length_of_a_whole_answer_is_kept():
    async def body():
        async with serve_upstream(alpha_config()) as a:
            app = make_gateway(a.url, None)
            answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "messages": []})
            await app.aclose()
            return answer

    answer = run(body())
    assert answer.complete and int(answer.headers["content-length"]) == len(answer.body)


# --- 4: 503s name no host ----------------------------------------------------------------------------------------


def test_unavailable_answers_leak_no_host_or_deployment():
    from gateway_upstreams import free_port

    port = free_port()
    log = []
    app = make_gateway(f"http://127.0.0.1:{port}", None, upstream_timeout=0.2, log=log.append)

    async def body():
        answer = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
        await app.aclose()
        return answer

    answer = run(body())
    assert answer.status == 503 and answer.json()["error"]["message"] == GENERIC_503
    assert str(port) not in answer.body.decode() and 'alpha"' not in answer.body.decode()
    assert str(port) in json.loads(log[-1])["error"]  # the details are in the log


# --- 7: a stale pooled connection is retried at once -----------------------------------------------------------


async def serve_closing_keepalive():
    """An upstream that answers each connection's first request with keep-alive, then closes the
    connection on its second request without answering (as a server closing an idle connection
    while the client reuses it)."""
    body = json.dumps({"upstream": "alpha", "choices": []}).encode()
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def handle(reader, writer):
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if served:
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_a_stale_pooled_connection_is_retried_at_once_not_backed_off():
    async def body():
        server = await serve_closing_keepalive()
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        app = GatewayApp({"alpha-chat": Upstream("alpha", url, "proxy")}, environ=ENV, backoff_initial=2.0)
        first = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
        started = time.monotonic()
        second = await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat"})
        elapsed = time.monotonic() - started
        await app.aclose()
        server.close()
        await server.wait_closed()
        return first, second, elapsed

    first, second, elapsed = run(body())
    assert first.status == second.status == 200
    assert elapsed < 1.0, f"{elapsed:.2f} s: treated as a cold start"


# --- 8: every log line says which model and upstream ------------------------------------------------------------


def test_log_lines_carry_model_upstream_ttft_and_duration():
    log = []

    async def body():
        async with serve_upstream(alpha_config(chunks=3, chunk_interval=0.05)) as a:
            app = make_gateway(a.url, "http://127.0.0.1:9", upstream_timeout=0.2, log=log.append)
            await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True})
            await call(app, "POST", "/v1/embeddings", {"model": "beta-embed", "input": "x"})  # beta is down
            await call(app, "POST", "/v1/embeddings", {"model": "no-such-model"})
            await app.aclose()

    run(body())
    ok, down, unknown = (json.loads(line) for line in log)
    assert (ok["model"], ok["upstream"], ok["status"], ok["error"]) == ("alpha-chat", "alpha", 200, None)
    assert 0 < ok["ttft"] < ok["seconds"] and ok["bytes_out"] > 0 and ok["bytes_in"] > 0
    assert (down["model"], down["upstream"], down["status"]) == ("beta-embed", "beta", 503)
    assert "Cannot connect" in down["error"] or "127.0.0.1:9" in down["error"]
    assert (unknown["model"], unknown["upstream"], unknown["status"]) == ("no-such-model", None, 404)


# --- 9: routes: every OpenAI-compatible route vLLM serves --------------------------------------------------------


def test_every_routed_path_reaches_the_model_s_deployment():
    async def body():
        async with serve_upstream(alpha_config()) as a, serve_upstream(beta_config()) as b:
            app = make_gateway(a.url, b.url)
            answers = {}
            for path, kind in ROUTED_PATHS.items():
                if kind == "json":
                    answers[path] = await call(app, "POST", path, {"model": "beta-embed", "input": "x"})
                else:
                    boundary = "b0undary"
                    form = (
                        (
                            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                            f"Content-Type: audio/wav\r\n\r\n"
                        ).encode()
                        + b"RIFF\x00\xff--b0und"
                        + (
                            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
                            f"beta-embed\r\n--{boundary}--\r\n"
                        ).encode()
                    )
                    answers[path] = await call(
                        app, "POST", path, form, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
                    )
            await app.aclose()
            return answers

    answers = run(body())
    assert {"/v1/responses", "/v1/audio/transcriptions", "/tokenize", "/v1/rerank", "/pooling"} <= set(answers)
    for path, answer in answers.items():
        assert answer.status == 200, (path, answer.body)
        assert answer.json()["upstream"] == "beta", path
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            assert answer.json()["path"] == path


def test_multipart_without_a_model_is_400():
    form = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nxx\r\n--b--\r\n'
    app = make_gateway("http://127.0.0.1:9", None)
    answer = run(
        call(app, "POST", "/v1/audio/transcriptions", form, headers={"content-type": "multipart/form-data; boundary=b"})
    )
    assert answer.status == 400 and answer.json()["error"]["code"] == "missing_model"


# --- CORS -----------------------------------------------------------------------------------------------------------


def test_cors_preflight_and_answers_for_allowed_origins_only():
    async def body():
        async with serve_upstream(alpha_config()) as a:
            app = make_gateway(a.url, None, cors_origins=("https://app.example",))
            pre = await call(
                app,
                "OPTIONS",
                "/v1/chat/completions",
                key=None,
                headers={"origin": "https://app.example", "access-control-request-method": "POST"},
            )
            ok = await call(
                app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}, headers={"origin": "https://app.example"}
            )
            other = await call(
                app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}, headers={"origin": "https://evil.example"}
            )
            denied = await call(
                app,
                "POST",
                "/v1/chat/completions",
                {"model": "alpha-chat"},
                key="bad",
                headers={"origin": "https://app.example"},
            )
            await app.aclose()
            return pre, ok, other, denied

    pre, ok, other, denied = run(body())
    assert pre.status == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    assert ok.status == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
    assert other.status == 200 and "access-control-allow-origin" not in other.headers
    assert denied.status == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"


def test_without_cors_a_preflight_is_refused():
    app = make_gateway("http://127.0.0.1:9", None)
    answer = run(call(app, "OPTIONS", "/v1/chat/completions", key=None, headers={"origin": "https://a.example"}))
    assert answer.status in (401, 405) and "access-control-allow-origin" not in answer.headers


# --- /metrics -------------------------------------------------------------------------------------------------------


def test_metrics_count_requests_by_model_status_ttft_and_bytes(monkeypatch):
    monkeypatch.setenv("MODAL_TASK_ID", "task-7")

    async def body():
        async with serve_upstream(alpha_config(chunks=3)) as a:
            env = {**ENV, METRICS_KEY_ENV: "scrape-key"}
            app = make_gateway(a.url, "http://127.0.0.1:9", upstream_timeout=0.1, environ=env)
            for _ in range(2):
                await call(app, "POST", "/v1/chat/completions", {"model": "alpha-chat", "stream": True})
            await call(app, "POST", "/v1/embeddings", {"model": "beta-embed"})
            await call(app, "POST", "/v1/embeddings", {"model": "x" * 1000})
            anonymous = await call(app, "GET", "/metrics", key=None)
            scraped = await call(app, "GET", "/metrics", key="scrape-key")
            with_gateway_key = await call(app, "GET", "/metrics")
            scrape_key_for_chat = await call(
                app, "POST", "/v1/chat/completions", {"model": "alpha-chat"}, key="scrape-key"
            )
            await app.aclose()
            return anonymous, scraped, with_gateway_key, scrape_key_for_chat

    anonymous, scraped, with_gateway_key, scrape_key_for_chat = run(body())
    assert anonymous.status == 401 and scrape_key_for_chat.status == 401
    assert scraped.status == with_gateway_key.status == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = scraped.body.decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    alpha = 'model="alpha-chat",upstream="alpha"'
    assert lines[f'fleetform_gateway_requests_total{{{alpha},status="200"}}'] == "2"
    assert lines['fleetform_gateway_requests_total{model="beta-embed",upstream="beta",status="503"}'] == "1"
    assert lines['fleetform_gateway_requests_total{model="",upstream="",status="404"}'] == "1"  # no name as label
    assert lines[f"fleetform_gateway_in_flight{{{alpha}}}"] == "0"
    assert lines[f"fleetform_gateway_upstream_ttft_seconds_count{{{alpha}}}"] == "2"
    assert lines[f'fleetform_gateway_upstream_ttft_seconds_bucket{{{alpha},le="+Inf"}}'] == "2"
    assert int(lines[f"fleetform_gateway_bytes_sent_total{{{alpha}}}"]) > 100
    assert int(lines[f"fleetform_gateway_bytes_received_total{{{alpha}}}"]) > 20
    assert "x" * 100 not in text
    assert lines['fleetform_gateway_info{container="task-7"}'] == "1"  # which container answered the scrape
    assert 0 < time.time() - float(lines["fleetform_gateway_start_time_seconds"]) < 60


# --- fleet.yaml -> the rendered module ---------------------------------------------------------------------------


def test_cors_and_timeouts_reach_the_rendered_app(example_fleet, tmp_path, monkeypatch):
    from renderer.codegen.gateway import render_gateway
    from renderer.config.resolve import gateway_from

    from modal_objects import import_module

    config = gateway_from(
        {
            "enabled": True,
            "cors_origins": ["https://chat.example.com", "http://localhost:3000"],
            "upstream_timeout": "5m",
            "request_timeout": "2h",
        }
    )
    assert config.cors_origins == ("https://chat.example.com", "http://localhost:3000")
    gw = render_gateway(example_fleet.deployments, config)
    path = tmp_path / gw.filename
    path.write_text(gw.text)
    module = import_module(path)
    app = module.serve.local()
    assert app.cors_origins == config.cors_origins
    assert (app.upstream_timeout, app.read_timeout) == (300, 7200)  # a generation may take the request's time
    assert gateway_from({"enabled": True}).cors_origins == ()


@pytest.mark.parametrize(
    "origins, ok",
    [
        (["*"], True),
        (["https://a.example:8443"], True),
        (["https://a.example/path"], False),
        (["a.example"], False),
        (["https://a.example", "https://a.example"], False),
    ],
)
def test_cors_origins_are_checked_by_the_schema(origins, ok):
    from renderer.config.schema import validator as _validator

    validator = _validator("fleet.schema.json", "/properties/gateway")
    assert (not list(validator.iter_errors({"enabled": True, "cors_origins": origins}))) == ok
