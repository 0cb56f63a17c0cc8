"""`fleetform test`, `bench` and `serve` through the real CLI, against the OpenAI-compatible test
server run in its own process: what the server sends is printed as sent, and options that cannot
run (a timeout of nan, a rate of 0, an unbalanced quote) are usage errors, not hangs or crashes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

HERE = Path(__file__).resolve().parent
MARKUP_MODELS = ["m[/bold]", "[link=https://example.com]n"]
MARKUP_TOKEN = "[red]t{i}[/red] "


@pytest.fixture(scope="module")
def markup_server():
    """The test server serving model names and text that rich would read as markup."""
    argv = [sys.executable, str(HERE / "openai_server.py"), "--output-tokens", "3", "--token-text", MARKUP_TOKEN]
    for m in MARKUP_MODELS:
        argv += ["--model", m]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_test_prints_model_names_and_text_literally(markup_server):
    args = ["test", markup_server, "--prompt", "Say [bold]hi[/bold]."]
    for m in MARKUP_MODELS:
        args += ["--model", m]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for m in MARKUP_MODELS:
        assert m in result.stdout  # the served names as the server listed them
    assert "[red]t0[/red] [red]t1[/red] [red]t2[/red]" in result.stdout  # the reply, markup and all


def test_test_without_model_takes_the_served_names(markup_server):
    result = run_cli("test", markup_server, "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == MARKUP_MODELS[0] and doc["available_models"] == MARKUP_MODELS


def test_test_json_is_unchanged_by_markup(markup_server):
    result = run_cli("test", markup_server, "--model", MARKUP_MODELS[0], "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == MARKUP_MODELS[0]


def test_bench_prints_the_model_name_literally(markup_server):
    result = run_cli("bench", markup_server, "--model", MARKUP_MODELS[1], "--num-requests", "2", "--output-len", "3")
    assert result.returncode == 0, result.stderr
    assert f"Serving benchmark: {MARKUP_MODELS[1]}" in result.stdout


def test_explain_prints_values_literally(tmp_path):
    folder = tmp_path / "deployments"
    folder.mkdir()
    text = (REPO / "deployments" / "qwen2-5-7b-instruct.yaml").read_text()
    text = re.sub(r"(?m)^description:.*$", 'description: "[/bold] closes nothing; [link=https://e.com]x [red]y"', text)
    (folder / "x.yaml").write_text(text)
    result = run_cli("explain", "qwen2-5-7b-instruct", str(folder))
    assert result.returncode == 0, result.stderr
    assert '"[/bold] closes nothing; [link=https://e.com]x [red]y"' in result.stdout


def test_bench_output_file_and_json_are_the_same_document(markup_server, tmp_path):
    path = tmp_path / "results.json"
    result = run_cli(
        "bench",
        markup_server,
        "--model",
        MARKUP_MODELS[0],
        "--num-requests",
        "2",
        "--output-len",
        "3",
        "--format",
        "json",
        "--output",
        str(path),
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == json.loads(path.read_text())
    assert doc["config"]["base_url"] == markup_server and doc["results"][0]["completed"] == 2
    level = doc["results"][0]  # vllm bench serve's flat keys beside the nested figures
    assert level["median_ttft_ms"] == level["ttft_ms"]["median"] and level["p99_e2el_ms"] == level["e2el_ms"]["p99"]
    assert level["duration"] == level["duration_s"] and level["output_throughput"] > 0


# --- options that cannot run are usage errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["bench", "http://127.0.0.1:9", "--model", "m", "--output"], ["tune", "http://127.0.0.1:9", "--plot"]]
)
def test_a_file_written_at_the_end_is_checked_before_the_work_starts(args, tmp_path):
    """bench --output and tune --plot: a folder, a FIFO (opening it for writing would block) or a missing
    folder is a usage error while the options are read; nothing is written, the FIFO stays a FIFO."""
    import os
    import stat

    suffix = ".json" if args[0] == "bench" else ".html"
    (tmp_path / f"dir{suffix}").mkdir()
    os.mkfifo(tmp_path / f"fifo{suffix}")
    cases = {
        f"dir{suffix}": f"'{tmp_path}/dir{suffix}' is not a regular file",
        f"fifo{suffix}": f"'{tmp_path}/fifo{suffix}' is not a regular file",
        f"none/x{suffix}": f"'{tmp_path}/none/x{suffix}': there is no folder '{tmp_path}/none'",
    }
    for name, says in cases.items():
        result = run_cli(*args, str(tmp_path / name), *(["--slo", "ttft_p90<=1s"] if args[0] == "tune" else []))
        assert result.returncode == 2 and f"argument {args[-1]}: {says}" in result.stderr, result.stderr
        assert "checking http" not in result.stderr  # refused before the health check
    assert stat.S_ISFIFO(os.stat(tmp_path / f"fifo{suffix}").st_mode)
    assert sorted(os.listdir(tmp_path)) == [f"dir{suffix}", f"fifo{suffix}"]


@pytest.mark.parametrize("command", ["test", "bench"])
@pytest.mark.parametrize("flag", ["--timeout", "--health-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "soon"])
def test_a_health_wait_that_cannot_end_is_a_usage_error(command, flag, value):
    # 127.0.0.1:9 is never contacted: the options are refused before any request.
    result = run_cli(command, "http://127.0.0.1:9", "--model", "m", flag, value)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert f"argument {flag}: " in result.stderr or "argument --health-timeout: " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["test", "http://127.0.0.1:9", "--model", "m", "--max-tokens", "0"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--duration", "nan"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--duration", "inf"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--request-rate", "nan"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--request-rate", "1,inf"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--concurrency", "0"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--num-requests", "-5"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--input-len", "0"],
        ["bench", "http://127.0.0.1:9", "--model", "m", "--seed", "-1"],
        ["serve", "x", "--local", "--port", "70000"],
        ["serve", "x", "--local", "--startup-timeout", "0"],
        ["new", "a/b", "--revision", "0" * 40, "--max-model-len", "0"],
        ["new", "a/b", "--revision", "0" * 40, "--gpu-memory-utilization", "nan"],
        ["new", "a/b", "--revision", "0" * 40, "--concurrency", "1.5"],
    ],
)
def test_numbers_out_of_range_are_usage_errors(argv):
    result = run_cli(*argv)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "error: argument --" in result.stderr and "Traceback" not in result.stderr


def test_max_concurrency_without_request_rate_is_a_usage_error():
    result = run_cli("bench", "http://127.0.0.1:9", "--model", "m", "--max-concurrency", "4")
    assert result.returncode == 2
    assert result.stderr == (
        "error: --max-concurrency caps the open loop of --request-rate; for a closed loop use --concurrency\n"
    )


def test_abbreviated_options_are_refused():
    result = run_cli("validate", "--form", "json")
    assert result.returncode == 2 and "unrecognized arguments: --form" in result.stderr


# --- serve ------------------------------------------------------------------------------------------------------


def test_serve_with_an_unbalanced_quote_in_vllm_is_a_usage_error():
    result = run_cli("serve", "qwen2-5-7b-instruct", "--local", "--vllm", "python3 -m 'vllm")
    assert result.returncode == 2
    assert "argument --vllm: cannot split" in result.stderr and "internal error" not in result.stderr


def test_serve_without_vllm_says_so(tmp_path):
    result = run_cli("serve", "qwen2-5-7b-instruct", "--local", "--vllm", str(tmp_path / "no-vllm-here"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot run {str(tmp_path / 'no-vllm-here')!r}: it is not on PATH")
    assert "internal error" not in result.stderr


def test_serve_without_vllm_on_path_says_so(tmp_path):
    result = run_cli("serve", "qwen2-5-7b-instruct", "--local", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot run 'vllm': it is not on PATH. Install vLLM")


def test_serve_local_binds_loopback_unless_told():
    argv = run_cli("serve", "qwen2-5-7b-instruct", "--local", "--print-argv")
    assert argv.returncode == 0, argv.stderr
    assert " --host 127.0.0.1 " in argv.stdout and "0.0.0.0" not in argv.stdout
    wide = run_cli("serve", "qwen2-5-7b-instruct", "--local", "--print-argv", "--host", "0.0.0.0")
    assert " --host 0.0.0.0 " in wide.stdout


def test_explain_prints_yaml_values():
    result = run_cli("explain", "qwen2-5-7b-instruct")
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.count("│") == 4
    }
    assert rows["model.id"] == "Qwen/Qwen2.5-7B-Instruct"
    assert rows["model.quantize_on_load"] == "false" and "False" not in result.stdout
    assert rows["description"] == '"General-purpose chat in BF16 on L40S"'


def test_serve_when_vllm_exits_at_start_is_one_error(tmp_path):
    vllm = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    result = run_cli("serve", "qwen2-5-7b-instruct", "--local", "--vllm", vllm, "--startup-timeout", "30")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith("[fleetform] error: ")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
