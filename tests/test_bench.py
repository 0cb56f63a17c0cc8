"""Offline tests of renderer.endpoint.bench: metric math, load shapes and failure accounting."""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from renderer.cli.views import render_bench_results
from renderer.endpoint.bench import (
    BenchConfig,
    RequestRecord,
    Stats,
    build_payload,
    compute_metrics,
    load_dataset,
    run_bench,
    synthetic_prompt,
)
from renderer.endpoint.client import ClientError, Endpoint, FailureKind, StreamResult

from openai_server import Fault, ServerConfig, serve

MODEL = "test-model"


def bench(server: ServerConfig, config: BenchConfig, model: str | None = MODEL, progress: bool = False):
    """Run a benchmark against a fresh server; return (results, server state)."""

    async def go():
        async with serve(server) as srv:
            console = Console(file=io.StringIO(), width=200)
            results = await run_bench(Endpoint(srv.url), model, config, progress, console=console)
            return results, srv.state

    return asyncio.run(go())


def ok(ttft: float, latency: float, itl: list[float], out: int | None, prompt: int | None = 10) -> RequestRecord:
    return RequestRecord(True, StreamResult(0.0, ttft, latency, itl, prompt, out, ""))


def failed(kind: FailureKind, msg: str = "boom") -> RequestRecord:
    return RequestRecord(False, failure=kind, error=msg)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- metric math (exact)


def test_stats_match_numpy_definitions():
    s = Stats.of([i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert s.mean == pytest.approx(5.5) and s.median == pytest.approx(5.5)
    # numpy.percentile(..., "linear"): index (n-1)p/100 -> 9.1 and 9.91
    assert s.p90 == pytest.approx(9.1) and s.p99 == pytest.approx(9.91)
    assert s.std == pytest.approx(2.8722813232690143)  # population std (np.std)
    assert Stats.of([0.004]).p99 == pytest.approx(4.0)
    assert Stats.of([]) == Stats()


def test_compute_metrics_follows_vllm_definitions():
    records = [
        ok(0.1, 0.5, [0.1, 0.1, 0.1, 0.1], 5, prompt=20),  # tpot 0.1
        ok(0.2, 0.8, [0.2, 0.2, 0.2], 4, prompt=30),  # tpot 0.2
        ok(0.3, 0.3, [], 1, prompt=40),  # one token: no TPOT sample
        failed(FailureKind.TIMEOUT, "slow"),
        failed(FailureKind.TIMEOUT, "slow"),
        failed(FailureKind.CONNECT, "gone"),
    ]
    r = compute_metrics(records, 2.0, model="m", concurrency=3)
    assert (r.completed, r.failed) == (3, 3)
    assert r.failures == {"timeout": 2, "connect": 1}
    assert r.error_samples == {"timeout": ["slow"], "connect": ["gone"]}
    assert (r.total_input_tokens, r.total_output_tokens) == (90, 10)
    assert r.request_throughput == pytest.approx(1.5)
    assert r.output_throughput == pytest.approx(5.0)
    assert r.total_token_throughput == pytest.approx(50.0)
    assert r.ttft_ms.mean == pytest.approx(200.0) and r.ttft_ms.count == 3
    assert r.tpot_ms.count == 2 and r.tpot_ms.mean == pytest.approx(150.0)
    assert r.itl_ms.count == 7 and r.itl_ms.mean == pytest.approx(1000 * 1.0 / 7)
    assert r.e2el_ms.median == pytest.approx(500.0)
    assert r.label == "concurrency 3"
    json.dumps(r.to_dict())


def test_compute_metrics_without_usage_counts_no_tokens():
    r = compute_metrics([ok(0.1, 0.5, [0.4], None, prompt=None)], 1.0)
    assert r.missing_usage == 1 and r.total_output_tokens == 0 and r.tpot_ms.count == 0
    assert r.completed == 1 and r.e2el_ms.mean == pytest.approx(500.0)


def test_compute_metrics_all_failed_still_reports():
    r = compute_metrics([failed(FailureKind.AUTH)] * 3, 0.5)
    assert (r.completed, r.failed, r.request_throughput) == (0, 3, 0.0)
    assert r.ttft_ms.mean is None


# ---------------------------------------------------------------- config and prompts


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_requests": 0},
        {"duration": 0},
        {"num_requests": 1, "concurrency": []},
        {"num_requests": 1, "concurrency": [0]},
        {"num_requests": 1, "request_rates": [0.0]},
        {"num_requests": 1, "input_len": 0},
    ],
)
def test_config_rejects_what_cannot_run(kwargs):
    with pytest.raises(ValueError):
        BenchConfig(**kwargs).validate()


