"""The fleet at a git revision: read from git objects, loaded and named exactly as the working tree.

`make_fleet_repo` builds the temporary repository the plan tests use too: two commits, the second
bumping one model revision, doubling one deployment's max_containers, removing one deployment
and adding another.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.plan.gitref import GitError, load_fleet_at

REV_1 = "1111111" + "a" * 33
REV_2 = "2222222" + "b" * 33

FLEET_YAML = """\
defaults:
  engine:
    vllm_version: "0.26.0"
environments:
  prod:
    modal_environment: ml-prod
    overrides:
      scaling:
        min_containers: 1
"""


def deployment_yaml(name: str, revision: str = REV_1, max_containers: int = 2, extra: str = "") -> str:
    return (
        f"name: {name}\nmodel:\n  id: org/{name}-model\n  revision: {revision}\ngpu:\n  type: L4\n"
        f"scaling:\n  max_containers: {max_containers}\n{extra}"
    )


@pytest.fixture
def git_env(monkeypatch, tmp_path):
    """A git that ignores the machine's configuration and needs no identity of its own."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    for key, value in {
        "GIT_AUTHOR_NAME": "Fleet Test",
        "GIT_AUTHOR_EMAIL": "fleet-test@example.com",
        "GIT_COMMITTER_NAME": "Fleet Test",
        "GIT_COMMITTER_EMAIL": "fleet-test@example.com",
        "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CEILING_DIRECTORIES": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def write(repo: Path, files: dict[str, str | None]) -> None:
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def commit(repo: Path, message: str, files: dict[str, str | None]) -> str:
    write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_fleet_repo(root: Path) -> Path:
    """deployments/ at HEAD~1: chat, batch, old. At HEAD (and in the clean working tree): chat's
    revision bumped, batch's max_containers 4 -> 8, old removed, new added."""
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(
        repo,
        "fleet",
        {
            "deployments/fleet.yaml": FLEET_YAML,
            "deployments/chat.yaml": deployment_yaml("chat"),
            "deployments/batch.yaml": deployment_yaml("batch", max_containers=4),
            "deployments/old.yaml": deployment_yaml("old"),
            "README.md": "not part of the fleet\n",
        },
    )
    commit(
        repo,
        "bump chat, scale batch, replace old with new",
        {
            "deployments/chat.yaml": deployment_yaml("chat", REV_2),
            "deployments/batch.yaml": deployment_yaml("batch", max_containers=8),
            "deployments/old.yaml": None,
            "deployments/new.yaml": deployment_yaml("new"),
        },
    )
    return repo


@pytest.fixture
def fleet_repo(git_env, tmp_path, monkeypatch) -> Path:
    repo = make_fleet_repo(tmp_path)
    monkeypatch.chdir(repo)
    return repo


def _names(loaded) -> list[str]:
    return [d.path for d in loaded.deployments]


def test_loads_the_files_of_the_revision_under_working_tree_names(fleet_repo):
    at = load_fleet_at("HEAD~1", ["deployments"])
    assert at.commit == git(fleet_repo, "rev-parse", "HEAD~1")
    assert _names(at.loaded) == ["deployments/batch.yaml", "deployments/chat.yaml", "deployments/old.yaml"]
    assert at.loaded.fleet is not None and at.loaded.fleet.path == "deployments/fleet.yaml"
    # every position inside the documents names the user's path, not a temporary one
    for doc in at.loaded.deployments:
        assert {n.mark.file for _, n in doc.root.walk()} == {doc.path}
    resolved = resolve(at.loaded)
    assert resolved.ok, resolved.diagnostics
    by_name = {d.name: d for d in resolved.deployments}
    assert by_name["batch"].scaling.max_containers == 4
    assert by_name["chat"].model.revision == REV_1
    assert by_name["batch"].source == "deployments/batch.yaml"


