"""The optional pull-request preview job of the shipped workflow: opt-in by label, never for a
fork's code with the secrets, `fleetform run` for each changed deployment, results in the summary."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "fleet.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def step(job: dict, words: str) -> dict:
    return next(s for s in job["steps"] if words in s.get("name", ""))


def heredoc(script: str) -> str:
    """The Python between `<<'PY'` and `PY` of a step's script."""
    return re.search(r"<<'PY'\n(.*?)\n\s*PY\n", script, re.S).group(1)


def test_the_preview_runs_only_on_its_label_and_only_for_this_repositorys_branches(workflow):
    assert "pull_request_target" not in workflow["on"]  # a fork's code never gets the secrets
    assert "labeled" in workflow["on"]["pull_request"]["types"]
    job = workflow["jobs"]["preview"]
    condition = " ".join(job["if"].split())
    assert "github.event.action == 'labeled'" in condition
    assert "github.event.label.name == 'fleetform-preview'" in condition
    assert "github.event.pull_request.head.repo.full_name == github.repository" in condition
    assert job["permissions"] == {"contents": "read"} and job["environment"] == "fleetform-preview"
    check = workflow["jobs"]["check"]["if"]
    assert "action" not in check  # a labelled event checks too: a skipped required check would read as passed


def test_secrets_reach_only_the_step_that_runs(workflow):
    job = workflow["jobs"]["preview"]
    with_secrets = [s["name"] for s in job["steps"] if "secrets." in yaml.safe_dump(s)]
    assert with_secrets == ["Run each one on Modal, smoke-test it, stop it"]
    run = step(job, "Run each one")["run"]
    assert 'fleetform run "$name"' in run and "--max-cost-per-hour" in run and "set -o pipefail" in run


def test_the_changed_deployments_are_those_created_or_updated(workflow, tmp_path):
    script = heredoc(step(workflow["jobs"]["preview"], "creates or changes")["run"])
    plan = {
        "deployments": [
            {"name": "a", "kind": "deployment", "action": "create"},
            {"name": "b", "kind": "deployment", "action": "unchanged"},
            {"name": "c", "kind": "deployment", "action": "update"},
            {"name": "d", "kind": "deployment", "action": "remove"},
            {"name": "gateway", "kind": "gateway", "action": "update"},
        ]
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "plan.json")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["a", "c"], out.stderr


def test_the_summary_is_a_table_of_the_runs(workflow, tmp_path, monkeypatch, capsys):
    """Fed the JSON `fleetform run` really prints (a passing run against the fake backend)."""

    from test_run import MODELS, openai_server, run

    from renderer import modal_api

    from fake_backend import FakeBackend

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-test")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", "ws-test")
    fake = FakeBackend()
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    from openai_server import ServerConfig

    with openai_server(ServerConfig(models=MODELS)) as url:
        fake.ephemeral_url = url
        _, doc, _ = run(capsys)
    folder = tmp_path / "preview"
    folder.mkdir()
    (folder / f"{doc['name']}.json").write_text(json.dumps(doc))
    (folder / "broken.json").write_text("")  # a run that printed nothing
    script = heredoc(step(workflow["jobs"]["preview"], "summary")["run"])
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {line.split(" | ")[0][2:]: line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert rows[doc["name"]].startswith(f"| {doc['name']} | passed | B200 x 1 |") and "stop ok" in rows[doc["name"]]
    assert rows["broken"].startswith("| broken | no report |")
    empty = subprocess.run([sys.executable, "-c", script, str(tmp_path / "none")], capture_output=True, text=True)
    assert "nothing to preview" in empty.stdout


def test_the_preview_is_documented():
    text = (REPO / "docs" / "deploying.md").read_text(encoding="utf-8")
    assert "fleetform-preview" in text and "fork" in text