def test_payload_and_synthetic_prompt():
    cfg = BenchConfig(num_requests=1, output_len=7, ignore_eos=True)
    p = build_payload("m", [{"role": "user", "content": "x"}], cfg)
    assert p["stream"] is True and p["stream_options"] == {"include_usage": True}
    assert p["max_tokens"] == 7 and p["ignore_eos"] is True
    assert "ignore_eos" not in build_payload("m", [], BenchConfig(num_requests=1))
    a, b = synthetic_prompt(50, random.Random(1)), synthetic_prompt(50, random.Random(1))
    assert a == b and len(a.split()) == 50
    assert synthetic_prompt(50, random.Random(2)) != a


def test_dataset_jsonl(tmp_path):
    path = tmp_path / "prompts.jsonl"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two words"}]
    path.write_text(json.dumps({"prompt": "one two three"}) + "\n\n" + json.dumps({"messages": msgs}) + "\n")
    assert load_dataset(path) == [[{"role": "user", "content": "one two three"}], msgs]
    results, state = bench(ServerConfig(), BenchConfig(concurrency=[1], num_requests=3, dataset=path))
    assert [r["messages"] for r in state.requests] == [
        [{"role": "user", "content": "one two three"}],
        msgs,
        [{"role": "user", "content": "one two three"}],
    ]
    assert results[0].total_input_tokens == 3 + 4 + 3  # server-reported (word count)
    path.write_text('{"prompt": "ok"}\n{"text": "nope"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2"):
        BenchConfig(num_requests=1, dataset=path).validate()
    with pytest.raises(ValueError, match=r"cannot read the dataset"):
        BenchConfig(num_requests=1, dataset=tmp_path / "missing.jsonl").validate()


# ---------------------------------------------------------------- against the server


def test_closed_loop_metrics_match_server_timing():
    server = ServerConfig(ttft_ms=60, itl_ms=15, output_tokens=6)
    cfg = BenchConfig(concurrency=[1, 4], num_requests=8, input_len=12, output_len=6)
    results, state = bench(server, cfg)
    assert [r.concurrency for r in results] == [1, 4]
    assert state.max_in_flight == 4
    for r in results:
        assert (r.completed, r.failed) == (8, 0)
        assert r.total_output_tokens == 48  # from usage, exact
        assert r.total_input_tokens == 8 * 12  # server counts words: input_len words each
        assert 58 <= r.ttft_ms.mean <= 85
        assert 13 <= r.tpot_ms.mean <= 20
        assert 13 <= r.itl_ms.median <= 20 and r.itl_ms.count == 8 * 5
        assert 130 <= r.e2el_ms.mean <= 180  # 60 + 5 * 15
        # Little's law: completed/s x latency ~ requests in flight.
        assert r.request_throughput * r.e2el_ms.mean / 1000 == pytest.approx(r.concurrency, rel=0.25)
        assert r.output_throughput == pytest.approx(48 / r.duration_s)
    assert results[1].request_throughput > 2.5 * results[0].request_throughput
    first = state.requests[0]
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert first["max_tokens"] == 6 and "ignore_eos" not in first


def test_ignore_eos_gets_max_tokens():
    results, state = bench(ServerConfig(output_tokens=3), BenchConfig(num_requests=4, output_len=9, ignore_eos=True))
    assert all(r["ignore_eos"] is True for r in state.requests)
    assert results[0].total_output_tokens == 4 * 9
    results, _ = bench(ServerConfig(output_tokens=3), BenchConfig(num_requests=4, output_len=9))
    assert results[0].total_output_tokens == 4 * 3


def test_duration_stops_issuing_and_waits_for_in_flight():
    cfg = BenchConfig(concurrency=[2], duration=0.3)
    results, state = bench(ServerConfig(ttft_ms=20, itl_ms=10, output_tokens=4), cfg)  # ~50 ms each
    r = results[0]
    assert 0.3 <= r.duration_s < 0.45
    assert 8 <= r.completed <= 14 and r.failed == 0 and r.completed == state.chat_count


def test_open_loop_poisson_rate_and_cap():
    cfg = BenchConfig(request_rates=[100.0], num_requests=30, seed=3)
    results, state = bench(ServerConfig(ttft_ms=5, output_tokens=2), cfg)
    r = results[0]
    assert r.request_rate == 100.0 and r.completed == 30
    assert 0.12 <= r.duration_s <= 0.7  # 29 exponential gaps of mean 10 ms
    cfg = BenchConfig(request_rates=[1000.0], max_concurrency=2, num_requests=12)
    results, state = bench(ServerConfig(ttft_ms=30, output_tokens=2), cfg)
    assert results[0].completed == 12 and state.max_in_flight == 2
    assert results[0].label == "1000 req/s, max 2"


def test_synthetic_prompts_are_seeded():
    def prompts(seed: int) -> list[str]:
        cfg = BenchConfig(request_rates=[500.0], num_requests=5, seed=seed, input_len=8)
        _, state = bench(ServerConfig(output_tokens=1), cfg)
        return [r["messages"][0]["content"] for r in state.requests]

    first = prompts(7)
    assert first == prompts(7) != prompts(8)
    assert len(set(first)) == 5  # distinct prompts: no prefix-cache flattery


def test_waits_out_a_cold_start_before_measuring():
    results, state = bench(
        ServerConfig(health_failures=2, ttft_ms=5), BenchConfig(num_requests=2, health_timeout=5, health_interval=0.01)
    )
    assert state.health_count == 3 and results[0].completed == 2
    assert results[0].duration_s < 0.5  # the wait for /health is not part of the level


def test_model_none_takes_the_servers_first():
    results, state = bench(ServerConfig(models=["first", "second"]), BenchConfig(num_requests=2), model=None)
    assert results[0].model == "first" and {r["model"] for r in state.requests} == {"first"}


def test_progress_bar_and_table_render():
    results, _ = bench(ServerConfig(), BenchConfig(concurrency=[1, 2], num_requests=3), progress=True)
    console = Console(file=io.StringIO(), width=200, record=True)
    render_bench_results(results, console)
    out = console.export_text()
    for needle in ("concurrency 1", "concurrency 2", "Request throughput (req/s)", "TTFT p99 (ms)", "ITL median (ms)"):
        assert needle in out
    json.dumps([r.to_dict() for r in results])


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("fault", "kind", "needle"),
    [
        (Fault.SERVER_ERROR, FailureKind.SERVER_ERROR, "simulated engine failure"),
        (Fault.TRUNCATE, FailureKind.BAD_STREAM, "without `data: [DONE]`"),
        (Fault.BAD_JSON, FailureKind.BAD_STREAM, "chunk is not JSON"),
        (Fault.HANG, FailureKind.TIMEOUT, "idle timeout"),
        (Fault.STREAM_ERROR, FailureKind.SERVER_ERROR, "inside the stream: simulated engine crash"),
    ],
)
def test_faults_are_counted_by_kind(fault, kind, needle):
    server = ServerConfig(fault=fault, fault_every=3, output_tokens=4, itl_ms=1)
    cfg = BenchConfig(concurrency=[1], num_requests=9, idle_timeout=0.2, output_len=4)
    results, _ = bench(server, cfg)
    r = results[0]
    assert (r.completed, r.failed) == (6, 3)
    assert r.failures == {kind.value: 3}
    assert any(needle in m for m in r.error_samples[kind.value])
    assert r.total_output_tokens == 6 * 4  # failed requests add no tokens


