"""The commands that talk to Modal, through the real CLI: deploy, status, rollback, destroy and the
live side of plan. Without credentials they run as subprocesses with an empty HOME; with
"credentials", in-process against the in-memory backend of fake_backend.py. Nothing reaches Modal."""

from __future__ import annotations

import json

import pytest

from renderer import cli, modal_api
from renderer.codegen.render import render_fleet
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.modal_api import NO_CREDENTIALS, NetworkError, deployment_tag
from renderer.plan.live import NO_CREDENTIALS_PLAN_NOTE

from conftest import REPO, run_cli
from fake_backend import FakeBackend

FLEET_ENV = "dev"  # the example fleet's `dev` environment (`--env dev`)...
MODAL_ENV = "llm-dev"  # ...deploys into this Modal environment: a mix-up of the two fails
MODAL_VARS = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH", "MODAL_PROFILE")


def no_credentials(tmp_path, *args: str):
    """The CLI with no Modal token anywhere: an empty HOME (no ~/.modal.toml) and no MODAL_* variables."""
    return run_cli(*args, env={"HOME": str(tmp_path)}, unset=MODAL_VARS)


# --- without credentials: one line, exit 1 -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "--yes"],
        ["deploy", "--env", FLEET_ENV, "--dry-run"],
        ["status"],
        ["status", "--env", "prod"],
        ["rollback", "llama-3-1-8b-fp8"],
        ["destroy", "llama-3-1-8b-fp8", "--yes"],
        ["destroy", "retired-model"],
    ],
)
def test_modal_commands_without_credentials_say_so_in_one_line(tmp_path, argv):
    result = no_credentials(tmp_path, *argv)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {NO_CREDENTIALS}\n"


@pytest.mark.parametrize("argv", [["deploy", "--yes"], ["status"], ["rollback", "x"], ["destroy", "x", "--yes"]])
def test_json_without_credentials_is_one_document_on_stdout(tmp_path, argv):
    result = no_credentials(tmp_path, *argv, "--format", "json")
    assert (result.returncode, result.stderr) == (1, "")
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and NO_CREDENTIALS in (doc.get("error") or doc.get("message"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["deploy", "--only", "nope"], "error: --only names no deployment of this fleet: nope (deployments: "),
        (["deploy", "--parallel", "0"], "error: --parallel must be at least 1, not 0"),
        (["deploy", "--env", "prd"], "error: unknown environment 'prd'"),
        (["deploy", "--strategy", "blue-green"], "argument --strategy: invalid choice: 'blue-green'"),
        (["rollback"], "the following arguments are required: name"),
        (["plan", "--format", "github"], "error: --format github annotates changes, so it needs --against REF"),
    ],
)
def test_usage_errors_exit_2(tmp_path, argv, message):
    result = no_credentials(tmp_path, *argv)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr


def test_strategy_choices_are_the_backends():
    deploy = _subcommand("deploy")
    (action,) = [a for a in deploy._actions if a.dest == "strategy"]
    assert tuple(action.choices) == modal_api.STRATEGIES and action.default == "rolling"


# --- plan without credentials: the note, then the offline plan ------------------------------------------


def test_plan_without_credentials_notes_it_and_shows_the_offline_plan(tmp_path):
    result = no_credentials(tmp_path, "plan", "--env", FLEET_ENV)
    assert result.returncode == 0
    assert result.stderr == NO_CREDENTIALS_PLAN_NOTE + "\n"
    assert "fleetform plan (env: dev)" in result.stdout and "4 deployment(s)." in result.stdout
    assert "Live plan" not in result.stdout


def test_plan_json_without_credentials(tmp_path):
    result = no_credentials(tmp_path, "plan", "--format", "json")
    assert (result.returncode, result.stderr) == (0, NO_CREDENTIALS_PLAN_NOTE + "\n")
    doc = json.loads(result.stdout)
    assert doc["live"] is None and "error" not in doc
    assert [r["name"] for r in doc["deployments"]] == [
        "llama-3-1-8b-fp8",
        "llama-3-3-70b-fp8",
        "qwen2-5-7b-awq",
        "qwen2-5-7b-instruct",
    ]


def test_detailed_exitcode_without_credentials_or_against_is_an_error(tmp_path):
    result = no_credentials(tmp_path, "plan", "--detailed-exitcode")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: cannot tell what changes without Modal credentials; use --against REF\n"


# --- with credentials: in-process against the fake backend ------------------------------------------------


@pytest.fixture
def apps(monkeypatch):
    monkeypatch.chdir(REPO)  # the CLI's default `deployments`, named as the CLI names it (hashes depend on it)
    resolved = resolve(load_fleet(["deployments"]), FLEET_ENV)
    return {a.deployment.name: a for a in render_fleet(resolved.deployments)}