def test_names_match_what_the_working_tree_loader_produces(fleet_repo, monkeypatch):
    for paths in (
        ["deployments"],
        ["./deployments/"],
        ["deployments/chat.yaml"],
        ["deployments/fleet.yaml", "deployments/chat.yaml"],
    ):
        at = load_fleet_at("HEAD", paths).loaded
        here = load_fleet(paths)
        assert _names(at) == _names(here), paths
        assert (at.fleet and at.fleet.path) == (here.fleet and here.fleet.path), paths
    monkeypatch.chdir(fleet_repo / "deployments")
    at, here = load_fleet_at("HEAD", ["."]).loaded, load_fleet(["."])
    assert _names(at) == _names(here) == ["batch.yaml", "chat.yaml", "new.yaml"]
    assert at.fleet is not None and at.fleet.path == here.fleet.path == "fleet.yaml"


def test_reads_git_objects_not_the_working_tree(fleet_repo):
    write(fleet_repo, {"deployments/chat.yaml": deployment_yaml("chat", max_containers=99)})
    before = git(fleet_repo, "status", "--porcelain")
    head = resolve(load_fleet_at("HEAD", ["deployments"]).loaded)
    assert {d.name: d.scaling.max_containers for d in head.deployments}["chat"] == 2
    assert git(fleet_repo, "status", "--porcelain") == before  # checkout and index untouched
    assert git(fleet_repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_a_path_absent_at_the_revision_is_an_empty_fleet(fleet_repo):
    at = load_fleet_at("HEAD~1", ["deployments/new.yaml"])
    assert at.loaded.deployments == () and at.loaded.diagnostics == ()
    git(fleet_repo, "mv", "deployments", "fleet")
    git(fleet_repo, "commit", "-q", "-m", "move")
    assert load_fleet_at("HEAD", ["deployments"]).loaded.deployments == ()
    assert len(load_fleet_at("HEAD~1", ["deployments"]).loaded.deployments) == 3


def test_diagnostics_at_the_revision_name_the_users_path(fleet_repo):
    commit(
        fleet_repo,
        "break",
        {"deployments/chat.yaml": "name: chat\nmodel:\n  id: a/b\n  revision: main\ngpu:\n  type: L4\n"},
    )
    resolved = resolve(load_fleet_at("HEAD", ["deployments"]).loaded)
    errors = [d for d in resolved.diagnostics if d.is_error]
    assert [(d.mark.file, d.mark.line, d.mark.col) for d in errors] == [("deployments/chat.yaml", 4, 13)]


def test_unknown_revision_is_one_clear_line(fleet_repo):
    with pytest.raises(GitError) as exc:
        load_fleet_at("no-such-branch", ["deployments"])
    assert str(exc.value) == "unknown git revision 'no-such-branch': no commit of that name in this repository"
    with pytest.raises(GitError) as exc:
        load_fleet_at("origin/main", ["deployments"])
    assert "git fetch origin main" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(GitError, match="not a git revision"):
        load_fleet_at("--output=/tmp/x", ["deployments"])


def test_folder_names_are_literal_not_patterns(git_env, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "two fleets", {"fleet[1]/a.yaml": deployment_yaml("a"), "fleet1/b.yaml": deployment_yaml("b")})
    monkeypatch.chdir(repo)
    assert _names(load_fleet_at("HEAD", ["fleet[1]"]).loaded) == ["fleet[1]/a.yaml"]


def test_outside_a_repository_is_one_clear_line(git_env, tmp_path, monkeypatch):
    (tmp_path / "deployments").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GitError, match=r"is not inside a git repository; --against needs one$"):
        load_fleet_at("HEAD", ["deployments"])


def test_a_path_outside_the_repository_is_refused(fleet_repo, tmp_path):
    with pytest.raises(GitError, match="is outside the git repository"):
        load_fleet_at("HEAD", [str(tmp_path)])


def test_a_fleet_yaml_that_does_not_load_at_the_revision_is_known_by_its_users_name(fleet_repo):
    """The loader keeps the path of a fleet.yaml that fails to load, so resolve reports it alone rather
    than every deployment's environments as unknown; at REF that path is the user's, not a temporary one."""
    commit(fleet_repo, "break fleet.yaml", {"deployments/fleet.yaml": "environments: [\n"})
    at = load_fleet_at("HEAD", ["deployments"])
    assert at.loaded.fleet is None and at.loaded.fleet_path == "deployments/fleet.yaml"
    errors = [d for d in resolve(at.loaded).diagnostics if d.is_error]
    assert {d.mark.file for d in errors} == {"deployments/fleet.yaml"}
