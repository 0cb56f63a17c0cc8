"""The CLI's one output layer: exit codes, the reporter table, start-up imports, and no printing below the CLI."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys

import pytest

from renderer.cli.output import REPORTERS, CliError, ExitCode, dumps, money, reporter

from conftest import REPO

# Modules whose source is copied into generated apps, or a maintainer's script: they may print.
MAY_PRINT = {"renderer/codegen/runtime.py", "renderer/codegen/gateway_app.py", "renderer/docs.py"}


def test_exit_codes_are_stable():
    assert [(c.name, int(c)) for c in ExitCode] == [("OK", 0), ("INVALID", 1), ("USAGE", 2), ("INTERRUPTED", 130)]
    assert ExitCode.CHANGES == 2  # an alias of USAGE's value: --detailed-exitcode's "changes pending"


def test_one_reporter_per_format():
    assert sorted(REPORTERS) == ["github", "json", "text"]
    assert all(reporter(name).name == name for name in REPORTERS)


def test_an_error_is_reported_by_the_format_that_was_asked_for():
    exc = CliError("3 error(s); nothing was rendered", plain=True, doc={"ok": False, "diagnostics": []})
    out, err = io.StringIO(), io.StringIO()
    reporter("text", out, err).error(exc)
    assert (out.getvalue(), err.getvalue()) == ("", "3 error(s); nothing was rendered\n")
    out, err = io.StringIO(), io.StringIO()
    reporter("json", out, err).error(exc)
    assert (json.loads(out.getvalue()), err.getvalue()) == ({"ok": False, "diagnostics": []}, "")
    out, err = io.StringIO(), io.StringIO()
    reporter("json", out, err).error(CliError("no such ref", doc={"ok": False, "error": "no such ref"}))
    assert err.getvalue() == "error: no such ref\n" and json.loads(out.getvalue())["error"] == "no such ref"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [float("-inf")], {"a": {"b": float("nan")}}])
def test_json_never_carries_nan_or_infinity(value):
    with pytest.raises(CliError, match="not finite"):
        dumps(value)


@pytest.mark.parametrize(
    "value, text", [(-0.0, "$0.00"), (-0.004, "$0.00"), (0.005, "$0.01"), (1234.5, "$1,234.50"), (None, "no limit")]
)
def test_money(value, text):
    assert money(value) == text


def test_start_up_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); from renderer.cli import build_parser; build_parser(); "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    third_party = {m.split(".")[0] for m in loaded.stdout.split()} - set(sys.stdlib_module_names) - {"renderer"}
    assert third_party == set()


def test_no_library_module_prints():
    """Only the CLI writes to the terminal: below it, stages return results and raise errors."""
    offenders = []
    for path in sorted((REPO / "renderer").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("renderer/cli/") or rel in MAY_PRINT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and f.attr == "exit" and getattr(f.value, "id", "") == "sys"
                ):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_choices_come_from_the_library_and_the_help_shows_them():
    """Choices read lazily (to keep start-up light) carry a metavar for --help: it must list them all."""
    from renderer.cli import build_parser
    from renderer.cli.common import LazyChoices
    from renderer.config.schema import DEPLOYMENT_SCHEMA, load_schema
    from renderer.endpoint import AUTH_KINDS
    from renderer.modal_api import STRATEGIES

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    lazy = [(name, a) for name, p in commands.items() for a in p._actions if isinstance(a.choices, LazyChoices)]
    assert {(name, a.dest) for name, a in lazy} == {("deploy", "strategy"), ("new", "quantization")}
    for _, action in lazy:
        assert action.metavar == "{" + ",".join(action.choices) + "}"
    options = {a.dest: a for a in commands["deploy"]._actions} | {a.dest: a for a in commands["new"]._actions}
    assert tuple(options["strategy"].choices) == STRATEGIES
    schema = load_schema(DEPLOYMENT_SCHEMA)
    assert list(options["quantization"].choices) == schema["$defs"]["model"]["properties"]["quantization"]["enum"]
    assert all(
        tuple(a.choices) == AUTH_KINDS
        for name in ("test", "bench")
        for a in commands[name]._actions
        if a.dest == "auth"
    )


def test_health_timeout_is_one_flag_for_test_and_bench_with_the_old_name_kept():
    from renderer.cli import build_parser

    parser = build_parser()
    for command in ("test", "bench"):
        assert parser.parse_args([command, "http://x"]).health_timeout == 600.0
        assert parser.parse_args([command, "http://x", "--health-timeout", "5"]).health_timeout == 5.0
        assert parser.parse_args([command, "http://x", "--timeout", "7"]).health_timeout == 7.0  # hidden alias
