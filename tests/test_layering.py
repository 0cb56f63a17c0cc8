"""The package reads as the pipeline: every import goes to the same stage or an earlier one.

Read from the source with `ast` (imports inside functions and under TYPE_CHECKING count too), so a
new upward edge or cycle fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "renderer"

# Lowest first. A module may import from its own layer or a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("renderer", "renderer.__main__"),  # the package itself: version only; __main__ is checked apart
    ("renderer.diagnostics", "renderer.gpus"),
    ("renderer.sizing",),
    ("renderer.config",),
    ("renderer.codegen",),
    ("renderer.endpoint",),
    ("renderer.modal_api",),
    ("renderer.plan",),
    ("renderer.deploy",),
    ("renderer.cli", "renderer.docs"),
)
# Entry points: they sit above everything.
TOP = {"renderer.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = -1, -1  # (prefix length, layer)
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best[0]:
                best = len(name), index
    return best[1]


def imports_of(path: Path) -> set[str]:
    """Every renderer module this file imports, anywhere in it."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_in(text: str, here: str, is_package: bool = False) -> set[str]:
    tree = ast.parse(text)
    package = here if is_package else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "renderer")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "renderer":
                continue
            for alias in node.names:  # `from renderer.config import spec` imports renderer.config.spec
                sub = f"{target}.{alias.name}"
                out.add(
                    sub
                    if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                    or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                    else target
                )
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in SOURCES if layer_of(module_name(p)) < 0]
    assert not missing, f"add these to LAYERS: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_to_the_same_stage_or_an_earlier_one(path):
    here = module_name(path)
    if here in TOP:
        return
    upward = [m for m in sorted(imports_of(path)) if m != "renderer" and layer_of(m) > layer_of(here)]
    assert not upward, f"{here} (layer {layer_of(here)}) imports a later stage: {upward}"


def test_no_import_cycles_between_modules():
    graph = {module_name(p): {m for m in imports_of(p) if m != module_name(p)} for p in SOURCES}
    # a package's own __init__ re-exporting its modules is not a cycle worth failing on
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    seen: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        seen[node] = 1
        for dep in sorted(graph.get(node, ())):
            if seen.get(dep) == 1:
                cycle.extend(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
                return True
            if dep not in seen and visit(dep, [*stack, dep]):
                return True
        seen[node] = 2
        return False

    for start in sorted(graph):
        if start not in seen and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_checker_sees_an_upward_import_inside_a_function():
    """The tests above can fail: a config module importing the CLI lazily is an upward edge."""
    found = imports_in("def f():\n    from renderer.cli import main\n    from . import spec\n", "renderer.config.probe")
    assert found == {"renderer.cli", "renderer.config.spec"}
    assert layer_of("renderer.cli") > layer_of("renderer.config.probe")
