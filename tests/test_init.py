"""`fleetform init` (a fleet repository of one's own) and `fleetform schema`, through the real CLI: what
they write validates and plans, the workflow is valid for GitHub, nothing anyone else wrote is ever
replaced, and `new`'s `$schema` line resolves wherever it writes."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import yaml
from test_ci_files import check_workflow_schema
from test_cli_sizing import MODEL, REVISION, checkpoint

from renderer import __version__, cli
from renderer.config.schema import SCHEMAS, schema_dir

from conftest import run_cli

FILES = [
    ".github/workflows/fleet.yml",
    ".gitignore",
    ".pre-commit-config.yaml",
    "deployments/fleet.yaml",
    "deployments/llama-3-1-8b-fp8.yaml",
    "schema/deployment.schema.json",
    "schema/fleet.schema.json",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fleet repository as `fleetform init acme-fleet` writes it (not to be modified by tests)."""
    root = tmp_path_factory.mktemp("init")
    result = run_cli("init", "acme-fleet", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return root / "acme-fleet"


def _tree(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" != p.name
    }


def _workflow(repo) -> dict:
    data = yaml.safe_load((repo / ".github/workflows/fleet.yml").read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


# --- init --------------------------------------------------------------------------------------------


def test_init_writes_the_repository(repo):
    assert sorted(_tree(repo)) == FILES


def test_init_output_lists_what_it_created(tmp_path):
    result = run_cli("init", "fleet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("created ")] == [
        f"fleet/{f}" for f in FILES
    ]
    assert "next: cd fleet && " in result.stdout


def test_what_init_writes_validates_and_plans_in_every_environment(repo):
    result = run_cli("validate", cwd=repo)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok: 1 deployment(s) valid\n", "")
    for env in ("dev", "prod"):
        result = run_cli("plan", "--env", env, "--format", "json", cwd=repo)
        assert result.returncode == 0, result.stderr
        assert [d["name"] for d in json.loads(result.stdout)["deployments"]] == ["llama-3-1-8b-fp8"]


def test_fleet_yaml_declares_dev_and_prod_on_modal_environments_of_other_names(repo):
    fleet = yaml.safe_load((repo / "deployments/fleet.yaml").read_text())
    assert sorted(fleet["environments"]) == ["dev", "prod"]
    for env in fleet["environments"].values():
        assert env["modal_environment"] not in ("dev", "prod"), "a fleet_env and a modal_env must not share names"
    text = (repo / "deployments/fleet.yaml").read_text()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10  # it explains itself


def test_the_example_is_the_bundled_reference_deployment(repo):
    written = (repo / "deployments/llama-3-1-8b-fp8.yaml").read_text()
    bundled = (schema_dir().parent / "deployments/llama-3-1-8b-fp8.yaml").read_text()
    assert written.splitlines()[1:] == bundled.splitlines()


def test_schema_lines_resolve_inside_the_new_repository(repo):
    for name in ("fleet.yaml", "llama-3-1-8b-fp8.yaml"):
        text = (repo / "deployments" / name).read_text()
        target = re.search(r"^# yaml-language-server: \$schema=(\S+)$", text, re.M).group(1)
        assert (repo / "deployments" / target).resolve().is_file(), target


def test_the_schemas_are_fleetforms_own(repo):
    for name in SCHEMAS:
        assert (repo / "schema" / name).read_text() == (schema_dir() / name).read_text()


def test_the_workflow_is_valid_for_github(repo):
    result = check_workflow_schema(repo / ".github/workflows/fleet.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_workflow_installs_this_version_checks_pull_requests_and_deploys_main(repo):
    workflow = _workflow(repo)
    assert workflow["env"]["FLEETFORM_VERSION"] == __version__
    assert workflow["on"]["push"]["branches"] == ["main"] and "pull_request" in workflow["on"]
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        runs = "\n".join(s.get("run", "") for s in job["steps"])
        # the lean core where nothing talks to Modal, the Modal SDK where the job deploys
        extra = "[modal]" if name == "deploy" else ""
        assert f'pip install "fleetform{extra}==$FLEETFORM_VERSION"' in runs
        assert "pip install ." not in runs  # the fleet repository is not fleetform's
        checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
        assert checkout["with"]["persist-credentials"] is False
        for step in job["steps"]:  # actions pinned to a full commit, the version beside it
            if "uses" in step:
                assert re.fullmatch(r"[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    check = "\n".join(s.get("run", "") for s in jobs["check"]["steps"])
    assert "fleetform validate" in check and "fleetform render" in check
    assert 'fleetform plan --against "origin/$BASE_REF"' in check
    deploy = next(s for s in jobs["deploy"]["steps"] if "fleetform deploy" in s.get("run", ""))
    assert deploy["env"]["MODAL_TOKEN_ID"] == "${{ secrets.MODAL_TOKEN_ID }}"
    assert "secrets." not in yaml.safe_dump(jobs["check"])
    # every fleetform command line parses with this CLI
    parser = cli.build_parser()
    for job in jobs.values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                if line.strip().startswith("fleetform "):
                    argv = [re.sub(r"\$\w+", "x", a) for a in shlex.split(line)[1:]]
                    parser.parse_args(argv)


def test_the_pre_commit_hook_is_local_and_pinned(repo):
    config = yaml.safe_load((repo / ".pre-commit-config.yaml").read_text())
    (entry,) = config["repos"]
    assert entry["repo"] == "local"
    (hook,) = entry["hooks"]
    assert hook["language"] == "python" and hook["entry"] == "fleetform validate"
    assert hook["additional_dependencies"] == [f"fleetform=={__version__}"]
    assert hook["pass_filenames"] is False
    assert re.search(hook["files"], "deployments/llama-3-1-8b-fp8.yaml")


def test_gitignore_keeps_rendered_modules_out(repo):
    assert "build/" in (repo / ".gitignore").read_text().splitlines()


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path):
    assert run_cli("init", cwd=tmp_path).returncode == 0
    (tmp_path / "deployments/fleet.yaml").write_text((tmp_path / "deployments/fleet.yaml").read_text() + "# mine\n")
    before = _tree(tmp_path)
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "pass --force" in result.stderr
    assert _tree(tmp_path) == before


def test_force_replaces_only_files_init_wrote(tmp_path):
    assert run_cli("init", cwd=tmp_path).returncode == 0
    fleet = tmp_path / "deployments/fleet.yaml"
    original = fleet.read_text()
    fleet.write_text(original.replace("max_containers: 1 ", "max_containers: 3 "))
    result = run_cli("init", "--force", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"directory": ".", "created": [], "replaced": FILES}
    assert fleet.read_text() == original

    # a file without init's first line is someone's own: kept, and nothing else is written either
    mine = "# our own ignores\n*.pyc\n"
    (tmp_path / ".gitignore").write_text(mine)
    fleet.write_text(original.split("\n", 1)[1])  # the mark line deleted: the file is now theirs
    (tmp_path / "schema/fleet.schema.json").unlink()
    result = run_cli("init", "--force", cwd=tmp_path)
    assert result.returncode == 1
    assert ".gitignore" in result.stderr and "deployments/fleet.yaml" in result.stderr
    assert "not written by `fleetform init`" in result.stderr
    assert (tmp_path / ".gitignore").read_text() == mine
    assert not (tmp_path / "schema/fleet.schema.json").exists()


def test_init_into_a_file_is_an_error(tmp_path):
    (tmp_path / "x").write_text("")
    result = run_cli("init", "x", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "error: x exists and is not a folder\n")


# --- schema ------------------------------------------------------------------------------------------


def test_schema_writes_both_schemas_and_lists_them(tmp_path):
    result = run_cli("schema", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "directory": "schema",
        "created": ["deployment.schema.json", "fleet.schema.json"],
        "replaced": [],
    }
    for name in SCHEMAS:
        assert (tmp_path / "schema" / name).read_text() == (schema_dir() / name).read_text()
    # its own schemas are refreshed without --force (an upgrade of fleetform)
    again = run_cli("schema", "--out", "schema", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "replaced schema/fleet.schema.json" in again.stdout


def test_schema_keeps_a_file_that_is_not_fleetforms_unless_forced(tmp_path):
    out = tmp_path / "editor"
    out.mkdir()
    (out / "fleet.schema.json").write_text('{"title": "something else"}')
    result = run_cli("schema", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {out.as_posix()}/fleet.schema.json: not one of fleetform's schemas; pass --force to replace it\n"
    )
    assert not (out / "deployment.schema.json").exists()
    assert run_cli("schema", "--out", str(out), "--force", cwd=tmp_path).returncode == 0
    assert json.loads((out / "fleet.schema.json").read_text())["title"] == "fleetform fleet"


# --- new's $schema line ------------------------------------------------------------------------------


@pytest.mark.parametrize("out", ["deployments", "fleet/prod", "."])
def test_new_writes_a_schema_line_that_resolves(tmp_path, checkpoint, out):
    assert run_cli("schema", cwd=tmp_path).returncode == 0
    result = run_cli("new", MODEL, "--revision", REVISION, "--from-dir", str(checkpoint), "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / out / "llama-3-1-8b-instruct.yaml"
    target = re.search(r"^# yaml-language-server: \$schema=(\S+)$", written.read_text(), re.M).group(1)
    assert not os.path.isabs(target)
    assert (written.parent / target).resolve() == (tmp_path / "schema/deployment.schema.json").resolve()
