"""Every `fleetform ...` example in every command's `--help` epilog works as written.

The marker: an epilog groups its examples under headings. Under `examples:` (or `example:`) an
example must run offline against the bundled fleet and exit 0; under a heading that says what it
needs, `examples (need Modal credentials):`, `example (needs vLLM and a GPU):` and the like, it is
not run. Every example, run or not, must parse: its command and flags exist. An example with a
placeholder in capitals (`ORG/MODEL`, `SHA`, `URL`) is a template: parsed, not run.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO

HEADING = re.compile(r"^(examples?)(?: \((needs? [^)]*)\))?:\s*(.*)$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(/[A-Z][A-Z0-9_]*)?$")


def parsers() -> dict[str, argparse.ArgumentParser]:
    """`fleetform` and every subcommand's parser, by command line prefix."""
    from renderer.cli import build_parser

    top = build_parser()
    out = {"fleetform": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({f"fleetform {name}": p for name, p in action.choices.items()})
    return out


def examples() -> list[tuple[str, list[str], str | None]]:
    """(the parser it came from, argv after `fleetform`, what it needs or None)."""
    out = []
    for where, parser in parsers().items():
        needs = "no heading"
        for line in (parser.epilog or "").splitlines():
            line = line.strip()
            heading = HEADING.match(line)
            if heading:
                needs, line = heading.group(2), heading.group(3)
            elif not line:  # a blank line ends a group
                needs = "no heading"
            if not line.startswith("fleetform "):
                continue
            command = re.split(r"\s{2,}", line.split("&&")[0].strip())[0]  # drop the comment beside it
            out.append((where, shlex.split(command)[1:], needs))
    return out


EXAMPLES = examples()


def test_examples_are_found_and_grouped():
    assert len(EXAMPLES) >= 20
    assert all(needs != "no heading" for _, _, needs in EXAMPLES), "an example outside an examples: heading"
    assert {w for w, _, _ in EXAMPLES} == set(parsers()), "a command without examples"


@pytest.mark.parametrize("where, argv, needs", EXAMPLES, ids=[" ".join(a) for _, a, _ in EXAMPLES])
def test_every_example_parses(where, argv, needs, capsys):
    from renderer.cli import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}'s example `fleetform {' '.join(argv)}` does not parse: {capsys.readouterr().err}")
        raise AssertionError from exc


RUNNABLE = [(w, a) for w, a, needs in EXAMPLES if needs is None and not any(PLACEHOLDER.match(t) for t in a)]


@pytest.fixture(scope="module")
def fleet_checkout(tmp_path_factory):
    """The bundled fleet in a git repository whose `origin/main` is its commit, as in a clone."""
    root = tmp_path_factory.mktemp("fleet")
    shutil.copytree(REPO / "deployments", root / "deployments")
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": str(root)}
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], [*ident, "commit", "-qm", "fleet"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)
    subprocess.run(["git", "update-ref", "refs/remotes/origin/main", "HEAD"], cwd=root, check=True, env=env)
    return root


def test_offline_examples_are_there():
    """The commands a newcomer tries first are examples that run here."""
    run = {" ".join(a) for _, a in RUNNABLE}
    assert {"validate", "plan --env prod", "plan --against origin/main", "render --out build"} <= run


def test_every_offline_example_runs_against_the_bundled_fleet(fleet_checkout, monkeypatch, capsys):
    """Run in order, as a reader would: `render --out build --check` follows `render --out build`."""
    from renderer import cli

    monkeypatch.chdir(fleet_checkout)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    failed = []
    for where, argv in RUNNABLE:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        if code != 0:
            failed.append(f"{where}: `fleetform {' '.join(argv)}` exited {code}: {captured.err.strip()[-300:]}")
    assert failed == []
