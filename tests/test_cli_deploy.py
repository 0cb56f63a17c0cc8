"""`deploy --adopt` through the real CLI (in-process, against the in-memory backend of fake_backend.py):
an app of the same name that fleetform does not manage is a conflict, refused, unless --adopt."""

from __future__ import annotations

import json

import pytest

from renderer import cli, modal_api

from conftest import REPO
from fake_backend import FakeBackend

FLEET_ENV = "dev"  # the example fleet's `dev` environment (`--env dev`)...
MODAL_ENV = "llm-dev"  # ...deploys into this Modal environment: a mix-up of the two fails
NAME = "qwen2-5-7b-awq"


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.chdir(REPO)
    fake = FakeBackend()
    fake.add_live(NAME, "hand-made", env=MODAL_ENV, managed=False)
    monkeypatch.setattr(modal_api, "default_backend", lambda: fake)
    monkeypatch.setattr(modal_api, "credentials_available", lambda environ=None: True)
    return fake


def deploy(capsys, *extra: str) -> tuple[int, dict]:
    code = cli.main(
        ["deploy", "--env", FLEET_ENV, "--only", NAME, "--skip-smoke-test", "--yes", "--format", "json", *extra]
    )
    out, _ = capsys.readouterr()
    return code, json.loads(out)


def test_an_unmanaged_app_of_the_same_name_is_refused_without_adopt(backend, capsys):
    code, doc = deploy(capsys)
    assert code == 1 and backend.calls_of("deploy") == []
    (row,) = doc["deployments"]
    assert row["name"] == NAME and "deploy with --adopt to take it over" in row["error"]


def test_adopt_deploys_over_it(backend, capsys):
    code, doc = deploy(capsys, "--adopt")
    assert code == 0 and doc["ok"] is True, doc
    assert [c[1:3] for c in backend.calls_of("deploy")] == [(NAME, MODAL_ENV)]


def test_adopt_help_says_what_it_risks(capsys):
    with pytest.raises(SystemExit):
        cli.main(["deploy", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--adopt deploy over an app of the same name that fleetform does not manage" in help_text
    assert "its running version is replaced" in help_text
