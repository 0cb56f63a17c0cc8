"""Tests as data: every invalid deployment in cases/invalid, through the real CLI, with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_cli

# A case is one deployment file `NAME.yaml`, or a folder `NAME/` (a fleet: fleet.yaml and deployments),
# with the exact output of `fleetform validate` on it in `NAME.expected`.
CASES = sorted(p for p in (Path(__file__).parent / "cases" / "invalid").iterdir() if p.suffix == ".yaml" or p.is_dir())


def test_there_are_invalid_cases():
    assert len(CASES) >= 20
    for case in CASES:
        assert case.with_suffix(".expected").is_file(), case.name


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_invalid_case_reports_exact_message(case: Path):
    rel = case.relative_to(REPO).as_posix()
    result = run_cli("validate", rel)
    expected = (case.parent / (case.stem + ".expected")).read_text()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "nothing was rendered" not in line]
    assert "\n".join(lines) + "\n" == expected
    # every error line names file:line:col and a field path
    for line in lines:
        if not line.startswith("    hint:"):
            assert line.startswith(f"{rel}/" if case.is_dir() else f"{rel}:"), line
            assert ": error: " in line or ": warning: " in line, line


def test_examples_validate_clean():
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 4 deployment(s) valid"
    assert result.stderr == ""


def test_json_output_lists_every_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad\nmodel:\n  id: a/b\n  revision: main\ngpu:\n  type: H10\n")
    result = run_cli("validate", str(bad), "--format", "json")
    assert result.returncode == 1
    import json

    data = json.loads(result.stdout)
    assert data["ok"] is False
    got = {(d["path"], d["line"], d["column"]) for d in data["diagnostics"]}
    assert got == {("name", 1, 7), ("model.revision", 4, 13), ("gpu.type", 6, 9)}


def test_github_format_annotates(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ok\nmodel:\n  id: a/b\n  revision: main\ngpu:\n  type: H100\n")
    result = run_cli("validate", str(bad), "--format", "github")
    assert result.returncode == 1
    assert result.stdout.startswith(
        f"::error file={bad},line=4,col=13,title=fleetform schema-pattern::model.revision: "
    )


def test_missing_path_is_a_clear_error():
    result = run_cli("validate", "no/such/file.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith("no/such/file.yaml:1:1: error: (document): no such file")


def test_unknown_environment_is_a_usage_error():
    result = run_cli("plan", "--env", "prd")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: unknown environment 'prd'; fleet.yaml declares: dev, prod; did you mean \"prod\"?"
    )


def test_usage_error_exit_code():
    assert run_cli("validate", "--format", "xml").returncode == 2
    assert run_cli().returncode == 2


def test_validate_does_not_import_modal(tmp_path):
    code = (
        "import sys, renderer.cli as c; rc = c.main(['validate', 'deployments']); "
        "print(rc, 'modal' in sys.modules, 'aiohttp' in sys.modules, 'jinja2' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split()[-4:] == ["0", "False", "False", "False"]


def test_plan_table_and_json():
    result = run_cli("plan", "--env", "prod", "--format", "json")
    assert result.returncode == 0, result.stderr
    import json

    plan = json.loads(result.stdout)
    rows = {r["name"]: r for r in plan["deployments"]}
    big = rows["llama-3-3-70b-fp8"]
    # 2 x H100 that may fall back to H200: priced at the dearer H200, 1 to 2 containers in prod
    from renderer.gpus import GPU_TYPES

    h200 = GPU_TYPES["H200"].usd_per_hour
    assert big["priced_gpu"] == "H200" and big["usd_per_container_hour"] == pytest.approx(2 * h200)
    assert big["usd_per_hour_min"] == pytest.approx(2 * h200 * 1)
    assert big["usd_per_hour_max"] == pytest.approx(2 * h200 * 2)
    assert big["containers"] == "1-2"
    assert big["model"] == "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic@f50dbad"
    assert plan["totals"]["idle_usd_per_day"] == pytest.approx(round(2 * h200 * 24, 2))
    assert plan["prices"]["as_of"]
    text = run_cli("plan").stdout
    assert "llama-3-1-8b-fp8" in text and "$/h min-max" in text and "as of" in text


def test_render_check_detects_stale(tmp_path):
    out = tmp_path / "build"
    assert run_cli("render", "--out", str(out)).returncode == 0
    assert run_cli("render", "--out", str(out), "--check").returncode == 0
    victim = out / "qwen2-5-7b-awq.py"
    victim.write_text(victim.read_text() + "# edited\n")
    result = run_cli("render", "--out", str(out), "--check")
    assert result.returncode == 1
    assert f"stale: {victim}: out of date" in result.stderr


def test_explain_names_where_each_value_came_from():
    import json

    result = run_cli("explain", "llama-3-3-70b-fp8", "--env", "prod", "--format", "json")
    assert result.returncode == 0, result.stderr
    fields = {f["path"]: f for f in json.loads(result.stdout)["fields"]}
    where = lambda p: (fields[p]["from"]["file"], fields[p]["from"]["line"]) if fields[p]["from"] else None
    # fleet.yaml's prod overrides, the deployment's own prod overlay, the deployment, fleet defaults, schema
    assert fields["scaling.buffer_containers"]["value"] == 1
    assert where("scaling.buffer_containers") == ("deployments/fleet.yaml", 28)
    assert fields["scaling.min_containers"]["value"] == 1
    assert where("scaling.min_containers") == ("deployments/llama-3-3-70b-fp8.yaml", 38)
    assert where("gpu.type") == ("deployments/llama-3-3-70b-fp8.yaml", 19)
    assert where("engine.vllm_version") == ("deployments/fleet.yaml", 9)
    assert fields["engine.port"] == {"path": "engine.port", "value": 8000, "from": None}
    assert where("environment") == ("deployments/fleet.yaml", 25) and fields["environment"]["value"] == "llm-prod"
    assert "environments" not in fields
    assert run_cli("explain", "llama-3-3-70b").returncode == 2


def test_environment_overrides_beat_the_deployment_file(tmp_path):
    """fleet.yaml defaults < deployment file < the environment's overrides < the deployment's own overlay."""
    import json

    (tmp_path / "fleet.yaml").write_text(
        "defaults:\n  scaling: {max_containers: 9, buffer_containers: 3}\n"
        "environments:\n  dev:\n    modal_environment: ff-dev\n    overrides:\n"
        "      scaling: {max_containers: 1, min_containers: 0}\n"
    )
    (tmp_path / "a.yaml").write_text(
        f"name: a\nmodel: {{id: org/m, revision: {'a' * 40}}}\ngpu: {{type: L4}}\n"
        "scaling: {max_containers: 4, buffer_containers: 2}\n"
        "environments:\n  dev:\n    scaling: {min_containers: 1}\n"
    )
    got = lambda *env: {
        f["path"]: f["value"]
        for f in json.loads(run_cli("explain", "a", str(tmp_path), "--format", "json", *env).stdout)["fields"]
    }
    base, dev = got(), got("--env", "dev")
    assert (base["scaling.max_containers"], base["scaling.buffer_containers"], base["scaling.min_containers"]) == (
        4,
        2,
        0,
    )
    assert (dev["scaling.max_containers"], dev["scaling.buffer_containers"], dev["scaling.min_containers"]) == (1, 2, 1)
    assert dev["environment"] == "ff-dev"


def test_plan_totals_per_environment():
    import json

    from renderer.gpus import GPU_TYPES

    plan = json.loads(run_cli("plan", "--format", "json").stdout)
    totals = {t["fleet_env"]: t for t in plan["by_fleet_env"]}
    assert set(totals) == {None, "dev", "prod"}
    price = {k: v.usd_per_hour for k, v in GPU_TYPES.items()}
    # dev caps every deployment at one container; a GPU with fallbacks is priced at the dearest
    # that may run it (H100 -> H200, L4 -> A10)
    assert totals["dev"]["ceiling_usd_per_hour"] == pytest.approx(
        round(price["B200"] + 2 * price["H200"] + price["A10"] + price["L40S"], 2)
    )
    # prod keeps the 70B model's two GPUs (H100, or its H200 fallback) warm around the clock
    assert totals["prod"]["idle_usd_per_day"] == pytest.approx(round(2 * price["H200"] * 24, 2))
    assert totals[None]["ceiling_usd_per_hour"] is None  # the reference deployment sets no max
