from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cli(
    *args: str, cwd: Path = REPO, env: dict | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run the real `fleetform` command line in a subprocess (`unset`: variables to remove from its env)."""
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "renderer", *args], cwd=cwd, capture_output=True, text=True, env=full, timeout=120
    )


@pytest.fixture(scope="session", autouse=True)
def machine_independent(tmp_path_factory):
    """Every test, and every command a test runs, sees an empty Hugging Face cache and no Modal
    credentials, whatever this machine has: `validate` reads the cache (the model-fit rule) and
    `plan` goes live with credentials, so results would otherwise depend on who runs the suite."""
    home = tmp_path_factory.mktemp("machine")
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("MODAL_")]:
        del os.environ[key]
    os.environ.update(
        {
            "HF_HOME": str(home / "hf"),
            "HF_HUB_CACHE": str(home / "hf" / "hub"),
            "MODAL_CONFIG_PATH": str(home / "no-modal.toml"),
        }
    )
    constants = sys.modules.get("huggingface_hub.constants")  # read the variables when first imported
    cached = (constants.HF_HOME, constants.HF_HUB_CACHE) if constants else None
    if constants:
        constants.HF_HOME, constants.HF_HUB_CACHE = os.environ["HF_HOME"], os.environ["HF_HUB_CACHE"]
    yield
    if constants and cached:
        constants.HF_HOME, constants.HF_HUB_CACHE = cached
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def example_fleet():
    from renderer.config.load import load_fleet
    from renderer.config.resolve import resolve

    resolved = resolve(load_fleet([str(REPO / "deployments")]))
    assert resolved.ok, resolved.diagnostics
    return resolved


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory, example_fleet):
    from renderer.codegen.render import render_fleet
    from renderer.codegen.write import write_all

    out = tmp_path_factory.mktemp("build")
    write_all(render_fleet(example_fleet.deployments), out)
    return out