@pytest.fixture
def backend(monkeypatch, apps):
    fake = FakeBackend()
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    monkeypatch.setattr(modal_api, "credentials_available", lambda environ=None: True)
    return fake


def live(backend, apps, *names, stale=()):
    for n in names:
        backend.add_live(n, "ff-000000000000" if n in stale else deployment_tag(apps[n]), env=MODAL_ENV, versions=2)


def main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_live_plan_shows_what_deploy_would_do(backend, apps, capsys):
    live(backend, apps, "llama-3-1-8b-fp8", "qwen2-5-7b-awq", stale=("qwen2-5-7b-awq",))
    backend.add_live("retired-model", "ff-123456789abc", env=MODAL_ENV)
    code, out, err = main(capsys, "plan", "--env", FLEET_ENV)
    assert (code, err) == (0, "")
    offline, _, live_part = out.partition("Live plan")
    assert "fleetform plan (env: dev)" in offline and "Idle floor" in offline
    assert "2 to create, 1 to update, 1 unchanged, 1 orphan" in live_part
    assert "orphan: retired-model (v1, ff-123456789abc) in 'llm-dev' is managed by fleetform" in live_part
    assert backend.calls_of("list_apps") == [("list_apps", MODAL_ENV)]


def test_live_plan_detailed_exitcode(backend, apps, capsys):
    live(backend, apps, *apps)
    backend.add_live("retired-model", "ff-123456789abc", env=MODAL_ENV)  # an orphan alone is no change
    assert main(capsys, "plan", "--env", FLEET_ENV, "--detailed-exitcode")[0] == 0
    backend.add_live("qwen2-5-7b-awq", "ff-000000000000", env=MODAL_ENV)
    assert main(capsys, "plan", "--env", FLEET_ENV, "--detailed-exitcode")[0] == 2


