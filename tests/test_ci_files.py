"""The CI files: the workflow is valid for GitHub and runs the checks it should; the pre-commit hook
names a real entry point and fails on an invalid fleet."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from renderer import cli

from conftest import REPO
from test_gitref import deployment_yaml, write

WORKFLOW = REPO / ".github" / "workflows" / "fleet.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"


def check_workflow_schema(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


# --- the workflow -------------------------------------------------------------------------------------


def test_workflow_is_valid_against_githubs_schema():
    result = check_workflow_schema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "fleet.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: [ubuntu-latest]\n    timeout-minutes: soon", 1)
    )
    result = check_workflow_schema(broken)
    assert result.returncode != 0, result.stdout


def test_pull_requests_and_the_merge_queue_validate_render_and_plan_without_credentials(workflow):
    assert "pull_request" in workflow["on"] and "merge_group" in workflow["on"]
    job = workflow["jobs"]["check"]
    assert "pull_request" in job["if"] and "merge_group" in job["if"]
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the base must be in the clone for --against
    runs = _runs(job)
    assert "fleetform validate --format github" in runs
    assert re.search(r"fleetform render .*--check", runs)
    plan = next(s for s in job["steps"] if "fleetform plan" in s.get("run", ""))
    assert plan["run"] == 'fleetform plan --against "$BASE_SHA" --format github'
    # through env, never spliced into the script; the merge queue has its own base
    assert plan["env"]["BASE_SHA"] == "${{ github.event.pull_request.base.sha || github.event.merge_group.base_sha }}"
    assert "secrets." not in yaml.safe_dump(job), "pull request checks must not need Modal credentials"
    assert "python -m pip install .\n" in yaml.safe_dump(job["steps"]) or any(
        s.get("run") == "python -m pip install ." for s in job["steps"]
    )  # the lean core: no extra


def test_main_deploys_with_secrets_one_rollout_per_environment(workflow):
    assert workflow["on"]["push"]["branches"] == ["main"]
    job = workflow["jobs"]["deploy"]
    assert job["needs"] == "environment" and "pull_request" not in job["if"]
    assert job["environment"] == "${{ needs.environment.outputs.deploy }}"
    assert "needs.environment.outputs.deploy" in job["concurrency"]["group"]
    assert job["concurrency"]["cancel-in-progress"] is False
    deploy = next(s for s in job["steps"] if "fleetform deploy" in s.get("run", ""))
    assert deploy["env"]["MODAL_TOKEN_ID"] == "${{ secrets.MODAL_TOKEN_ID }}"
    assert deploy["env"]["MODAL_TOKEN_SECRET"] == "${{ secrets.MODAL_TOKEN_SECRET }}"
    assert re.search(r"fleetform deploy --env \"\$FLEETFORM_ENV\" --yes --format json", deploy["run"])
    assert "set -o pipefail" in deploy["run"]  # `| tee` must not hide a failed deploy
    assert any(s.get("run") == "python -m pip install '.[modal]'" for s in job["steps"])


# --- what a careful reviewer checks ---------------------------------------------------------------------


def test_actions_are_pinned_to_full_commit_shas_with_the_version_in_a_comment():
    uses = re.findall(r"^\s*(?:- )?uses: (\S+)(.*)$", WORKFLOW.read_text(), re.M)
    assert len(uses) >= 7
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), (ref, comment)


def test_checkouts_keep_no_credentials_and_every_job_has_least_permissions(workflow):
    assert workflow["permissions"] == {}  # nothing by default; each job says what it reads
    for name, job in workflow["jobs"].items():
        assert job["permissions"] == {"contents": "read"}, name
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


def test_no_path_filter_can_leave_a_required_check_pending(workflow):
    for event, spec in workflow["on"].items():
        keys = set(spec) if isinstance(spec, dict) else set()  # schedule is a list
        assert not keys & {"paths", "paths-ignore", "branches-ignore"}, event
    assert workflow["jobs"]["check"].get("if", "").count("github.event_name") == 2  # only the event decides


def test_the_manual_environment_is_any_name_fleet_yaml_declares(workflow):
    entry = workflow["on"]["workflow_dispatch"]["inputs"]["environment"]
    assert entry["type"] == "string" and "options" not in entry  # not a hard-coded list


def _step_script(workflow, job: str, step_id_or_name: str) -> tuple[dict, str]:
    step = next(s for s in workflow["jobs"][job]["steps"] if step_id_or_name in (s.get("id"), s.get("name")))
    return step, step["run"]


def _bash(script: str, cwd, env: dict) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # `fleetform` and `python` of this venv, as the runner's
    full = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], **env}
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


def test_the_environment_job_reads_fleet_yaml_and_rejects_an_unknown_name(workflow, tmp_path):
    step, script = _step_script(workflow, "environment", "pick")
    assert step["env"]["REQUESTED"] == "${{ inputs.environment || 'prod' }}"
    out = tmp_path / "output"
    result = _bash(script, REPO, {"REQUESTED": "dev", "GITHUB_OUTPUT": str(out)})
    assert result.returncode == 0, result.stderr
    declared = yaml.safe_load((REPO / "deployments" / "fleet.yaml").read_text())["environments"]
    assert out.read_text() == f"deploy=dev\nall={json.dumps(list(declared))}\n"
    out.unlink()
    result = _bash(script, REPO, {"REQUESTED": "staging", "GITHUB_OUTPUT": str(out)})
    assert result.returncode != 0 and "unknown environment 'staging'" in result.stdout + result.stderr
    assert not out.exists() or "deploy=" not in out.read_text()


def test_the_deploy_summary_is_a_markdown_table(workflow, tmp_path):
    _, script = _step_script(workflow, "deploy", "Deploy report in the summary")
    report = {
        "ok": False,
        "error": None,
        "deployments": [
            {
                "name": "chat",
                "modal_env": "llm-prod",
                "action": "update",
                "status": "failed",
                "tag": "ff-7e4fa5d706f8",
                "seconds": 412.5,
                "error": "smoke test failed: chat: HTTP 500 | retry",
                "recovery": "rolled_back",
                "recovery_detail": "rolled back to v4",
                "smoke_test": {"ok": False, "detail": "chat"},
                "warnings": [],
            },
            {
                "name": "batch",
                "modal_env": "llm-prod",
                "action": "unchanged",
                "status": "unchanged",
                "tag": None,
                "seconds": None,
                "error": None,
                "recovery": None,
                "smoke_test": None,
                "warnings": [],
            },
        ],
        "orphans": [{"name": "old-model"}],
        "summary": {"deployed": [], "unchanged": ["batch"], "failed": ["chat"]},
    }
    temp = tmp_path / "runner"
    temp.mkdir()
    (temp / "deploy-report.json").write_text(json.dumps(report))
    summary = tmp_path / "summary.md"
    env = {"RUNNER_TEMP": str(temp), "GITHUB_STEP_SUMMARY": str(summary), "FLEETFORM_ENV": "prod"}
    assert _bash(script, tmp_path, env).returncode == 0
    lines = summary.read_text().splitlines()
    assert lines[0] == "## fleetform deploy (prod)"
    header = lines.index(
        "| Deployment | Modal environment | Action | Status | Smoke test | Recovery | Tag | Seconds | Detail |"
    )
    assert lines[header + 2] == (
        "| chat | llm-prod | update | failed | failed | rolled_back | ff-7e4fa5d706f8 | 412 | "
        "smoke test failed: chat: HTTP 500 \\| retry |"
    )
    assert lines[header + 3] == "| batch | llm-prod | unchanged | unchanged | - | - | - | - | - |"
    assert "Orphan: `old-model`" in summary.read_text() and lines[-1] == "**FAILED**: 1 unchanged, 1 failed"
    assert "{" not in summary.read_text()  # no raw JSON

    (temp / "deploy-report.json").unlink()  # deploy never started
    summary.unlink()
    assert _bash(script, tmp_path, env).returncode == 0
    assert "No report: the deploy did not start" in summary.read_text()


def test_a_scheduled_drift_check_runs_status_with_a_detailed_exit_code(workflow):
    assert workflow["on"]["schedule"] and all("cron" in s for s in workflow["on"]["schedule"])
    job = workflow["jobs"]["drift"]
    assert job["if"] == "github.event_name == 'schedule'" and job["needs"] == "environment"
    assert job["strategy"]["matrix"]["fleet_env"] == "${{ fromJSON(needs.environment.outputs.all) }}"
    assert "fleetform status" in _runs(job) and "--detailed-exitcode" in _runs(job)


def test_the_drift_step_passes_in_sync_and_fails_on_drift(workflow, tmp_path):
    """The step's script with a `fleetform` that answers as status --detailed-exitcode would."""
    _, script = _step_script(workflow, "drift", "What Modal runs against what main renders to")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "fleetform").write_text('#!/bin/sh\necho "$@" > "$ARGS_FILE"\nexit "$STATUS_CODE"\n')
    (fake / "fleetform").chmod(0o755)
    for code in (0, 1, 2):
        summary = tmp_path / f"summary-{code}.md"
        env = {
            "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
            "STATUS_CODE": str(code),
            "ARGS_FILE": str(tmp_path / "args"),
            "FLEET_ENV": "prod",
            "GITHUB_STEP_SUMMARY": str(summary),
        }
        result = subprocess.run(["bash", "-e", "-c", script], env={**os.environ, **env}, capture_output=True, text=True)
        assert result.returncode == code
        assert (tmp_path / "args").read_text() == "status --env prod --detailed-exitcode\n"
        text = summary.read_text() if summary.exists() else ""
        assert ("In sync" in text) == (code == 0) and ("**Drift**" in text) == (code == 2)
        assert ("::error title=fleetform drift::" in result.stdout) == (code == 2)


