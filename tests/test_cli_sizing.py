"""Sizing through the real CLI: `fleetform new` writes a deployment `validate` accepts, and
`validate` refuses a deployment whose cached model cannot fit its GPUs. The Hugging Face cache is
a temporary folder laid out as huggingface_hub lays it out; nothing reaches the Hub."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time

import pytest
from test_sizing import LLAMA_8B_FILES, REVISION, model_dir

from conftest import run_cli

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def checkpoint(tmp_path):
    """Llama-3.1-8B's config.json and its four safetensors files (sparse: sized, not filled)."""
    return model_dir(tmp_path / "checkpoint")


def new(out, checkpoint, *extra: str):
    return run_cli("new", MODEL, "--revision", REVISION, "--from-dir", str(checkpoint), "--out", str(out), *extra)


# --- fleetform new ---------------------------------------------------------------------------------------


def test_new_writes_a_deployment_that_validates(tmp_path, checkpoint):
    out = tmp_path / "deployments"
    result = new(out, checkpoint, "--max-model-len", "8192", "--concurrency", "16")
    assert result.returncode == 0, result.stderr
    path = out / "llama-3-1-8b-instruct.yaml"
    assert f"wrote {path.as_posix()}: 2 x L4 at $1.60/hour a container" in result.stdout
    assert "chosen" in result.stdout and result.stderr == ""
    check = run_cli("validate", str(path))
    assert (check.returncode, check.stdout, check.stderr) == (0, "ok: 1 deployment(s) valid\n", "")
    # bounded: an unset max_containers is unbounded, and the file says what the ceiling costs
    text = path.read_text()
    assert "\nscaling:\n" in text and "\n  max_containers: 2\n  target_concurrency: 16\n" in text
    assert "at most 2 containers, $3.20/hour" in text
    plan = json.loads(run_cli("plan", str(path), "--format", "json").stdout)
    assert plan["deployments"][0]["usd_per_hour_max"] == pytest.approx(
        2 * plan["deployments"][0]["usd_per_container_hour"]
    )


def test_new_json_and_refusing_to_overwrite(tmp_path, checkpoint):
    out = tmp_path / "deployments"
    result = new(out, checkpoint, "--max-model-len", "8192", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["chosen"]["gpu"], doc["chosen"]["count"]) == ("L4", 1)
    assert doc["path"] == (out / "llama-3-1-8b-instruct.yaml").as_posix()
    again = new(out, checkpoint, "--max-model-len", "8192")
    assert again.returncode == 1
    assert (
        again.stderr == f"error: {out / 'llama-3-1-8b-instruct.yaml'} already exists: pass --force to replace it, "
        "or --name NAME\n"
    )
    assert new(out, checkpoint, "--max-model-len", "8192", "--force").returncode == 0


def test_new_prices_come_from_the_fleet_it_joins(tmp_path, checkpoint):
    """An L4 priced out of reach in OUT/fleet.yaml: the next cheapest fit is chosen instead."""
    out = tmp_path / "deployments"
    out.mkdir()
    (out / "fleet.yaml").write_text("prices:\n  L4: 50.0\n")
    result = new(out, checkpoint, "--max-model-len", "8192", "--format", "json")
    assert result.returncode == 0, result.stderr
    chosen = json.loads(result.stdout)["chosen"]
    assert (chosen["gpu"], chosen["count"]) == ("A10", 1)
    assert run_cli("validate", str(out)).returncode == 0


def test_new_refuses_a_fleet_yaml_that_does_not_validate(tmp_path, checkpoint):
    out = tmp_path / "deployments"
    out.mkdir()
    (out / "fleet.yaml").write_text("prices:\n  L4: cheap\n")
    result = new(out, checkpoint)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == (
        f"error: {out / 'fleet.yaml'} does not validate, so its GPU prices cannot be used; fix it first"
    )
    assert f"{out / 'fleet.yaml'}:2:7: error: prices.L4: " in result.stderr
    assert not (out / "llama-3-1-8b-instruct.yaml").exists()


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["new", MODEL], 2, "the following arguments are required: --revision"),
        (["new", MODEL, "--revision", "main"], 2, "error: --revision 'main': pin a full 40-character commit hash"),
        (
            ["new", MODEL, "--revision", REVISION, "--quantization", "int3"],
            2,
            "argument --quantization: invalid choice",
        ),
        (
            ["new", MODEL, "--revision", REVISION, "--from-dir", "no/such/dir"],
            1,
            "error: --from-dir no/such/dir: not a directory",
        ),
    ],
)
def test_new_errors_are_one_line(tmp_path, argv, code, message):
    result = run_cli(*argv, "--out", str(tmp_path))
    assert result.returncode == code and message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# --- validate: does the cached model fit? -----------------------------------------------------------------

DEPLOYMENT = f"""\
name: llama-8b
model:
  id: {MODEL}
  revision: {REVISION}
  max_model_len: {{max_model_len}}
gpu:
  type: L4
"""


@pytest.fixture
def hf_cache(tmp_path):
    """A Hugging Face cache holding Llama-3.1-8B-Instruct at REVISION: config.json and its weights."""
    hub = tmp_path / "hf" / "hub"
    model_dir(hub / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / REVISION, files=LLAMA_8B_FILES)
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub)}


def write_deployment(tmp_path, max_model_len: int):
    path = tmp_path / "fleet" / "llama-8b.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(DEPLOYMENT.format(max_model_len=max_model_len))
    return path


