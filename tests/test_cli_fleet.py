"""Fleet-wide output through the real CLI: `plan --against` and the GitHub formats, and the gateway
module that fleet.yaml's `gateway` adds to render, plan and validate."""

from __future__ import annotations

import json
import shutil

import pytest

from renderer.codegen.gateway import render_gateway
from renderer.codegen.render import render_fleet
from renderer.codegen.write import write_all
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import REPO, run_cli
from test_gitref import FLEET_YAML, REV_2, deployment_yaml, fleet_repo, git, git_env, write  # noqa: F401

# --- plan --against and the GitHub formats ------------------------------------------------------------------


def test_plan_against_a_revision(fleet_repo):
    short = git(fleet_repo, "rev-parse", "--short=7", "HEAD~1")
    result = run_cli("plan", "--against", "HEAD~1", cwd=fleet_repo)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"fleetform plan: the working tree against HEAD~1 ({short})\n")
    assert (
        "\nPlan: 1 to create, 2 to update (1 with new containers), 1 to remove, 0 unchanged.\nCost: " in result.stdout
    )


def test_plan_against_detailed_exitcode(fleet_repo):
    assert run_cli("plan", "--against", "HEAD~1", "--detailed-exitcode", cwd=fleet_repo).returncode == 2
    assert run_cli("plan", "--against", "HEAD", "--detailed-exitcode", cwd=fleet_repo).returncode == 0
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", REV_2, max_containers=3)})
    result = run_cli("plan", "--against", "HEAD", "--detailed-exitcode", "--format", "json", cwd=fleet_repo)
    doc = json.loads(result.stdout)
    assert result.returncode == 2 and doc["summary"] == {"create": 0, "update": 1, "remove": 0, "unchanged": 2}


def test_plan_against_github_annotates_and_summarises(fleet_repo, tmp_path):
    summary = tmp_path / "summary.md"
    result = run_cli(
        "plan",
        "--against",
        "HEAD~1",
        "--env",
        "prod",
        "--format",
        "github",
        cwd=fleet_repo,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(
        "::notice file=deployments/batch.yaml,line=8,col=19,title=fleetform plan::batch: "
        "scaling.max_containers: 4 -> 8: scaling"
    )
    assert "\n::warning file=deployments/chat.yaml,line=4," in result.stdout
    assert summary.read_text().startswith("## fleetform plan\n")


def test_plan_against_an_unknown_revision_is_one_line(fleet_repo):
    result = run_cli("plan", "--against", "no-such-branch", cwd=fleet_repo)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_validate_github(fleet_repo, tmp_path):
    summary = tmp_path / "summary.md"
    environ = {"GITHUB_STEP_SUMMARY": str(summary)}
    result = run_cli("validate", "--format", "github", cwd=fleet_repo, env=environ)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert summary.read_text() == "## fleetform validate\n\n**3 deployment(s) valid**.\n\n"
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", "main")})
    result = run_cli("validate", "--format", "github", cwd=fleet_repo, env=environ)
    assert result.returncode == 1
    assert result.stdout.startswith("::error file=deployments/chat.yaml,line=4,col=13,title=fleetform schema-pattern::")


# --- the gateway ----------------------------------------------------------------------------------------

GATEWAY = "gateway:\n  enabled: true\n  min_containers: 1\n"


@pytest.fixture
def gateway_fleet(tmp_path, monkeypatch):
    """The example fleet, with the gateway enabled in its fleet.yaml, as the working directory."""
    shutil.copytree(REPO / "deployments", tmp_path / "deployments")
    fleet = tmp_path / "deployments" / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "\n" + GATEWAY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def gateway_line(root) -> int:
    lines = (root / "deployments" / "fleet.yaml").read_text().splitlines()
    return lines.index("gateway:") + 1


def test_resolve_carries_the_gateway_and_the_modal_environment(gateway_fleet):
    resolved = resolve(load_fleet(["deployments"]), "dev")
    assert resolved.gateway is not None and resolved.gateway.min_containers == 1
    assert (resolved.fleet_file, resolved.modal_env) == ("deployments/fleet.yaml", "llm-dev")
    plain = resolve(load_fleet(["deployments"]))
    assert plain.modal_env is None


def test_render_writes_the_gateway_module_and_check_sees_it(gateway_fleet):
    result = run_cli("render", "--out", "build", "--format", "json", cwd=gateway_fleet)
    assert result.returncode == 0, result.stderr
    written = {m["name"]: m["path"] for m in json.loads(result.stdout)}
    assert written["fleetform-gateway"] == "build/fleetform-gateway.py" and len(written) == 5
    module = (gateway_fleet / "build" / "fleetform-gateway.py").read_text()
    assert module.startswith("# Generated by fleetform ") and '"deployments/fleet.yaml"' in module.splitlines()[0]
    check = run_cli("render", "--out", "build", "--check", cwd=gateway_fleet)
    assert (check.returncode, check.stdout) == (0, "ok: 5 module(s) in build are up to date\n")
    with open(gateway_fleet / "build" / "fleetform-gateway.py", "a") as fh:
        fh.write("# edited\n")
    check = run_cli("render", "--out", "build", "--check", cwd=gateway_fleet)
    assert check.returncode == 1 and "stale: build/fleetform-gateway.py: out of date" in check.stderr


def test_rendering_again_keeps_the_gateway_and_disabling_it_prunes_it(gateway_fleet):
    assert run_cli("render", "--out", "build", cwd=gateway_fleet).returncode == 0
    assert run_cli("render", "--out", "build", cwd=gateway_fleet).returncode == 0
    assert (gateway_fleet / "build" / "fleetform-gateway.py").is_file()
    fleet = gateway_fleet / "deployments" / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("enabled: true", "enabled: false"))
    check = run_cli("render", "--out", "build", "--check", cwd=gateway_fleet)
    assert (
        check.returncode == 1 and "stale: build/fleetform-gateway.py: no deployment renders it any more" in check.stderr
    )
    assert run_cli("render", "--out", "build", cwd=gateway_fleet).returncode == 0
    assert sorted(p.name for p in (gateway_fleet / "build").iterdir()) == [
        "llama-3-1-8b-fp8.py",
        "llama-3-3-70b-fp8.py",
        "qwen2-5-7b-awq.py",
        "qwen2-5-7b-instruct.py",
    ]