def test_missing_usage_is_flagged_not_guessed():
    results, _ = bench(ServerConfig(report_usage=False, output_tokens=5), BenchConfig(num_requests=3))
    r = results[0]
    assert r.completed == 3 and r.missing_usage == 3 and r.total_output_tokens == 0
    console = Console(file=io.StringIO(), width=200, record=True)
    render_bench_results(results, console)
    assert "carried no usage" in console.export_text()


def test_server_dying_mid_run_still_yields_figures():
    server = ServerConfig(ttft_ms=10, itl_ms=5, output_tokens=4, die_after=5)
    results, state = bench(server, BenchConfig(concurrency=[2], num_requests=20))
    r = results[0]
    assert state.dead
    assert 3 <= r.completed <= 5 and r.completed + r.failed == 20
    assert set(r.failures) == {"connect"} and r.aborted is None
    assert r.request_throughput > 0 and r.ttft_ms.mean is not None
    console = Console(file=io.StringIO(), width=250, record=True)
    render_bench_results(results, console)
    assert "connect 1" in console.export_text()  # "N (connect N)" in the failed row


def test_dead_server_aborts_the_level_after_consecutive_failures():
    server = ServerConfig(output_tokens=2, die_after=3)
    cfg = BenchConfig(concurrency=[1, 2], num_requests=500, max_consecutive_failures=10)
    t0 = time.perf_counter()
    results, _ = bench(server, cfg)
    assert time.perf_counter() - t0 < 3
    first, second = results
    assert first.completed == 3 and first.failed == 10 and "10 failures in a row" in first.aborted
    assert second.completed == 0 and second.failed >= 10 and second.aborted


