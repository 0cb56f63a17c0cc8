"""`fleetform run` through the real CLI (in-process), against the in-memory backend of fake_backend.py,
whose ephemeral app's URL is the in-suite OpenAI server: the app is stopped whatever ends the run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from renderer import cli, modal_api

from conftest import REPO
from fake_backend import FakeBackend
from openai_server import Fault, ServerConfig, serve

NAME = "llama-3-1-8b-fp8"  # auth: proxy (the example fleet)
MODELS = ["RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "llm"]  # its served names
MODAL_ENV = "llm-dev"  # the Modal environment of the fleet environment `dev`


@contextmanager
def openai_server(config: ServerConfig) -> Iterator[str]:
    """The test server on its own thread and loop, for a CLI that runs asyncio.run itself."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    url: list[str] = []

    async def main() -> None:
        async with serve(config) as server:
            url.append(server.url)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-test")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", "ws-test")
    fake = FakeBackend()
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    return fake


def run(capsys, *extra: str) -> tuple[int, dict, str]:
    code = cli.main(["run", NAME, "--env", "dev", "--format", "json", "--max-tokens", "4", *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else {}), err


def stopped_once(fake: FakeBackend) -> bool:
    (started,) = fake.calls_of("ephemeral")
    return fake.calls_of("ephemeral_stop") == [("ephemeral_stop", *started[1:])] and fake.ephemeral_apps[0].stopped


def test_a_passing_run_tests_the_ephemeral_app_and_stops_it(backend, capsys):
    with openai_server(ServerConfig(models=MODELS, output_tokens=3)) as url:
        backend.ephemeral_url = url
        code, doc, err = run(capsys)
    assert code == 0 and doc["ok"] is True and doc["outcome"] == "passed", (doc, err)
    (call,) = backend.calls_of("ephemeral")
    assert call[1].startswith(f"{NAME}-run-") and call[1] != NAME and call[2] == MODAL_ENV
    assert stopped_once(backend) and doc["stopped"] is True
    assert [s["step"] for s in doc["steps"]][:3] == ["start", "health", "models"] and doc["steps"][-1]["step"] == "stop"
    assert doc["smoke"]["ok"] is True and doc["url"] == url and doc["fleet_env"] == "dev"
    from renderer.gpus import GPU_TYPES

    assert doc["gpu"] == "B200 x 1" and doc["usd_per_hour"] == round(GPU_TYPES["B200"].usd_per_hour, 4)
    assert f"at ${doc['usd_per_hour']:,.2f}/hour" in err  # the price, said before it started
    assert err.index("/hour") < err.index("starting ")


def test_a_failing_test_stops_the_app_and_exits_non_zero(backend, capsys):
    with openai_server(ServerConfig(models=MODELS, fault=Fault.SERVER_ERROR)) as url:
        backend.ephemeral_url = url
        code, doc, _ = run(capsys)
    assert code == 1 and doc["outcome"] == "failed" and doc["error"].startswith("chat: ") and "500" in doc["error"]
    assert stopped_once(backend) and doc["stopped"] is True


def test_a_start_up_timeout_stops_the_app_and_says_so(backend, capsys):
    with openai_server(ServerConfig(models=MODELS, health_failures=10_000)) as url:
        backend.ephemeral_url = url
        code, doc, _ = run(capsys, "--startup-timeout", "1")
    assert code == 1 and doc["outcome"] == "startup_timeout", doc
    assert "not healthy within the startup timeout (1 s)" in doc["error"] and "the app was stopped" in doc["error"]
    assert stopped_once(backend)


def test_a_start_slower_than_the_startup_timeout_is_cut_short_and_stopped(backend, capsys):
    backend.ephemeral_delay = 5.0
    code, doc, _ = run(capsys, "--startup-timeout", "1")
    assert code == 1 and doc["outcome"] == "startup_timeout" and doc["total_s"] < 3, doc
    assert "not started within the startup timeout (1 s); the app was stopped" in doc["error"]
    assert stopped_once(backend)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # put back as it was


def test_ctrl_c_stops_the_app(backend, capsys):
    with openai_server(ServerConfig(models=MODELS, health_failures=10_000)) as url:
        backend.ephemeral_url = url
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            code, doc, _ = run(capsys, "--startup-timeout", "30")
        finally:
            timer.cancel()
    assert code == 130 and doc["outcome"] == "interrupted" and doc["stopped"] is True, doc
    assert stopped_once(backend)


def test_sigterm_stops_the_app_as_ctrl_c_does(backend, capsys):
    with openai_server(ServerConfig(models=MODELS, health_failures=10_000)) as url:
        backend.ephemeral_url = url
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            code, doc, _ = run(capsys, "--startup-timeout", "30")
        finally:
            timer.cancel()
    assert code == 130 and doc["outcome"] == "interrupted" and stopped_once(backend)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_a_crash_of_the_test_stops_the_app(backend, capsys, monkeypatch):
    from renderer.endpoint import client

    def crash(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(client, "run_smoke", crash)
    code, doc, _ = run(capsys)
    assert code == 1 and doc["outcome"] == "error" and "the test crashed: unexpected RuntimeError: boom" in doc["error"]
    assert stopped_once(backend)


def test_keep_holds_it_up_then_stops_it_and_says_how_to_stop_it(backend, capsys):
    with openai_server(ServerConfig(models=MODELS)) as url:
        backend.ephemeral_url = url
        code, doc, err = run(capsys, "--keep", "0.01")  # 0.6 s
    assert code == 0 and doc["kept_minutes"] == 0.01 and stopped_once(backend)
    assert f"keeping {url} up for 0.01 min" in err and f"modal app stop ap-{doc['run_name']} --env {MODAL_ENV}" in err


def test_ctrl_c_during_keep_ends_it_sooner_and_the_run_still_passes(backend, capsys):
    with openai_server(ServerConfig(models=MODELS)) as url:
        backend.ephemeral_url = url
        timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            code, doc, _ = run(capsys, "--keep", "1")
        finally:
            timer.cancel()
    assert code == 0 and doc["outcome"] == "passed" and 0 < doc["kept_minutes"] < 0.1, doc
    assert stopped_once(backend)


def test_max_cost_per_hour_refuses_a_dearer_run_before_any_modal_call(backend, capsys):
    code, doc, err = run(capsys, "--max-cost-per-hour", "0.5")
    assert code == 1 and doc["outcome"] == "refused" and backend.calls_of("ephemeral") == []
    assert "above --max-cost-per-hour $0.50; nothing was started" in err


def test_without_credentials_nothing_starts(backend, capsys):
    backend.credentials = False
    code, _, err = run(capsys)
    assert code == 1 and backend.calls == [] and "no Modal credentials found" in err


def test_a_start_failure_is_one_line(backend, capsys):
    backend.ephemeral_error = modal_api.CapacityError("Modal refused for lack of quota")
    code, doc, _ = run(capsys)
    assert code == 1 and doc["outcome"] == "error" and doc["error"] == "Modal refused for lack of quota"
    assert doc["stopped"] is False and backend.calls_of("ephemeral_stop") == []


def test_text_output_says_the_outcome(backend, capsys):
    with openai_server(ServerConfig(models=MODELS)) as url:
        backend.ephemeral_url = url
        code = cli.main(["run", NAME, "--env", "dev", "--max-tokens", "4"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0 and f"{NAME}: passed (ran as {NAME}-run-" in out and "; stopped;" in out


def test_help_says_how_a_run_never_outlives_its_timeout(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "heartbeat" in text and "--max-cost-per-hour" in text and "--keep MINUTES" in text


def test_the_docs_name_every_key_of_the_json_document(backend, capsys):
    with openai_server(ServerConfig(models=MODELS)) as url:
        backend.ephemeral_url = url
        _, doc, _ = run(capsys)
    text = (REPO / "docs" / "deploying.md").read_text(encoding="utf-8")
    section = text[text.index("## `fleetform run NAME`") :]
    assert [k for k in [*doc, *doc["steps"][0]] if f"`{k}`" not in section and f'"{k}"' not in section] == []
    assert f"`{doc['outcome']}`" in section and "AppClientDisconnect" in section