def test_write_all_names_temporary_files_after_the_module_file(gateway_fleet, tmp_path, monkeypatch):
    """The gateway has no deployment: write_all stages every module under its own file name."""
    resolved = resolve(load_fleet(["deployments"]))
    apps = render_fleet(resolved.deployments)
    gateway = render_gateway(resolved.deployments, resolved.gateway, source=resolved.fleet_file)
    written = write_all([*apps, gateway], tmp_path / "out")
    assert [p.name for p in written] == [*(a.filename for a in apps), "fleetform-gateway.py"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)  # no leftovers


def test_plan_lists_the_gateway_at_no_gpu_cost(gateway_fleet):
    result = run_cli("plan", "--env", "prod", "--format", "json", cwd=gateway_fleet)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = {r["name"]: r for r in doc["deployments"]}
    gw = rows["fleetform-gateway"]
    assert (gw["gpu"], gw["usd_per_hour_min"], gw["usd_per_hour_max"]) == ("CPU only", 0.0, 0.0)
    assert (gw["containers"], gw["concurrency"], gw["modal_env"]) == (
        "1-unbounded",
        "250 target / 400 max",
        "llm-prod",
    )
    assert gw["model"] == "gateway: 5 model name(s)" and gw["source"] == "deployments/fleet.yaml"
    assert len(rows) == 5
    text = run_cli("plan", "--env", "prod", cwd=gateway_fleet).stdout
    assert "fleetform-gateway" in text and "CPU only" in text


def test_a_gateway_problem_is_a_validate_error_at_the_gateway_key(gateway_fleet):
    fleet = gateway_fleet / "deployments" / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "  name: qwen2-5-7b-awq\n  upstream_timeout: 2h\n")
    result = run_cli("validate", cwd=gateway_fleet)
    line = gateway_line(gateway_fleet)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"deployments/fleet.yaml:{line + 3}:9: error: gateway.name: gateway name 'qwen2-5-7b-awq' is also a "
        "deployment's name",
        "    hint: pick another gateway.name: both are Modal app names",
        f"deployments/fleet.yaml:{line + 4}:21: error: gateway.upstream_timeout: request_timeout (3600 s) must be "
        "longer than upstream_timeout (7200 s)",
        "    hint: a request waits up to upstream_timeout for a cold deployment, then needs time to answer",
        "2 error(s); nothing was rendered or deployed",
    ]
    assert run_cli("render", "--out", "build", cwd=gateway_fleet).returncode == 1
    assert not (gateway_fleet / "build").exists()


# --- prices at the edges: JSON stays JSON, and no negative zero ----------------------------------------------


def fleet_with_prices(tmp_path, prices: str):
    folder = tmp_path / "deployments"
    shutil.copytree(REPO / "deployments", folder)
    with open(folder / "fleet.yaml", "a", encoding="utf-8") as fh:
        fh.write("\nprices:\n" + prices)
    return folder


@pytest.mark.parametrize("price", ["1.0e+400", "9.0e+307"])  # infinite, and finite until summed
def test_plan_json_is_always_valid_json(tmp_path, price):
    folder = fleet_with_prices(tmp_path, f"  B200: {price}\n")
    result = run_cli("plan", str(folder), "--format", "json")
    assert "NaN" not in result.stdout and "Infinity" not in result.stdout
    if result.stdout:
        json.loads(result.stdout)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # a price no GPU costs is refused where it was written, so no sum of prices can overflow
    line = (folder / "fleet.yaml").read_text().splitlines().index("  B200: " + price) + 1
    problems = [(d["path"], d["line"]) for d in json.loads(result.stdout)["diagnostics"]]
    assert problems == [("prices.B200", line)]


def test_prices_never_print_as_negative_zero(tmp_path):
    folder = fleet_with_prices(tmp_path, "  H100: -0.0\n  L4: 0.0\n")
    result = run_cli("plan", str(folder))
    assert result.returncode == 0, result.stderr
    assert "$-0.00" not in result.stdout and "$0.00" in result.stdout


def test_render_out_that_is_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "build"
    target.write_text("not a folder\n")
    result = run_cli("render", "--out", str(target))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"error: --out {target} is not a folder: name a folder to write the modules into\n"
    assert target.read_text() == "not a folder\n"