@pytest.mark.parametrize(
    ("server", "model", "kind", "needle"),
    [
        (ServerConfig(require_headers={"Modal-Key": "k"}), MODEL, FailureKind.AUTH, "authentication failed"),
        (ServerConfig(models=["a", "b"]), "nope", FailureKind.NOT_FOUND, "it serves: a, b"),
    ],
)
def test_preflight_errors_are_raised_clearly(server, model, kind, needle):
    with pytest.raises(ClientError) as info:
        bench(server, BenchConfig(num_requests=5), model=model)
    assert info.value.kind is kind and needle in info.value.message


def test_connection_refused_is_raised_clearly():
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ClientError) as info:
        asyncio.run(run_bench(endpoint, MODEL, BenchConfig(num_requests=1, health_timeout=0.2), False))
    assert info.value.kind is FailureKind.CONNECT and "cannot connect" in info.value.message


def test_stop_event_cuts_the_run_short_and_keeps_figures():
    async def go():
        async with serve(ServerConfig(ttft_ms=20, itl_ms=10, output_tokens=5)) as srv:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.4, stop.set)
            cfg = BenchConfig(concurrency=[2, 4], duration=5)
            t0 = time.perf_counter()
            results = await run_bench(Endpoint(srv.url), MODEL, cfg, False, stop=stop)
            return results, time.perf_counter() - t0, srv.state.chat_count

    results, took, served = asyncio.run(go())
    assert took < 1.5 and len(results) == 1  # the second level never ran
    r = results[0]
    assert r.aborted.startswith("interrupted") and r.failed == 0
    assert 6 <= r.completed <= served <= r.completed + 2  # in-flight ones dropped, not failed
    assert 0.35 <= r.duration_s < 0.6


_CTRL_C_SCRIPT = """
import asyncio, json, sys, threading
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from openai_server import ServerConfig, serve
from renderer.endpoint.bench import BenchConfig, run_bench_sync
from renderer.endpoint.client import Endpoint

box, ready = {}, threading.Event()

def server():
    async def main():
        async with serve(ServerConfig(ttft_ms=20, itl_ms=10, output_tokens=5)) as srv:
            box["url"] = srv.url
            ready.set()
            await asyncio.sleep(30)
    asyncio.run(main())

threading.Thread(target=server, daemon=True).start()
ready.wait(10)
print("ready", flush=True)
results = run_bench_sync(Endpoint(box["url"]), None, BenchConfig(concurrency=[2, 4], duration=20), False)
print(json.dumps([r.to_dict() for r in results]), flush=True)
"""


def test_ctrl_c_returns_the_figures_so_far():
    tests_dir = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_SCRIPT, str(tests_dir), str(tests_dir.parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    (result,) = json.loads(out)
    assert result["aborted"].startswith("interrupted") and result["completed"] > 0