def test_zizmor_finds_nothing_in_the_workflow_and_catches_an_unpinned_action(tmp_path):
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    assert zizmor, "zizmor is in the test extra"
    run = lambda path: subprocess.run(
        [zizmor, "--offline", "--persona=pedantic", str(path)], capture_output=True, text=True, timeout=60
    )
    result = run(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "fleet.yml"
    broken.write_text(re.sub(r"actions/checkout@[0-9a-f]{40} # v[\d.]+", "actions/checkout@v4", WORKFLOW.read_text()))
    result = run(broken)
    assert result.returncode != 0 and "unpinned-uses" in result.stdout


def _subcommands(parser) -> dict:
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def test_every_fleetform_command_in_the_workflow_parses(workflow):
    """The workflow's command lines against the real CLI parser. `plan --against` and `deploy`
    are wired into the CLI separately; until they are, their lines are reported, not failed."""
    parser = cli.build_parser()
    subs = _subcommands(parser)
    lines = [
        line.strip()
        for job in workflow["jobs"].values()
        for line in _runs(job).splitlines()
        if line.strip().startswith("fleetform ")
    ]
    assert len(lines) >= 6
    pending = []
    for line in lines:
        line = re.sub(r"\$\{(\w+):\+([^}]*)\}", r"\2", line)  # ${VAR:+--env "$VAR"}: as when VAR is set
        argv = shlex.split(line.split("|")[0])[1:]
        argv = [re.sub(r"\$\w+", "x", a) for a in argv]
        name = argv[0]
        if name not in subs or ("--against" in argv and "--against" not in subs[name]._option_string_actions):
            pending.append(line)
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"the workflow runs a command the CLI rejects: {line}")
    if pending:
        pytest.skip(f"not in the CLI yet: {pending}")


