#!/usr/bin/env python3
"""Mutation testing of the config stage: would the tests notice if this line were wrong?

An AST-based driver (no extra dependency). For each target module it makes small, single changes
to the code (a mutant each), runs the tests that cover the module against every mutant in a
scratch copy of the repository, and counts the mutants the tests kill (some test fails) and the
ones that survive (every test passes). Survivors are printed with file:line and the change, so
each one is either a missing test or an equivalent mutant (a change that cannot alter behaviour).

Operators: comparison flips (`<` <-> `<=`, `==` <-> `!=`, `in` <-> `not in`, `is` <-> `is not`),
`and` <-> `or`, dropping a `not`, `True` <-> `False`, integer constants +1, negating an `if`/
`while` condition, `return X` -> `return None`, and deleting a call statement (`out.append(...)`,
`diags.extend(...)`).

    python benchmarks/mutation.py                          # every target, every mutant
    python benchmarks/mutation.py --sample 40 --seed 1     # at most 40 mutants a module
    python benchmarks/mutation.py renderer/config/load.py  # one module

Equivalent mutants (changes that cannot alter behaviour, e.g. `<` -> `<=` where both sides can
never be equal) are listed in `benchmarks/mutation-equivalent.txt`, one a line:

    renderer/config/load.py:123: Lt -> LtE  # why it cannot change behaviour

They are not run and not counted: the score is killed / (mutants - equivalent). An entry matches
every mutant with that file, line and change; an entry that matches no mutant any more (the code
moved) is reported as stale, so that the list is kept in step with the code.

Not part of the test run: it runs the selected tests once per mutant (minutes to an hour on two
cores). Exit status 0 when every module reaches --goal (default 90% killed), else 2.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT = Path(__file__).resolve().parent / "mutation-equivalent.txt"

# module -> the tests that cover it (run with -x: the first failure kills the mutant)
TARGETS: dict[str, tuple[str, ...]] = {
    "renderer/config/load.py": (
        "tests/test_boundaries.py",
        "tests/test_load.py",
        "tests/test_cli_cases.py",
        "tests/test_gitref.py",
    ),
    "renderer/config/validate.py": ("tests/test_schema.py", "tests/test_cli_cases.py", "tests/test_cli_fleet.py"),
    "renderer/config/schema.py": ("tests/test_schema.py", "tests/test_cli_cases.py"),
    "renderer/config/rules.py": (
        "tests/test_boundaries.py",
        "tests/test_rules.py",
        "tests/test_schema.py",
        "tests/test_cli_cases.py",
        "tests/test_vllm_flags.py",
        "tests/test_sizing.py",
        "tests/test_cli_fleet.py",
    ),
    "renderer/config/resolve.py": (
        "tests/test_environments.py",
        "tests/test_boundaries.py",
        "tests/test_cli_fleet.py",
        "tests/test_schema.py",
        "tests/test_cli_cases.py",
        "tests/test_render.py",
        "tests/test_diff.py",
    ),
    "renderer/codegen/render.py": ("tests/test_render.py", "tests/test_module_text.py", "tests/test_cli_fleet.py"),
    "renderer/plan/against.py": ("tests/test_diff.py",),
}

_FLIP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int
    what: str
    source: str  # the whole mutated module


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            out.add(id(body[0].value))
    return out


def _sites(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every (node, operator) this driver can mutate, in source order."""
    docstrings = _docstring_nodes(tree)
    sites: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sites.extend((node, f"cmp{i}") for i, op in enumerate(node.ops) if type(op) in _FLIP)
        elif isinstance(node, ast.BoolOp):
            sites.append((node, "boolop"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "not"))
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            if isinstance(node.value, bool) or (isinstance(node.value, int) and not isinstance(node.value, bool)):
                sites.append((node, "const"))
        elif isinstance(node, (ast.If, ast.While)):
            sites.append((node, "negate"))
        elif (
            isinstance(node, ast.Return)
            and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):
            sites.append((node, "return"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            sites.append((node, "delete"))
    return sorted(sites, key=lambda s: (getattr(s[0], "lineno", 0), getattr(s[0], "col_offset", 0), s[1]))


def _apply(node: ast.AST, op: str) -> str:
    """Mutate `node` in place; returns a description of the change."""
    if op.startswith("cmp"):
        i = int(op[3:])
        old = node.ops[i]
        node.ops[i] = _FLIP[type(old)]()
        return f"{type(old).__name__} -> {type(node.ops[i]).__name__}"
    if op == "boolop":
        old = node.op
        node.op = ast.Or() if isinstance(old, ast.And) else ast.And()
        return f"{type(old).__name__} -> {type(node.op).__name__}"
    if op == "not":
        return "drop `not`"
    if op == "const":
        if isinstance(node.value, bool):
            node.value = not node.value
            return f"{not node.value} -> {node.value}"
        node.value += 1
        return f"{node.value - 1} -> {node.value}"
    if op == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
        return f"negate `{type(node).__name__.lower()}` condition"
    if op == "return":
        node.value = ast.Constant(value=None)
        return "return None"
    if op == "delete":
        return "delete call statement"
    raise ValueError(op)


class _Replace(ast.NodeTransformer):
    """Replaces one node: `not x` -> `x`, a deleted statement -> `pass`."""

    def __init__(self, target: ast.AST, op: str):
        self.target, self.op = target, op

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            if self.op == "not":
                return node.operand
            if self.op == "delete":
                return ast.Pass()
        return self.generic_visit(node)


def mutants(path: str, root: Path = REPO) -> list[Mutant]:
    """Every mutant of the module `path` (relative to `root`), in source order."""
    source = (root / path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    out = []
    for index, (_, op) in enumerate(_sites(tree)):
        fresh = ast.parse(source)
        node = _sites(fresh)[index][0]
        line = getattr(node, "lineno", 0)
        what = _apply(node, op)
        fresh = ast.fix_missing_locations(_Replace(node, op).visit(fresh))
        try:
            text = ast.unparse(fresh)
        except Exception:  # noqa: BLE001 - an operator that made no valid tree
            continue
        out.append(Mutant(path, line, what, text))
    return out


_ENTRY = re.compile(r"^(?P<file>[^:#\s]+):(?P<line>\d+): (?P<what>[^#]+?)\s+#\s*(?P<why>\S.*)$")


def read_equivalent(path: Path) -> dict[tuple[str, int, str], str]:
    """The equivalent-mutant list: (file, line, change) -> why. Blank and `#` lines are skipped; a line
    without a reason is an error (an equivalent mutant needs its one-line argument)."""
    out: dict[tuple[str, int, str], str] = {}
    if not path.is_file():
        return out
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        m = _ENTRY.match(text.strip())
        if not m:
            raise SystemExit(f"{path.name}:{n}: expected `path:line: change  # why`, got {text!r}")
        out[(m["file"], int(m["line"]), m["what"])] = m["why"]
    return out


def split_equivalent(
    found: list[Mutant], equivalent: dict[tuple[str, int, str], str]
) -> tuple[list[Mutant], list[Mutant]]:
    """(mutants to run, mutants listed as equivalent)."""
    run, skip = [], []
    for m in found:
        (skip if (m.file, m.line, m.what) in equivalent else run).append(m)
    return run, skip


def run_tests(scratch: Path, tests: tuple[str, ...], timeout: float) -> bool:
    """True when the tests pass (the mutant survives)."""
    env = dict(os.environ, PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False  # a mutant that hangs the tests is caught (by the timeout)
    return proc.returncode == 0


def run_module(scratch: Path, module: str, tests: tuple[str, ...], found: list[Mutant], timeout: float) -> list[Mutant]:
    """Run `tests` in `scratch` against each mutant of `module` in turn; returns the survivors."""
    original = (scratch / module).read_text(encoding="utf-8")
    survivors, t0 = [], time.monotonic()
    try:
        for i, m in enumerate(found, 1):
            (scratch / module).write_text(m.source, encoding="utf-8")
            if run_tests(scratch, tests, timeout):
                survivors.append(m)
                print(f"  survived  {m.file}:{m.line}: {m.what}", flush=True)
            if i % 10 == 0:
                print(
                    f"  {module}: {i}/{len(found)} mutants, {i - len(survivors)} killed, {time.monotonic() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        (scratch / module).write_text(original, encoding="utf-8")
    return survivors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="target modules (default: every module in TARGETS that exists)")
    ap.add_argument("--sample", type=int, help="at most this many mutants a module, chosen with --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for one mutant's test run")
    ap.add_argument("--goal", type=float, default=0.9, help="share of mutants to kill (default 0.9)")
    ap.add_argument("--equivalent", type=Path, default=EQUIVALENT, help="the equivalent-mutant list")
    args = ap.parse_args()
    modules = args.modules or [m for m in TARGETS if (REPO / m).is_file()]
    equivalent = read_equivalent(args.equivalent)
    scores: dict[str, tuple[int, int, int]] = {}  # module -> killed, non-equivalent run, equivalent excluded
    with tempfile.TemporaryDirectory(prefix="fleetform-mutation-") as tmp:
        scratch = Path(tmp) / "repo"
        shutil.copytree(REPO, scratch, ignore=shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", ".gpu"))
        (scratch / ".git").mkdir()  # the copy is a repository root too: rendered headers name paths from it
        for module in modules:
            tests = TARGETS.get(module, ("tests",))
            if not run_tests(scratch, tests, args.timeout):
                print(f"{module}: its tests fail without any mutation; skipped", file=sys.stderr)
                continue
            every = mutants(module, scratch)
            listed = {(m.file, m.line, m.what) for m in every}
            for key in sorted(k for k in equivalent if k[0] == module and k not in listed):
                print(f"  stale equivalent entry (no such mutant): {key[0]}:{key[1]}: {key[2]}", file=sys.stderr)
            found = every
            if args.sample and len(found) > args.sample:
                found = sorted(random.Random(args.seed).sample(found, args.sample), key=lambda m: m.line)
            found, skipped = split_equivalent(found, equivalent)
            survivors = run_module(scratch, module, tests, found, args.timeout)
            killed = len(found) - len(survivors)
            scores[module] = (killed, len(found), len(skipped))
            print(
                f"{module}: {killed}/{len(found)} killed ({killed / max(len(found), 1):.0%}); "
                f"{len(skipped)} equivalent excluded",
                flush=True,
            )
    print("\nmodule                              killed   total  equivalent  score")
    for module, (killed, total, skipped) in scores.items():
        print(f"{module:<36} {killed:>6} {total:>7} {skipped:>11}  {killed / max(total, 1):>5.0%}")
    return 0 if all(k / max(t, 1) >= args.goal for k, t, _ in scores.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
