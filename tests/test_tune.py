"""`fleetform tune`: SLO parsing, the search (against a model and through the real CLI against the test
server with a latency knee at a known concurrency), and `--write` changing only the two scaling values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from renderer.config.edit import EditError, set_values
from renderer.endpoint.bench import compute_metrics
from renderer.endpoint.client import StreamResult
from renderer.endpoint.tune import SearchConfig, SloError, SloTerm, parse_slo, search

from conftest import REPO, run_cli

HERE = Path(__file__).resolve().parent
KNEE = 12  # the test server's latency jumps by 100 ms of TTFT per request in flight beyond this


@pytest.fixture(scope="module")
def knee_server():
    """The test server with TTFT 2 ms and ITL 1 ms up to KNEE requests in flight, +100 ms TTFT per request beyond."""
    argv = [sys.executable, str(HERE / "openai_server.py"), "--ttft-ms", "2", "--itl-ms", "1", "--output-tokens", "4"]
    argv += ["--knee", str(KNEE), "--ttft-ms-per-extra", "100"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


# ---------------------------------------------------------------- SLO syntax


def test_parse_slo_reads_every_metric_stat_and_unit():
    terms = parse_slo("ttft_p90<=500ms, tpot_p50<=0.04s,itl_p99<=30ms,e2el_p90<=8s,error_rate<=1%")
    assert [(t.name, t.bound) for t in terms] == [
        ("ttft_p90", 500.0),
        ("tpot_p50", 40.0),
        ("itl_p99", 30.0),
        ("e2el_p90", 8000.0),
        ("error_rate", 0.01),
    ]
    assert parse_slo("ttft_p90<=500ms")[-1] == SloTerm("error_rate", None, 0.0)  # no errors unless allowed
    assert parse_slo("ttft_p90<=1ms,error_rate<=0.05")[-1].bound == 0.05


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty SLO"),
        ("ttft_p90<=500", "with its unit"),
        ("ttft_p95<=500ms", "unknown term 'ttft_p95'"),
        ("latency_p90<=5ms", "unknown term"),
        ("ttft_p90>=500ms", "expected NAME<=VALUE"),
        ("ttft_p90<=500ms,", "empty term"),
        ("ttft_p90<=1ms,ttft_p90<=2ms", "bounded twice"),
        ("error_rate<=1%", "bounds no latency"),
        ("ttft_p90<=1ms,error_rate<=200%", "at most 100%"),
        ("ttft_p90<=1ms,error_rate<=5ms", "fraction"),
        ("ttft_p90<=0ms", "above 0"),
        ("ttft_p90<=-5ms", "with its unit"),
    ],
)
def test_parse_slo_refuses_with_the_term_named(text, says):
    with pytest.raises(SloError, match=None) as info:
        parse_slo(text)
    assert says in str(info.value)


def test_a_bad_slo_is_one_usage_line():
    result = run_cli("tune", "http://127.0.0.1:9", "--slo", "ttft_p95<=500ms")
    assert result.returncode == 2
    assert "unknown term 'ttft_p95'" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the search, against a model


def _result(concurrency: int, requests: int, ttft_s: float, failed: int = 0, aborted: str | None = None):
    """A level whose every request had this TTFT (4 tokens, 1 ms apart)."""
    from renderer.endpoint.bench import RequestRecord

    ok = [
        RequestRecord(True, StreamResult(0.0, ttft_s, ttft_s + 0.003, [0.001] * 3, 10, 4, "")) for _ in range(requests)
    ]
    bad = [RequestRecord(False, error="boom") for _ in range(failed)]
    result = compute_metrics(ok[: requests - failed] + bad, 1.0, model="m", concurrency=concurrency)
    result.aborted = aborted
    return result


def _knee_model(knee: int, calls: list):
    def measure(concurrency: int, requests: int):
        calls.append((concurrency, requests))
        return _result(concurrency, requests, 0.005 if concurrency <= knee else 0.5)

    return measure


@pytest.mark.parametrize(("knee", "share"), [(1, 1.0), (5, 1.0), (12, 0.75), (24, 0.5), (100, 0.25), (700, 0.1)])
def test_search_finds_the_knee_with_fewer_requests_than_a_sweep(knee, share):
    slo = parse_slo("ttft_p90<=100ms")
    config = SearchConfig()
    calls: list = []
    answer = search(_knee_model(knee, calls), slo, config)
    step = max(1, math.floor(config.resolution * knee))  # where bisection stops: within one step of the knee
    assert knee - step <= answer.max_concurrency <= knee
    assert answer.target_concurrency == max(1, math.floor(0.8 * answer.max_concurrency))
    sweep = sum(config.requests_for(c, slo) for c in range(1, knee + 2))  # every level up to the first failing one
    assert answer.requests <= share * sweep
    assert answer.at(answer.target_concurrency).passed  # measured, never extrapolated


@pytest.mark.parametrize("knee", [3, 24, 100, 700])
def test_resolution_zero_bisects_to_the_exact_knee(knee):
    answer = search(_knee_model(knee, []), parse_slo("ttft_p90<=100ms"), SearchConfig(resolution=0))
    assert answer.max_concurrency == knee


def test_search_stops_at_the_limit_and_says_the_answer_is_capped():
    answer = search(_knee_model(10_000, []), parse_slo("ttft_p90<=100ms"), SearchConfig(limit=64))
    assert answer.max_concurrency == 64 and answer.capped


def test_no_passing_level_gives_no_answer():
    answer = search(_knee_model(0, []), parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.max_concurrency is None and len(answer.levels) == 1


def test_a_level_near_the_bound_is_repeated_with_twice_the_requests():
    calls: list = []

    def measure(concurrency: int, requests: int):
        calls.append((concurrency, requests))
        return _result(concurrency, requests, 0.095 if concurrency == 1 else 0.5)  # 95 ms against 100 ms

    answer = search(measure, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert calls[:2] == [(1, 100), (1, 200)]
    assert answer.levels[0].repeated and answer.levels[0].requests == 300


def test_errors_fail_a_level_and_a_dead_server_stops_the_search():
    def erring(concurrency: int, requests: int):
        return _result(concurrency, requests, 0.005, failed=2 if concurrency >= 8 else 0)

    answer = search(erring, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.max_concurrency == 7  # 2 failures in 100 break the default error_rate<=0
    answer = search(erring, parse_slo("ttft_p90<=100ms,error_rate<=5%"), SearchConfig(limit=64))
    assert answer.max_concurrency == 64

    def dying(concurrency: int, requests: int):
        dead = concurrency >= 4
        return _result(
            concurrency, 10 if dead else requests, 0.005, failed=10 if dead else 0, aborted="dead" if dead else None
        )

    answer = search(dying, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.stopped and "concurrency 4: dead" in answer.stopped and answer.max_concurrency is None
    assert [lv.concurrency for lv in answer.levels] == [1, 2, 4]


def test_requests_per_level_follow_the_percentile_and_the_level():
    config = SearchConfig()
    assert config.requests_for(1, parse_slo("ttft_p50<=1ms")) == 20
    assert config.requests_for(1, parse_slo("ttft_p90<=1ms")) == 100
    assert config.requests_for(1, parse_slo("ttft_p50<=1ms,e2el_p99<=1s")) == 1000
    assert config.requests_for(300, parse_slo("ttft_p90<=1ms")) == 600  # every worker completes 2 requests


# ---------------------------------------------------------------- through the CLI, against the test server


def test_tune_finds_the_servers_knee(knee_server, tmp_path):
    plot = tmp_path / "tune.html"
    args = ["tune", knee_server, "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "3"]
    result = run_cli(*args, "--gpu", "H100:2", "--format", "json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert KNEE - 1 <= doc["max_concurrency"] <= KNEE, [(lv["concurrency"], lv["slo_values"]) for lv in doc["levels"]]
    assert doc["target_concurrency"] == math.floor(0.8 * doc["max_concurrency"])
    config, slo = SearchConfig(tail_samples=3), parse_slo("ttft_p90<=40ms")
    sweep = sum(config.requests_for(c, slo) for c in range(1, KNEE + 2))  # every level up to the first failing one
    assert doc["requests"] < 0.75 * sweep
    level = doc["levels"][0]["result"]
    assert {"p90_ttft_ms", "median_tpot_ms", "output_throughput", "completed"} <= set(level)  # bench's keys
    target = next(lv for lv in doc["levels"] if lv["concurrency"] == doc["target_concurrency"])
    tps = target["result"]["output_throughput"]
    [cost] = doc["costs"]
    assert cost["gpu"] == "H100" and cost["count"] == 2
    assert cost["usd_per_million_output_tokens"] == pytest.approx(cost["usd_per_hour"] / (tps * 3600) * 1e6, rel=1e-3)
    assert "[tune] concurrency 16 (grow" in result.stderr and "FAIL (ttft_p90" in result.stderr  # live figures
    documented = (REPO / "docs" / "tune.md").read_text(encoding="utf-8")
    keys = set(doc) | set(doc["levels"][0]) - {"result"} | set(cost) | set(doc["workload"]) | set(doc["search"])
    assert sorted(k for k in keys if f"`{k}`" not in documented) == []
    page = plot.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3 and "SLO 40" in page


def test_tune_text_has_the_table_the_answer_and_the_chart(knee_server):
    result = run_cli("tune", knee_server, "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "2")
    assert result.returncode == 0, result.stderr
    assert "max_concurrency: " in result.stdout and "target_concurrency: " in result.stdout
    assert "ttft_p90 (ms), | = SLO 40 ms" in result.stdout and "output throughput (tok/s)" in result.stdout
    assert "FAIL: ttft_p90" in result.stdout


def test_tune_fails_when_no_level_meets_the_slo(knee_server):
    result = run_cli("tune", knee_server, "--slo", "ttft_p90<=1ms", "--output-len", "4", "--tail-samples", "2")
    assert result.returncode == 1
    assert "no level meets the SLO" in result.stdout


# ---------------------------------------------------------------- --write


def _fleet(tmp_path: Path, text: str | None = None) -> Path:
    folder = tmp_path / "deployments"
    folder.mkdir()
    (folder / "fleet.yaml").write_text((REPO / "deployments" / "fleet.yaml").read_text())
    source = (REPO / "deployments" / "llama-3-1-8b-fp8.yaml").read_text() if text is None else text
    (folder / "llama-3-1-8b-fp8.yaml").write_text(source)
    return folder


def test_write_changes_only_the_two_values(knee_server, tmp_path):
    folder = _fleet(tmp_path)
    path = folder / "llama-3-1-8b-fp8.yaml"
    before = path.read_bytes()
    result = run_cli(
        "tune", knee_server, str(folder), "--deployment", "llama-3-1-8b-fp8", "--model", "test-model", "--auth", "none",
        "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "2", "--write", "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    after = path.read_bytes()
    target, cap = doc["target_concurrency"], doc["max_concurrency"]
    old = b"  target_concurrency: 32\n"
    new = f"  target_concurrency: {target}\n  max_concurrency: {cap}\n".encode()
    assert before.count(old) == 1 and after == before.replace(old, new)  # every other byte as it was
    assert f"+  max_concurrency: {cap}" in doc["write"]["diff"]
    assert doc["costs"][0]["gpu"] == "B200"  # the deployment's GPU
    check = run_cli("validate", str(folder))
    assert check.returncode == 0, check.stderr


def test_write_writes_nothing_without_an_answer_and_names_an_overriding_overlay(knee_server, tmp_path):
    original = (REPO / "deployments" / "llama-3-1-8b-fp8.yaml").read_text()
    text = original.replace("      max_containers: 4\n", "      max_containers: 4\n      max_concurrency: 64\n")
    folder = _fleet(tmp_path, text)
    path = folder / "llama-3-1-8b-fp8.yaml"
    base = ["tune", knee_server, str(folder), "--deployment", "llama-3-1-8b-fp8", "--model", "test-model"]
    base += ["--auth", "none", "--output-len", "4", "--tail-samples", "2", "--write", "--env", "prod"]
    result = run_cli(*base, "--slo", "ttft_p90<=1ms")
    assert result.returncode == 1 and path.read_text() == text
    assert "nothing written" in result.stdout
    result = run_cli(*base, "--slo", "ttft_p90<=40ms", "--limit", "4")
    assert result.returncode == 0, result.stderr
    assert "+  max_concurrency: 4" in result.stdout
    assert "environments.prod.scaling.max_concurrency" in result.stdout and "still overrides" in result.stdout


def test_write_needs_a_deployment(knee_server):
    result = run_cli("tune", knee_server, "--slo", "ttft_p90<=40ms", "--write")
    assert result.returncode == 2 and "--write needs the deployment" in result.stderr


def test_set_values_keeps_comments_order_and_quoting():
    text = "name: x  # the name\nscaling:\n    max_concurrency: 64   # hard cap\n    target_concurrency: 3.5\n"
    text += "    nested:\n      a: 1\nengine: {fast_boot: false}\n"
    out = set_values("d.yaml", text, "scaling", {"target_concurrency": 20, "max_concurrency": 25})
    assert out == text.replace("64   #", "25   #").replace("3.5", "20")
    out = set_values("d.yaml", "name: x\n# end\n", "scaling", {"target_concurrency": 2, "max_concurrency": 3})
    assert out == "name: x\n# end\nscaling:\n  target_concurrency: 2\n  max_concurrency: 3\n"
    out = set_values("d.yaml", "scaling:\n  min_containers: 1\n  x:\n    y: 2\n", "scaling", {"max_concurrency": 3})
    assert out == "scaling:\n  min_containers: 1\n  max_concurrency: 3\n  x:\n    y: 2\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("scaling: {min_containers: 1}\n", "d.yaml:1:10: `scaling` is a flow mapping"),
        ("scaling:\n  max_concurrency: '64'\n", "d.yaml:2:20: `scaling.max_concurrency` is quoted"),
        ("scaling: 3\n", "d.yaml:1:1: `scaling` is not a mapping"),
    ],
)
def test_set_values_refuses_what_it_cannot_edit_in_place(text, says):
    with pytest.raises(EditError) as info:
        set_values("d.yaml", text, "scaling", {"max_concurrency": 3})
    assert str(info.value).startswith(says)
