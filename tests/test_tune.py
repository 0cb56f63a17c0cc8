"""`fleetform tune`: SLO parsing, the search (against a model and through the real CLI against the test
server with a latency knee at a known concurrency), and `--write` changing only the two scaling values."""

from __future__ import annotations

import json
import math
import os
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
KNEE = 12  # the test server's latency jumps by 100 ms of TTFT per client connection busy beyond this


@pytest.fixture(scope="module")
def knee_server():
    """The test server with TTFT 2 ms and ITL 1 ms up to KNEE busy clients, +100 ms TTFT per client beyond."""
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
    def measure(concurrency: int, requests: int, until):
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


@pytest.mark.parametrize("knee", [1, 5, 12, 24])
def test_a_start_above_the_knee_shrinks_then_bisects_to_it(knee):
    """A re-tune started at the current target (32) when the knee is below it: down by the factor to a
    passing level, then the same bisection; the levels under the first passing one are never run."""
    calls: list = []
    config = SearchConfig(start=32)
    answer = search(_knee_model(knee, calls), parse_slo("ttft_p90<=100ms"), config)
    step = max(1, math.floor(config.resolution * knee))
    assert knee - step <= answer.max_concurrency <= knee
    shrunk = [lv.concurrency for lv in answer.levels if lv.phase == "shrink"]
    assert shrunk and shrunk == sorted(shrunk, reverse=True) and shrunk[-1] <= knee < 32
    assert min(c for c, _ in calls) >= min(shrunk[-1], answer.target_concurrency)


def test_a_start_above_the_knee_grows_no_further():
    calls: list = []
    answer = search(_knee_model(100, calls), parse_slo("ttft_p90<=100ms"), SearchConfig(start=32))
    assert [lv.phase for lv in answer.levels][:2] == ["grow", "grow"] and calls[0][0] == 32
    assert "shrink" not in {lv.phase for lv in answer.levels} and 90 <= answer.max_concurrency <= 100


