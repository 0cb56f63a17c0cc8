"""`plan` and staging: the cold-start download estimate in every plan (offline too), and, with
credentials, whether each deployment's weights are staged (through the real CLI, in-process, with
the in-memory backend; the control-plane path is in test_stage_modal.py)."""

from __future__ import annotations

import json

import pytest

from renderer import cli, modal_api
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.plan import coldstart

from conftest import REPO, run_cli
from fake_backend import FakeBackend

MODAL_ENV = "llm-dev"  # the example fleet's `--env dev`


def example(env=None):
    fleet = resolve(load_fleet([str(REPO / "deployments")]), env)
    assert fleet.ok
    return fleet


def test_the_estimate_is_bytes_over_the_rate_times_the_gpus_and_their_price():
    fleet = example()
    d = next(d for d in fleet.deployments if d.name == "llama-3-3-70b-fp8")
    row = coldstart.ColdStartDownload.of(d, fleet.prices)
    assert d.model.parameters_b == 70.6 and d.model.quantization == "fp8" and d.gpu.count == 2
    assert row.weight_bytes == 70_600_000_000  # 1 byte a parameter in FP8
    assert row.download_seconds == 706.0  # at 100 MB/s
    assert row.gpu_minutes == round(706 / 60 * 2, 2)
    from renderer.plan.cost import gpu_hourly

    assert row.usd == round(706 / 3600 * gpu_hourly(d, fleet.prices), 4) and row.priced_gpu == "H200"


def test_quantize_on_load_downloads_16_bits_and_no_parameter_count_no_estimate(tmp_path):
    f = tmp_path / "d.yaml"
    base = "name: q\nmodel:\n  id: org/m\n  revision: " + "a" * 40 + "\n  served_model_names: [m]\n"
    f.write_text(base + "  quantization: fp8\n  quantize_on_load: true\n  parameters_b: 8\ngpu:\n  type: H100\n")
    (d,) = resolve(load_fleet([str(f)])).deployments
    assert coldstart.download_bytes(d) == 16e9
    f.write_text(base + "gpu:\n  type: H100\n")
    (d,) = resolve(load_fleet([str(f)])).deployments
    row = coldstart.ColdStartDownload.of(d, {})
    assert row.weight_bytes is None and row.usd is None and row.gpu_minutes is None


def test_offline_plan_shows_the_estimate_and_nothing_about_staging():
    result = run_cli("plan")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "First cold start without staged weights" in text
    assert "llama-3-3-70b-fp8: 70.6 GB, about 11.8 min on 2 x H200 = 23.53 GPU-minutes, $" in text
    assert "assumed 100 MB/s" in text
    assert "Staged weights" not in text and "not staged" not in text
    doc = json.loads(run_cli("plan", "--format", "json").stdout)
    assert doc["staging"] is None
    est = doc["cold_start_download"]
    assert est["download_bytes_per_second"] == 100_000_000
    rows = {r["name"]: r for r in est["deployments"]}
    assert set(rows) == {d.name for d in example().deployments}
    assert rows["llama-3-1-8b-fp8"]["weight_bytes"] == 8_000_000_000 and rows["llama-3-1-8b-fp8"]["gpus"] == 1


@pytest.fixture
def live(monkeypatch):
    monkeypatch.chdir(REPO)
    fake = FakeBackend()
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    monkeypatch.setattr(modal_api, "credentials_available", lambda environ=None: True)
    return fake


def test_live_plan_says_which_deployments_are_staged(live, capsys):
    fleet = example("dev")
    staged = next(d for d in fleet.deployments if d.name == "qwen2-5-7b-instruct")
    live.volumes[(MODAL_ENV, staged.cache.huggingface_volume)] = {(staged.model.id, staged.model.revision)}
    assert cli.main(["plan", "--env", "dev", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    states = {s["name"]: s for s in doc["staging"]}
    assert states[staged.name]["staged"] is True and states[staged.name]["missing"] == []
    assert states[staged.name]["repos"] == [f"{staged.model.id}@{staged.model.revision}"]
    others = [s for n, s in states.items() if n != staged.name]
    assert others and all(s["staged"] is False and s["missing"] == s["repos"] for s in others)
    assert all(s["modal_env"] == MODAL_ENV and s["volume"] == "huggingface-cache" for s in states.values())
    assert {c[0] for c in live.stage_calls} == {"staged"}  # plan only reads

    assert cli.main(["plan", "--env", "dev"]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if staged.name in line and "huggingface-cache" in line)
    assert f"{staged.model.id}@{staged.model.revision[:7]}" in line and "staged" in line and "not staged" not in line
    assert text.count("not staged") == len(others)


def test_live_plan_when_modal_cannot_tell(live, capsys):
    def broken(*_):
        raise modal_api.NetworkError("cannot reach Modal (reset): check the network connection and retry")

    live.staged = broken
    assert cli.main(["plan", "--env", "dev", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {s["staged"] for s in doc["staging"]} == {None}
    assert doc["staging"][0]["error"].startswith("cannot reach Modal")