# --- the pre-commit hook ------------------------------------------------------------------------------

# The part of pre-commit's manifest format (pre-commit/clientlib.py) a hook here may use.
HOOK_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["id", "name", "entry", "language"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "entry": {"type": "string"},
            "description": {"type": "string"},
            "language": {
                "enum": [
                    "conda",
                    "coursier",
                    "dart",
                    "docker",
                    "docker_image",
                    "dotnet",
                    "fail",
                    "golang",
                    "haskell",
                    "julia",
                    "lua",
                    "node",
                    "perl",
                    "pygrep",
                    "python",
                    "r",
                    "ruby",
                    "rust",
                    "swift",
                    "script",
                    "system",
                    "unsupported",
                    "unsupported_script",
                ]
            },
            "files": {"type": "string"},
            "exclude": {"type": "string"},
            "types": {"type": "array", "items": {"type": "string"}},
            "pass_filenames": {"type": "boolean"},
            "always_run": {"type": "boolean"},
            "require_serial": {"type": "boolean"},
            "args": {"type": "array", "items": {"type": "string"}},
            "stages": {"type": "array", "items": {"type": "string"}},
            "minimum_pre_commit_version": {"type": "string"},
        },
    },
}


@pytest.fixture(scope="module")
def hook() -> dict:
    hooks = yaml.safe_load(HOOKS.read_text())
    jsonschema.validate(hooks, HOOK_SCHEMA)
    (only,) = [h for h in hooks if h["id"] == "fleetform-validate"]
    return only


def test_hook_entry_is_an_installed_command_that_validates(hook):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    command, *args = shlex.split(hook["entry"])
    assert command in scripts, f"{command} is not a [project.scripts] entry point"
    module, _, func = scripts[command].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert args == ["validate"] and cli.build_parser().parse_args(args).func is cli.validate.run
    assert hook["language"] == "python"  # pre-commit installs this package, which provides the command


def test_hook_runs_on_deployment_yaml_only_and_checks_the_whole_fleet(hook):
    files = re.compile(hook["files"])
    for path in ("deployments/chat.yaml", "deployments/fleet.yaml", "deployments/x.yml"):
        assert files.search(path), path
    for path in ("deployments/README.md", "deployments/sub/x.yaml", "schema/deployment.schema.json", "ci.yaml"):
        assert not files.search(path), path
    assert hook["pass_filenames"] is False


def test_hook_passes_a_valid_fleet_and_fails_an_invalid_one(hook, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(hook["entry"])[1:]
    write(
        tmp_path, {"deployments/chat.yaml": deployment_yaml("chat"), "deployments/batch.yaml": deployment_yaml("batch")}
    )
    assert cli.main(args) == 0
    write(tmp_path, {"deployments/batch.yaml": deployment_yaml("chat")})  # a second deployment named chat
    assert cli.main(args) == 1
    assert "deployment name 'chat' is already used" in capsys.readouterr().err