def test_no_passing_level_gives_no_answer():
    answer = search(_knee_model(0, []), parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.max_concurrency is None and len(answer.levels) == 1
    from_above = search(_knee_model(0, []), parse_slo("ttft_p90<=100ms"), SearchConfig(start=8))
    assert from_above.max_concurrency is None and [lv.concurrency for lv in from_above.levels] == [8, 4, 2, 1]


def test_a_level_near_the_bound_is_repeated_with_twice_the_requests():
    calls: list = []

    def measure(concurrency: int, requests: int, until):
        calls.append((concurrency, requests))
        return _result(concurrency, requests, 0.095 if concurrency == 1 else 0.5)  # 95 ms against 100 ms

    answer = search(measure, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert calls[:2] == [(1, 100), (1, 200)]
    assert answer.levels[0].repeated and answer.levels[0].requests == 300


def test_errors_fail_a_level_and_a_dead_server_stops_the_search():
    def erring(concurrency: int, requests: int, until):
        return _result(concurrency, requests, 0.005, failed=2 if concurrency >= 8 else 0)

    answer = search(erring, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.max_concurrency == 7  # 2 failures in 100 break the default error_rate<=0
    answer = search(erring, parse_slo("ttft_p90<=100ms,error_rate<=5%"), SearchConfig(limit=64))
    assert answer.max_concurrency == 64

    def dying(concurrency: int, requests: int, until):
        dead = concurrency >= 4
        return _result(
            concurrency, 10 if dead else requests, 0.005, failed=10 if dead else 0, aborted="dead" if dead else None
        )

    answer = search(dying, parse_slo("ttft_p90<=100ms"), SearchConfig())
    assert answer.stopped and "concurrency 4: dead" in answer.stopped and answer.max_concurrency is None
    assert [lv.concurrency for lv in answer.levels] == [1, 2, 4]


def _records(ms: list[float], metric: str) -> list:
    """Requests of 4 tokens whose `metric` (ttft, tpot or e2el) measures these milliseconds."""
    from renderer.endpoint.bench import RequestRecord

    def one(v: float) -> StreamResult:
        s = v / 1000
        ttft, latency = {"ttft": (s, s + 0.003), "tpot": (0.001, 0.001 + 3 * s), "e2el": (s / 2, s)}[metric]
        return StreamResult(0.0, ttft, latency, [0.001] * 3, 10, 4, "")

    return [RequestRecord(True, one(v)) for v in ms]


@pytest.mark.parametrize("metric", ["ttft", "tpot", "e2el"])
@pytest.mark.parametrize("stat", ["p50", "p90", "p99"])
@pytest.mark.parametrize("n", [1, 2, 7, 20, 50, 101, 256])
def test_a_level_is_cut_short_exactly_when_its_percentile_must_fail(metric, stat, n):
    from renderer.endpoint.bench import compute_metrics
    from renderer.endpoint.tune import CertainFailure

    (term, _) = parse_slo(f"{metric}_{stat}<=100ms")
    rule = lambda: CertainFailure([term], n, noise=0.1)  # noqa: E731 - a fresh count per level
    high, low = 110.5, 0.0  # just beyond the bound's noise margin (110 ms), and as far below as can be
    # The fewest slow requests that decide: each alone in order, the rest of the level unknown.
    k = next(k for k in range(1, n + 1) if rule()(_records([high] * k, metric)))
    for slow in (k - 1, k):  # however fast the other n - slow requests are, the level's figure is ...
        value = term.value(compute_metrics(_records([high] * slow + [low] * (n - slow), metric), 1.0))
        assert (value > 110) == (slow == k), (slow, value)  # ... beyond the margin from the k-th on, not before
    assert rule()(_records([low] * (n - k) + [high] * k, metric)) is not None  # the fast ones first: the same
    assert rule()(_records([110.0] * n, metric)) is None  # at the margin, not beyond it: the level decides
    decided = rule()
    for i in range(1, k + 1):  # called after each request, as bench does, counting each request once
        reason = decided(_records([high] * k, metric)[:i])
    assert reason.startswith(f"{k} of its {n} requests had {metric} above 110 ms (100 ms and 10% noise)")


def test_errors_and_itl_cut_a_level_short_only_when_they_must():
    from renderer.endpoint.bench import RequestRecord
    from renderer.endpoint.tune import CertainFailure

    fast, failed = _records([1.0], "ttft"), [RequestRecord(False, error="boom")]
    strict = CertainFailure(parse_slo("itl_p90<=1ms"), 100, noise=0.1)  # no errors allowed
    assert strict(failed) == "1 of its 100 requests failed, more than 0% allows"
    lenient = CertainFailure(parse_slo("itl_p90<=1ms,error_rate<=5%"), 100, noise=0.1)
    assert lenient(fast * 10 + failed * 5) is None and lenient(fast * 10 + failed * 6).startswith("6 of its 100")
    slow = _records([50.0] * 100, "ttft")  # token gaps of 1 ms, so ITL is judged when the level ends
    assert CertainFailure(parse_slo("itl_p90<=0.5ms,error_rate<=100%"), 100, noise=0.1)(slow) is None


def test_a_level_cut_short_is_not_repeated_though_another_figure_is_near_its_bound():
    calls = []

    def measure(concurrency: int, requests: int, until):
        calls.append(requests)
        assert until.requests == requests  # each run, a repeat too, judged against its own number of requests
        result = _result(concurrency, requests, 0.095 if concurrency == 1 else 0.5)  # 1: near 100 ms, passes
        result.decided = None if concurrency == 1 else "certain"
        return result

    # at 2, TTFT (500 ms) decided the level; its E2E latency (503 ms) lies within the noise of 520 ms
    answer = search(measure, parse_slo("ttft_p90<=100ms,e2el_p90<=520ms"), SearchConfig(limit=2))
    assert [(lv.concurrency, lv.passed, lv.repeated) for lv in answer.levels] == [(1, True, True), (2, False, False)]
    assert calls == [100, 200, 100]  # 1, and again with twice the requests (near its bound); 2 once


def test_requests_per_level_follow_the_percentile_and_the_level():
    config = SearchConfig()
    assert config.requests_for(1, parse_slo("ttft_p50<=1ms")) == 20
    assert config.requests_for(1, parse_slo("ttft_p90<=1ms")) == 100
    assert config.requests_for(1, parse_slo("ttft_p50<=1ms,e2el_p99<=1s")) == 1000
    assert config.requests_for(300, parse_slo("ttft_p90<=1ms")) == 600  # every worker completes 2 requests


# ---------------------------------------------------------------- through the CLI, against the test server


def test_tune_finds_the_servers_knee(knee_server, tmp_path):
    plot, png = tmp_path / "tune.html", tmp_path / "tune.png"
    args = ["tune", knee_server, "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "3"]
    result = run_cli(*args, "--gpu", "H100:2", "--format", "json", "--plot", str(plot), "--plot", str(png))
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
    from PIL import Image  # matplotlib's own dependency

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (640, 720)  # three panels of 6.4 x 2.4 in at 100 dpi
    assert doc["notes"] == [f"chart written to {plot}", f"chart written to {png}"]


# ---------------------------------------------------------------- the charts


def test_the_png_chart_draws_each_series_its_verdicts_and_the_slo_bound():
    from matplotlib.colors import to_hex

    from renderer.cli.charts import FAIL_COLOR, PASS_COLOR, png_figure

    answer = search(_knee_model(24, []), parse_slo("ttft_p90<=100ms,error_rate<=1%"), SearchConfig(tail_samples=2))
    last = {lv.concurrency: lv for lv in answer.levels}  # a repeated level is drawn with its last measurement
    levels = sorted(last)
    assert any(not lv.passed for lv in last.values()) and any(lv.passed for lv in last.values())
    fig = png_figure(answer, "tune")
    ttft, tpot, tps = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["ttft_p90 (ms)", "tpot_p90 (ms)", "output throughput (tok/s)"]
    assert (answer.max_concurrency, answer.target_concurrency, levels) == (24, 19, [1, 2, 4, 8, 16, 19, 24, 26, 28, 32])
    labels = ["1", "2", "4", "8", "16", "19", "24", "", "", "32"]  # 26 and 28: too close to the answer's 24
    for ax in fig.axes:
        low, high = ax.get_ylim()
        drawn = [y for line in ax.lines for y in line.get_ydata()]  # the curve, and the bound where there is one
        assert ax.get_xscale() == "log" and low == 0 and high >= 1.05 * max(drawn)  # room for the highest dot
        assert list(ax.get_xticks()) == levels and [t.get_text() for t in ax.get_xticklabels()] == labels
    curve, bound = ttft.lines
    assert list(curve.get_xdata()) == levels
    assert list(curve.get_ydata()) == [last[c].values["ttft_p90"] for c in levels]
    assert list(bound.get_ydata()) == [100, 100] and bound.get_linestyle() == "--"
    [points] = ttft.collections
    colors = [to_hex(c) for c in points.get_facecolors()]
    assert colors == [PASS_COLOR if last[c].passed else FAIL_COLOR for c in levels]
    assert len(tpot.lines) == 1 and tpot.get_legend() is None  # charted for context: no bound to draw
    assert list(tps.lines[0].get_ydata()) == [last[c].result.output_throughput for c in levels]


def test_axis_labels_leave_out_what_would_overlap_the_answer_first():
    from renderer.cli.charts import axis_labels

    # On a log axis from 1 to 32 (5 doublings) 24 and 26 are 0.023 of it apart, 26 and 28 0.021, 28 and 32 0.039.
    assert axis_labels([1, 2, 4, 8, 16, 24, 26, 28, 32], first=[26, 20]) == [
        "1",
        "2",
        "4",
        "8",
        "16",
        "",
        "26",
        "",
        "32",
    ]
    assert axis_labels([1, 2, 4, 8, 16, 24, 26, 28, 32], first=[None, None])[5:] == ["24", "", "", "32"]
    # Three digits need more room: from 32 to 128, 112 and 120 are 0.049 of the axis apart, 120 and 128 0.047
    # (as tune measured them on an H100), all three drawn over one another before labels had widths.
    assert axis_labels([32, 64, 96, 112, 120, 128], first=[120, 96]) == ["32", "64", "96", "", "120", ""]
    assert axis_labels([32, 64, 96, 112, 120, 128], first=[None, None]) == ["32", "64", "96", "112", "", "128"]
    assert axis_labels([7], first=[7]) == ["7"] and axis_labels([], first=[None]) == []


def test_the_png_draws_a_model_name_as_it_is_not_as_tex():
    from renderer.cli.charts import png_chart, png_figure

    answer = search(_knee_model(5, []), parse_slo("ttft_p90<=100ms"), SearchConfig())
    title = "fleetform tune: org/m$\\frac{$x^2$"  # a served model's name, unbalanced TeX and all
    fig = png_figure(answer, title)
    [suptitle] = fig.texts
    assert suptitle.get_text().splitlines()[0] == title and not suptitle.get_parse_math()
    assert png_chart(answer, title).startswith(b"\x89PNG")


def test_the_png_is_the_same_bytes_for_the_same_figures():
    from renderer.cli.charts import png_chart

    answer = search(_knee_model(5, []), parse_slo("ttft_p90<=100ms"), SearchConfig())
    first = png_chart(answer, "tune")
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and png_chart(answer, "tune") == first


def test_the_benchmarks_replot_of_saved_json_draws_the_same_chart(tmp_path):
    """benchmarks/tune_plot.py draws a run that came back from the GPU device as JSON: byte for byte the
    chart that tune itself draws of the same answer."""
    import importlib.util

    from renderer.cli.charts import html_chart, png_chart

    spec = importlib.util.spec_from_file_location("tune_plot", REPO / "benchmarks" / "tune_plot.py")
    tune_plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_plot)
    answer = search(_knee_model(24, []), parse_slo("ttft_p90<=100ms,itl_p99<=5ms"), SearchConfig(tail_samples=2))
    (tmp_path / "tune.json").write_text(json.dumps(answer.to_dict()))
    for name, draw in (("tune.png", png_chart), ("tune.html", html_chart)):
        tune_plot.main([str(tmp_path / "tune.json"), str(tmp_path / name), "t"])
        drawn = draw(answer, "t")
        assert (tmp_path / name).read_bytes() == (drawn if isinstance(drawn, bytes) else drawn.encode())


@pytest.mark.parametrize(
    ("plot", "says"),
    [
        ("tune.svg", "the suffix picks the format: .html (self-contained page) or .png, not .svg"),
        ("tune", "the suffix picks the format: .html (self-contained page) or .png, not none"),
    ],
)
def test_plot_refuses_a_format_it_cannot_write_before_measuring(plot, says):
    result = run_cli("tune", "http://127.0.0.1:9", "--slo", "ttft_p90<=1s", "--plot", plot)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_a_png_without_matplotlib_names_the_extra_before_measuring(tmp_path):
    """As in an install without the plot extra: matplotlib cannot be imported."""
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        "sys.argv = ['fleetform', 'tune', 'http://127.0.0.1:9', '--slo', 'ttft_p90<=1s', '--plot', 't.png']; "
        "runpy.run_module('renderer', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (
        "error: fleetform tune --plot t.png needs matplotlib, which this install of fleetform leaves out: "
        "pip install 'fleetform[plot]' (or 'fleetform[all]')\n"
    )


def test_a_failing_level_stops_once_it_must_fail_and_counts_what_it_sent(knee_server):
    args = ["tune", knee_server, "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "10"]
    result = run_cli(*args, "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert KNEE - 1 <= doc["max_concurrency"] <= KNEE
    config, slo = SearchConfig(tail_samples=10), parse_slo("ttft_p90<=40ms")
    failing = [lv for lv in doc["levels"] if not lv["passed"]]
    assert failing and all(lv["concurrency"] > KNEE for lv in failing)
    for lv in doc["levels"]:
        planned, r = config.requests_for(lv["concurrency"], slo), lv["result"]
        assert lv["requests"] == r["completed"] + r["failed"]  # what was sent, in flight at the stop included
        if lv["passed"]:  # a passing level runs all its requests (twice as many again when near the bound)
            assert r["decided"] is None and lv["requests"] == planned * (3 if lv["repeated"] else 1)
        else:  # 100 planned, 11 beyond 44 ms decide p90: the first wave and what started while it ran
            assert r["decided"].startswith(f"11 of its {planned} requests had ttft above 44 ms"), r["decided"]
            assert not lv["repeated"] and lv["requests"] < planned / 2
    assert "stopped early: 11 of its 100 requests had ttft above 44 ms" in result.stderr


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


# ---------------------------------------------------------------- --local --engine: a grid of local vLLM runs

# The fake vLLM (tests/fake_vllm.py) queues the clients beyond its --max-num-seqs, 80 ms of TTFT each, so
# the TTFT bound below binds exactly there (a loaded machine adds ~15 ms at most to the 2 ms a request
# takes otherwise); its ITL grows with the setting as given here, so 4 makes the most output tokens per
# GPU-dollar at its target: 3 requests x 4 tokens in ~2 + 3 x 2 ms, against 1 request in ~2 + 3 ms (2)
# and 4 requests in ~2 + 3 x 12 ms (6).
FAKE = f"{sys.executable} {HERE / 'fake_vllm.py'}"
GRID_ENV = {"FAKE_VLLM_ITL_MS": "2:1,4:2,6:12", "FAKE_VLLM_QUEUE_MS": "80", "FAKE_VLLM_BOOT_S": "0.1"}
DEMO = "name: demo\nmodel:\n  id: org/model\n  revision: " + "a" * 40 + "\ngpu:\n  type: H100  # the card\n"
DEMO += "scaling:\n  target_concurrency: 32\n"


def _grid_args(tmp_path: Path, *engine: str) -> list[str]:
    from gateway_upstreams import free_port

    return [
        "tune", "demo", str(tmp_path / "demo.yaml"), "--local", "--vllm", FAKE, "--port", str(free_port()),
        "--startup-timeout", "20", "--slo", "ttft_p90<=40ms", "--output-len", "4", "--tail-samples", "2",
        "--log-dir", str(tmp_path / "logs"), *(["--engine", *engine] if engine else []),
    ]  # fmt: skip


def _started(log: Path) -> list[dict]:
    """The command line and pid of every fake vLLM that started, in order."""
    if not log.exists():
        return []
    return [e for e in map(json.loads, log.read_text().splitlines()) if "argv" in e]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One grid of three settings through the real CLI, with --write, --plot and --format json."""
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "demo.yaml").write_text(DEMO)
    log = tmp / "requests.jsonl"
    args = [*_grid_args(tmp, "max_num_seqs=2,4,6"), "--write", "--plot", str(tmp / "tune.html"), "--format", "json"]
    result = run_cli(*args, env={**GRID_ENV, "FAKE_VLLM_LOG": str(log)})
    return tmp, result, _started(log)


def test_engine_grid_searches_each_setting_and_names_the_best(grid_run):
    tmp, result, started = grid_run
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    settings = doc["engine"]["settings"]
    assert [s["values"] for s in settings] == [{"max_num_seqs": 2}, {"max_num_seqs": 4}, {"max_num_seqs": 6}]
    for s in settings:  # each setting's knee, within one level (bisection stops within max(1, 10%) of it)
        knee = s["values"]["max_num_seqs"]
        assert knee - 1 <= s["answer"]["max_concurrency"] <= knee, [
            (lv["concurrency"], lv["slo_values"]) for lv in s["answer"]["levels"]
        ]
        assert s["boot_s"] > 0 and s["error"] is None and not s["failed"]
        assert s["output_tokens_per_usd"] == pytest.approx(
            s["answer"]["at_target"]["output_throughput"] * 3600 / s["answer"]["costs"][0]["usd_per_hour"], rel=1e-3
        )
    assert doc["engine"]["best"] == 1  # max_num_seqs=4
    assert doc["max_concurrency"] == settings[1]["answer"]["max_concurrency"]  # the top level is the best's answer
    # each server got the deployment's own command line, the setting's flag included, and no other
    assert [e["argv"][e["argv"].index("--max-num-seqs") + 1] for e in started] == ["2", "4", "6"]
    assert [e["argv"] for e in started] == [s["argv"][2:] for s in settings]  # after "python fake_vllm.py"
    assert "[tune] setting 2/3: max_num_seqs=4: booting vLLM" in result.stderr
    assert "ready after" in result.stderr and "[tune] concurrency 1 (grow" in result.stderr
    for e in started:  # every server was stopped
        with pytest.raises(ProcessLookupError):
            os.kill(e["pid"], 0)
    documented = (REPO / "docs" / "tune.md").read_text(encoding="utf-8")
    keys = set(doc["engine"]) | set(settings[0])
    assert sorted(k for k in keys if f"`{k}`" not in documented) == []
    assert (tmp / "tune.html").read_text().count("<svg") == 3


def test_engine_grid_write_changes_only_the_values_it_names(grid_run):
    tmp, result, _ = grid_run
    doc = json.loads(result.stdout)
    after = (tmp / "demo.yaml").read_text()
    target, cap = doc["target_concurrency"], doc["max_concurrency"]
    expected = DEMO.replace("  target_concurrency: 32\n", f"  target_concurrency: {target}\n  max_concurrency: {cap}\n")
    assert after == expected + "engine:\n  max_num_seqs: 4\n"  # no engine: section before: appended
    assert "+  max_num_seqs: 4" in doc["write"]["diff"]
    check = run_cli("validate", str(tmp / "demo.yaml"))
    assert check.returncode == 0, check.stderr


def test_engine_write_replaces_a_value_in_place(tmp_path):
    text = DEMO + "engine:\n  kv_cache_dtype: 'auto'  # quoted\n  max_num_seqs: 64   # was\n  fast_boot: false\n"
    (tmp_path / "demo.yaml").write_text(text)
    result = run_cli(*_grid_args(tmp_path, "max_num_seqs=4", "kv_cache_dtype=fp8"), "--write", env=GRID_ENV)
    assert result.returncode == 0, result.stderr
    after = (tmp_path / "demo.yaml").read_text()
    scaling = after[after.index("scaling:") : after.index("engine:")]
    assert after == text.replace("'auto'", "'fp8'").replace("64   #", "4   #").replace(
        DEMO[DEMO.index("scaling:") :], scaling
    )
    assert "best setting: max_num_seqs=4 kv_cache_dtype=fp8" in result.stdout


@pytest.mark.parametrize(
    ("term", "says"),
    [
        (
            "gpu_memory_utilization=0.9,1.5",
            "--engine gpu_memory_utilization=1.5: error: engine.gpu_memory_utilization: must be <= 1",
        ),
        (
            "max_num_seqs=abc",
            "--engine max_num_seqs=abc: error: engine.max_num_seqs: expected integer, got string 'abc'",
        ),
        ("max_num_seq=4", "'max_num_seq' is not an engine setting tune varies; did you mean \"max_num_seqs\"?"),
        (
            "kv_cache_dtype=fp9",
            "engine.kv_cache_dtype: expected one of auto, fp8, fp8_e4m3, fp8_e5m2; got string 'fp9'",
        ),
        ("max_num_seqs=yes", "'yes' is read as the boolean true by YAML 1.1"),
    ],
)
def test_a_bad_engine_value_fails_before_any_server_starts(tmp_path, term, says):
    (tmp_path / "demo.yaml").write_text(DEMO)
    log = tmp_path / "requests.jsonl"
    engine = ["max_num_seqs=4,8", "max_num_batched_tokens=256", term] if term.startswith("gpu") else [term]
    result = run_cli(*_grid_args(tmp_path, *engine), env={**GRID_ENV, "FAKE_VLLM_LOG": str(log)})
    assert result.returncode == 1, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not log.exists() and not (tmp_path / "logs").exists()  # nothing started


def test_engine_values_that_conflict_are_refused_by_the_rules(tmp_path):
    (tmp_path / "demo.yaml").write_text(DEMO)
    result = run_cli(*_grid_args(tmp_path, "max_num_seqs=64,512", "max_num_batched_tokens=256"), env=GRID_ENV)
    assert result.returncode == 1
    assert "max_num_batched_tokens 256 is below max_num_seqs 512" in result.stderr
    assert "1 error(s) in --engine; no vLLM was started" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--engine", "max_num_seqs=4,8"], "--engine restarts vLLM for each setting"),
        (["--local", "--engine", "max_num_seqs"], "expected KEY=V1[,V2...]"),
        (["--local", "--engine", "max_num_seqs=4,,8"], "an empty value"),
        (["--local", "--engine", "max_num_seqs=4", "max_num_seqs=8"], "max_num_seqs is given twice"),
    ],
)
def test_engine_usage_errors(tmp_path, args, says):
    (tmp_path / "demo.yaml").write_text(DEMO)
    result = run_cli("tune", "demo", str(tmp_path / "demo.yaml"), "--slo", "ttft_p90<=30ms", *args)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_a_setting_that_fails_to_start_is_reported_and_the_others_run(tmp_path):
    (tmp_path / "demo.yaml").write_text(DEMO)
    env = {**GRID_ENV, "FAKE_VLLM_EXIT_WITH": "--max-num-seqs 4"}
    result = run_cli(*_grid_args(tmp_path, "max_num_seqs=4,2"), "--write", "--format", "json", env=env)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    failed, ran = doc["engine"]["settings"]
    assert failed["failed"] and "exited with code 1" in failed["error"] and failed["answer"] is None
    assert "fake vllm: refusing --max-num-seqs 4" in result.stderr  # the last lines of its output
    assert not ran["failed"] and 1 <= ran["answer"]["max_concurrency"] <= 2
    assert doc["engine"]["best"] == 1 and doc["write"] is None
    assert "nothing written" in doc["notes"][0] and (tmp_path / "demo.yaml").read_text() == DEMO


def test_ctrl_c_stops_the_running_server_and_exits_130(tmp_path):
    import signal
    import time

    (tmp_path / "demo.yaml").write_text(DEMO)
    log = tmp_path / "requests.jsonl"
    args = [sys.executable, "-m", "renderer", *_grid_args(tmp_path, "max_num_seqs=2,4")]
    env = {**os.environ, **GRID_ENV, "FAKE_VLLM_LOG": str(log)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _started(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # booting or measuring: either way a vLLM runs
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    [server] = _started(log)  # the second setting never started
    with pytest.raises(ProcessLookupError):
        os.kill(server["pid"], 0)
    assert "Traceback" not in err


def test_an_overlay_is_the_top_layer_over_the_environments(tmp_path):
    from renderer.config.load import load_fleet, load_option
    from renderer.config.resolve import Overlay, resolve, resolve_with

    (tmp_path / "fleet.yaml").write_text(
        "environments:\n  prod:\n    modal_environment: llm-prod\n"
        "    overrides:\n      engine:\n        max_num_seqs: 8\n"
    )
    (tmp_path / "demo.yaml").write_text(DEMO + "environments:\n  prod:\n    engine:\n      max_num_seqs: 16\n")
    fleet = resolve(load_fleet([str(tmp_path)]), "prod")
    assert fleet.ok and fleet.deployments[0].engine.max_num_seqs == 16
    overlay = Overlay("demo", load_option("--engine max_num_seqs=4", ("engine", "max_num_seqs"), "4"))
    deployment, found = resolve_with(fleet, "demo", overlay)
    assert found == [] and deployment.engine.max_num_seqs == 4 and "4" in deployment.argv
    assert deployment.argv[deployment.argv.index("--max-num-seqs") + 1] == "4"


def test_engine_grid_is_every_combination_in_order():
    from renderer.endpoint.tune import ENGINE_KEYS, engine_grid

    assert engine_grid(["max_num_seqs=1,2 kv_cache_dtype=auto,fp8"]) == [
        {"max_num_seqs": "1", "kv_cache_dtype": "auto"},
        {"max_num_seqs": "1", "kv_cache_dtype": "fp8"},
        {"max_num_seqs": "2", "kv_cache_dtype": "auto"},
        {"max_num_seqs": "2", "kv_cache_dtype": "fp8"},
    ]
    assert engine_grid([]) == [{}]
    from renderer.config.schema import DEPLOYMENT_SCHEMA, load_schema

    assert set(ENGINE_KEYS) <= set(load_schema(DEPLOYMENT_SCHEMA)["$defs"]["engine"]["properties"])
