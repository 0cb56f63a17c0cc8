"""The CI files: the workflow is valid for GitHub and runs the checks it should; the pre-commit hook
names a real entry point and fails on an invalid fleet."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import tomllib

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


def test_pull_requests_validate_render_and_plan_without_credentials(workflow):
    assert "pull_request" in workflow["on"]
    job = workflow["jobs"]["check"]
    assert "pull_request" in job["if"]
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the base branch must be in the clone for --against
    runs = _runs(job)
    assert "fleetform validate --format github" in runs
    assert re.search(r"fleetform render .*--check", runs)
    plan = next(s for s in job["steps"] if "fleetform plan" in s.get("run", ""))
    assert 'fleetform plan --against "origin/$BASE_REF"' in plan["run"] and "--format github" in plan["run"]
    assert plan["env"]["BASE_REF"] == "${{ github.base_ref }}"  # through env, never spliced into the script
    assert "secrets." not in yaml.safe_dump(job), "pull request checks must not need Modal credentials"


def test_main_deploys_with_secrets_one_rollout_per_environment(workflow):
    assert workflow["on"]["push"]["branches"] == ["main"]
    job = workflow["jobs"]["deploy"]
    assert "pull_request" in job["if"] and "!=" in job["if"]
    assert "environment" in job["concurrency"]["group"]
    assert job["concurrency"]["cancel-in-progress"] is False
    deploy = next(s for s in job["steps"] if "fleetform deploy" in s.get("run", ""))
    assert deploy["env"]["MODAL_TOKEN_ID"] == "${{ secrets.MODAL_TOKEN_ID }}"
    assert deploy["env"]["MODAL_TOKEN_SECRET"] == "${{ secrets.MODAL_TOKEN_SECRET }}"
    assert re.search(r"fleetform deploy --env \"\$FLEETFORM_ENV\" --yes --format json", deploy["run"])
    assert "set -o pipefail" in deploy["run"]  # `| tee` must not hide a failed deploy
    assert workflow["permissions"] == {"contents": "read"}


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