def test_live_plan_json(backend, apps, capsys):
    live(backend, apps, "llama-3-1-8b-fp8")
    code, out, err = main(capsys, "plan", "--env", FLEET_ENV, "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["live"]["live"] is True and doc["live"]["changes"] is True
    actions = {r["name"]: r["action"] for r in doc["live"]["rows"]}
    assert actions == {
        "llama-3-1-8b-fp8": "unchanged",
        "llama-3-3-70b-fp8": "create",
        "qwen2-5-7b-awq": "create",
        "qwen2-5-7b-instruct": "create",
    }
    assert len(doc["deployments"]) == 4  # the offline plan is all there too


def test_live_plan_error_is_one_line_after_the_offline_plan(backend, apps, capsys):
    backend.list_error = NetworkError("cannot reach Modal (connection refused): check the network connection and retry")
    code, out, err = main(capsys, "plan", "--env", FLEET_ENV, "--detailed-exitcode")
    assert code == 1
    assert err == "error: cannot reach Modal (connection refused): check the network connection and retry\n"
    assert "fleetform plan (env: dev)" in out and "Live plan" not in out
    code, out, err = main(capsys, "plan", "--env", FLEET_ENV, "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["live"] is None and doc["error"].startswith("cannot reach Modal")


def test_deploy_dry_run_deploys_nothing(backend, apps, capsys):
    live(backend, apps, "llama-3-1-8b-fp8")
    code, out, err = main(capsys, "deploy", "--env", FLEET_ENV, "--dry-run")
    assert (code, err) == (0, "")
    assert "Dry run: nothing deployed" in out and "3 planned" in out and "1 unchanged (llama-3-1-8b-fp8)" in out
    assert backend.calls_of("deploy") == []


def test_deploy_passes_every_option_through(backend, apps, capsys):
    """--only, --strategy, --skip-smoke-test and --yes reach the orchestrator; the Modal environment
    is the one `--env dev` selects; the JSON report is the only thing on stdout."""
    live(backend, apps, "qwen2-5-7b-awq", stale=("qwen2-5-7b-awq",))
    code, out, err = main(
        capsys,
        "deploy",
        "--env",
        FLEET_ENV,
        "--only",
        "qwen2-5-7b-awq",
        "--only",
        "llama-3-1-8b-fp8",
        "--strategy",
        "recreate",
        "--skip-smoke-test",
        "--yes",
        "--parallel",
        "1",
        "--format",
        "json",
    )
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True, (out, err)
    assert sorted(doc["summary"]["deployed"]) == ["llama-3-1-8b-fp8", "qwen2-5-7b-awq"]
    assert sorted(c[1:] for c in backend.calls_of("deploy")) == [
        ("llama-3-1-8b-fp8", MODAL_ENV, deployment_tag(apps["llama-3-1-8b-fp8"]), "recreate"),
        ("qwen2-5-7b-awq", MODAL_ENV, deployment_tag(apps["qwen2-5-7b-awq"]), "recreate"),
    ]
    assert all(r["smoke_test"] is None for r in doc["deployments"])


def test_deploy_without_yes_and_without_a_terminal_refuses(backend, apps, capsys):
    code, out, err = main(capsys, "deploy", "--env", FLEET_ENV, "--skip-smoke-test")
    assert code == 1 and backend.calls_of("deploy") == []
    assert "needs confirmation, and stdin is not a terminal: pass --yes" in out


def test_ctrl_c_while_planning_is_one_line(backend, apps, capsys, monkeypatch):
    def interrupted(env):
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "list_apps", interrupted)
    assert main(capsys, "deploy", "--env", FLEET_ENV, "--yes") == (130, "", "interrupted: nothing was deployed\n")


def test_status(backend, apps, capsys):
    live(backend, apps, "llama-3-1-8b-fp8", "qwen2-5-7b-awq", stale=("qwen2-5-7b-awq",))
    code, out, err = main(capsys, "status", "--env", FLEET_ENV, "--format", "json")
    assert (code, err) == (0, "")
    states = {r["name"]: r["state"] for r in json.loads(out)["deployments"]}
    assert states == {
        "llama-3-1-8b-fp8": "in_sync",
        "qwen2-5-7b-awq": "drifted",
        "llama-3-3-70b-fp8": "not_deployed",
        "qwen2-5-7b-instruct": "not_deployed",
    }
    code, out, _ = main(capsys, "status", "--env", FLEET_ENV)
    assert code == 0 and "Fleet status" in out and "https://llama-3-1-8b-fp8.example.test" in out


def test_rollback_a_deployment_and_an_orphan_in_the_envs_modal_environment(backend, apps, capsys):
    live(backend, apps, "llama-3-1-8b-fp8")
    backend.add_live("retired-model", "ff-123456789abc", env=MODAL_ENV, versions=3)
    code, out, err = main(capsys, "rollback", "llama-3-1-8b-fp8", "--env", FLEET_ENV)
    assert (code, err) == (0, "") and out.startswith("rolled back llama-3-1-8b-fp8 from v2")
    code, out, _ = main(capsys, "rollback", "retired-model", "--env", FLEET_ENV, "--to", "v1", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and (doc["from_version"], doc["to_version"], doc["modal_env"]) == (3, 1, MODAL_ENV)
    assert [c[2] for c in backend.calls_of("rollback")] == [MODAL_ENV, MODAL_ENV]


def test_rollback_refusal_is_one_line_on_stderr(backend, apps, capsys):
    backend.add_live("hand-made", "", env=MODAL_ENV, managed=False)
    code, out, err = main(capsys, "rollback", "hand-made", "--env", FLEET_ENV)
    assert (code, out) == (1, "")
    assert err == (
        "error: refusing to roll back hand-made: fleetform does not manage it (it lacks the managed-by: "
        "fleetform tag)\n"
    )


def test_destroy(backend, apps, capsys):
    live(backend, apps, "qwen2-5-7b-awq")
    code, out, err = main(capsys, "destroy", "qwen2-5-7b-awq", "--env", FLEET_ENV)  # no terminal, no --yes
    assert code == 1 and out == "" and "needs confirmation, and stdin is not a terminal: pass --yes" in err
    assert err.count("\n") == 1 and backend.calls_of("stop") == []
    code, out, err = main(capsys, "destroy", "qwen2-5-7b-awq", "--env", FLEET_ENV, "--yes")
    assert (code, out, err) == (0, "stopped qwen2-5-7b-awq in Modal environment 'llm-dev'\n", "")
    assert backend.calls_of("stop") == [("stop", "qwen2-5-7b-awq", MODAL_ENV)]


def test_ctrl_c_at_destroy_is_one_line(backend, apps, capsys, monkeypatch):
    live(backend, apps, "qwen2-5-7b-awq")
    from renderer.deploy import common

    def ctrl_c(question, console, confirm):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "ask", ctrl_c)
    assert main(capsys, "destroy", "qwen2-5-7b-awq", "--env", FLEET_ENV) == (
        130,
        "",
        "interrupted: qwen2-5-7b-awq left running\n",
    )
    assert backend.calls_of("stop") == []


# --- help -----------------------------------------------------------------------------------------------


def _subcommand(name: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize(
    "name",
    [
        "validate",
        "render",
        "plan",
        "explain",
        "deploy",
        "status",
        "rollback",
        "destroy",
        "new",
        "test",
        "bench",
        "serve",
    ],
)
def test_every_command_explains_itself_with_examples(name):
    p = _subcommand(name)
    assert p.description and len(p.description) > 80
    assert p.epilog and "example" in p.epilog and f"fleetform {name}" in p.epilog
    text = p.format_help()
    assert "Traceback" not in text and "%" not in text.replace("%%", "")