def test_a_cached_model_that_cannot_fit_is_an_error_at_its_line(tmp_path, hf_cache):
    """14.96 GiB of weights + 16 GiB of KV for one 131072-token sequence (128 KiB a token) on one L4 at
    vLLM 0.26.0's default utilization: 0.92 x 24 GiB = 22.08 GiB, 21.08 GiB after 1 GiB of overhead.
    What fits beside the weights: (22.08 - 14.96 - 1) GiB / 128 KiB = 50135 tokens, offered rounded
    down to 49152."""
    path = write_deployment(tmp_path, 131072)
    result = run_cli("validate", str(path), env=hf_cache)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"{path}:5:18: error: model.max_model_len: 15.0 GiB of weights + 16.0 GiB of KV cache for one 131072-token "
        "sequence do not fit 1 x L4 at 0.92 utilization (21.1 GiB after overhead): vLLM would refuse to start\n"
        "    hint: set model.max_model_len to at most 49152, or 2 x L4 ($1.60/h) is the cheapest that fits\n"
        "1 error(s); nothing was rendered or deployed\n"
    )


def test_a_cached_model_that_fits_passes(tmp_path, hf_cache):
    result = run_cli("validate", str(write_deployment(tmp_path, 32768)), env=hf_cache)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")


def test_without_the_model_in_the_cache_the_fit_is_not_checked(tmp_path, hf_cache):
    """The session's own cache is empty, and another revision is not the cached one: no check, no network."""
    path = write_deployment(tmp_path, 131072)
    assert run_cli("validate", str(path)).returncode == 0
    path.write_text(path.read_text().replace(REVISION, "a" * 40))
    assert run_cli("validate", str(path), env=hf_cache).returncode == 0


# --- new: names, file modes, and a broken cache -------------------------------------------------------------


@pytest.mark.parametrize("argv", [["fleetco/fleet"], [MODEL, "--name", "fleet"]])
def test_new_never_writes_the_fleet_file(tmp_path, checkpoint, argv):
    """NAME.yaml named fleet.yaml would be read as the fleet's own file: refuse it, even with --force."""
    out = tmp_path / "deployments"
    out.mkdir()
    (out / "fleet.yaml").write_text("prices:\n  L4: 0.8\n")
    result = run_cli("new", *argv, "--revision", REVISION, "--from-dir", str(checkpoint), "--out", str(out), "--force")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "error: fleet.yaml is the fleet's own file (defaults, environments, prices), not a "
        "deployment: pass --name NAME to write the deployment under another name\n"
    )
    assert (out / "fleet.yaml").read_text() == "prices:\n  L4: 0.8\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_new_honours_the_umask(tmp_path, checkpoint, umask, mode):
    out = tmp_path / "deployments"
    code = (
        f"import os, sys; os.umask({umask}); from renderer.cli import main; "
        f"sys.exit(main(['new', {MODEL!r}, '--revision', {REVISION!r}, '--from-dir', {str(checkpoint)!r}, "
        f"'--out', {str(out)!r}, '--max-model-len', '8192']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((out / "llama-3-1-8b-instruct.yaml").stat().st_mode) == mode


def broken_cache(tmp_path, snapshot_config: str | None):
    """A Hugging Face cache whose Llama-3.1-8B entry is broken: a garbled config.json, or (None) a
    `snapshots` that is a file, as a cache left half-written or copied wrongly can be."""
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--meta-llama--Llama-3.1-8B-Instruct"
    if snapshot_config is None:
        repo.mkdir(parents=True)
        (repo / "snapshots").write_text("not a folder\n")
    else:
        folder = model_dir(repo / "snapshots" / REVISION, files=LLAMA_8B_FILES)
        (folder / "config.json").write_text(snapshot_config)
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"hidden_size": 4096,', "error: config.json is not valid JSON: "),
        ('{"model_type": "llama", "hidden_size": true}', "error: config.json `hidden_size` should be"),
        (None, "error: cannot read the Hugging Face cache at "),
    ],
)
def test_new_with_a_broken_cache_names_the_file(tmp_path, config, message):
    env = broken_cache(tmp_path, config)
    result = run_cli("new", MODEL, "--revision", REVISION, "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "models--meta-llama--Llama-3.1-8B-Instruct" in result.stderr  # which file, in which cache
    assert "internal error" not in result.stderr


@pytest.mark.parametrize("config", ['{"hidden_size": 4096,', '{"model_type": "llama", "hidden_size": true}'])
def test_validate_with_a_broken_cached_config_skips_the_fit_check_and_says_why(tmp_path, config):
    env = broken_cache(tmp_path, config)
    path = write_deployment(tmp_path, 131072)
    result = run_cli("validate", str(path), env=env)
    assert result.returncode == 0 and "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "ok: 1 deployment(s) valid, 1 warning(s)\n"
    assert result.stderr.startswith(
        f"{path}:4:13: warning: model.revision: cannot check that the model fits its GPUs: "
    )
    assert "models--meta-llama--Llama-3.1-8B-Instruct" in result.stderr  # the file, in its cache


def test_validate_with_a_broken_cache_folder_does_not_check_the_fit(tmp_path):
    """`snapshots` is a file: the model is not in the cache, so there is nothing to check (and no crash)."""
    result = run_cli("validate", str(write_deployment(tmp_path, 131072)), env=broken_cache(tmp_path, None))
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")


def test_new_without_the_hub_fails_at_once_in_one_line(tmp_path):
    """Nothing listens on the endpoint: one error line, no minute of "Retrying" from huggingface_hub."""
    start = time.monotonic()
    result = run_cli(
        "new",
        MODEL,
        "--revision",
        REVISION,
        "--out",
        str(tmp_path / "out"),
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
        unset=("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"),
    )
    assert time.monotonic() - start < 15
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {MODEL}@{REVISION[:12]}: cannot reach the Hub at http://127.0.0.1:9 "
        "(Connection refused): pass --from-dir DIR to size it offline\n"
    )
