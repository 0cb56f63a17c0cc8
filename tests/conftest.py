from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `fleetform` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "renderer", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture(scope="session")
def example_fleet():
    from renderer.load import load_fleet
    from renderer.resolve import resolve

    resolved = resolve(load_fleet([str(REPO / "deployments")]))
    assert resolved.ok, resolved.diagnostics
    return resolved


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory, example_fleet):
    from renderer.render import render_fleet, write_all

    out = tmp_path_factory.mktemp("build")
    write_all(render_fleet(example_fleet.deployments), out)
    return out
