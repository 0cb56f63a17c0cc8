"""Install profiles: the lean core (`pip install fleetform`) runs validate, render, plan and explain
without modal, aiohttp, huggingface_hub or matplotlib; every command that needs one of them says in one line
which extra to install. The lean install is simulated by blocking those packages' imports in the
CLI's process; `.ci/run` also installs the built wheel into a fresh venv and runs the same commands."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from renderer.cli.extras import EXTRA_OF

from conftest import REPO

OPTIONAL = ("modal", "aiohttp", "huggingface_hub", "matplotlib")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# The CLI with the optional packages made unimportable (as in a venv that has only the core).
LEAN = (
    "import sys\n"
    f"for name in {OPTIONAL!r}:\n"
    "    sys.modules[name] = None\n"
    "from renderer.cli import main\n"
    "raise SystemExit(main())\n"
)
CACHED = (
    "Qwen/Qwen2.5-7B-Instruct",
    "a09a35458c702b33eeacc393d103063234e8bc28",
)  # deployments/qwen2-5-7b-instruct.yaml


def lean_cli(*args: str, cwd=REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", LEAN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


# --- pyproject.toml --------------------------------------------------------------------------------------


def test_the_core_leaves_out_the_optional_packages_and_the_extras_bring_them():
    core = _names(PYPROJECT["dependencies"])
    assert {"pyyaml", "jsonschema", "jinja2", "rich", "packaging"} <= core
    assert core.isdisjoint({"modal", "aiohttp", "huggingface-hub", "matplotlib"})
    extras = PYPROJECT["optional-dependencies"]
    for module, extra in EXTRA_OF.items():  # the extra the message names is the one that installs it
        assert module.replace("_", "-") in _names(extras[extra]), (module, extra)
    assert extras["all"] == ["fleetform[modal,hub,plot]"]
    assert "fleetform[all]" in extras["test"]  # `pip install -e '.[test]'` installs everything the tests need


def test_the_pre_commit_hook_installs_the_lean_core():
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["language"] == "python"  # pre-commit installs this package: its core dependencies only
    extra = " ".join(hook.get("additional_dependencies", []))
    assert not any(name in extra for name in OPTIONAL) and "fleetform[" not in extra


def test_ci_tests_the_lean_profile_from_the_built_wheel():
    script = (REPO / ".ci" / "run").read_text()
    lean = script[script.index("pip wheel") :]  # after the full profile's tests: the wheel, then a fresh venv
    assert re.search(r"python3 -m venv \S+", lean) and re.search(r"pip\S* install --quiet \S+\.whl", lean)
    for command in ("validate", "render --out build", "plan", "deploy --yes"):
        assert f'"$ff" {command}' in lean, command
    assert "fleetform[modal]" in lean  # deploy's message is checked, not only its exit code


# --- the lean core -----------------------------------------------------------------------------------------


def test_validate_render_plan_and_explain_run_without_the_optional_packages(tmp_path):
    for args in (
        ["validate"],
        ["render", "--out", str(tmp_path / "build")],
        ["plan"],
        ["plan", "--format", "json"],
        ["explain", "qwen2-5-7b-instruct"],
    ):
        result = lean_cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert len(list((tmp_path / "build").glob("*.py"))) >= 4


def test_plan_with_credentials_but_no_sdk_shows_the_offline_plan():
    result = lean_cli("plan", env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == "the Modal SDK is not installed, showing the offline plan " + (
        "(pip install 'fleetform[modal]' for the live view)\n"
    )
    result = lean_cli("plan", "--detailed-exitcode", env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"})
    assert result.returncode == 1 and "pip install 'fleetform[modal]'" in result.stderr


@pytest.mark.parametrize(
    "args, module, extra",
    [
        (["deploy", "--yes"], "modal", "modal"),
        (["deploy", "--yes", "--format", "json"], "modal", "modal"),
        (["status"], "modal", "modal"),
        (["rollback", "qwen2-5-7b-instruct"], "modal", "modal"),
        (["destroy", "qwen2-5-7b-instruct", "--yes"], "modal", "modal"),
        (["test", "http://127.0.0.1:9"], "aiohttp", "modal"),
        (["bench", "http://127.0.0.1:9", "--model", "m"], "aiohttp", "modal"),
        (["tune", "http://127.0.0.1:9", "--slo", "ttft_p90<=1s", "--plot", "t.png"], "aiohttp", "modal"),
        (
            ["new", "Qwen/Qwen2.5-0.5B", "--revision", "7ae557604adf67be50417f59c2c2f167def9a775"],
            "huggingface_hub",
            "hub",
        ),
    ],
)
def test_a_command_whose_extra_is_missing_says_which_extra_to_install(args, module, extra, tmp_path):
    result = lean_cli(*args, env={"MODAL_TOKEN_ID": "ak-x", "MODAL_TOKEN_SECRET": "as-x"})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: fleetform {args[0]} needs {module}, which this install of fleetform leaves out: "
        f"pip install 'fleetform[{extra}]' (or 'fleetform[all]')\n"
    )


def test_test_of_a_deployment_name_needs_the_modal_sdk():
    """aiohttp alone (test NAME asks Modal for the URL): the SDK is named, not a traceback."""
    code = LEAN.replace(repr(OPTIONAL), repr(("modal",)))
    result = subprocess.run(
        [sys.executable, "-c", code, "test", "qwen2-5-7b-instruct"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: fleetform test needs modal, which this install of fleetform leaves out")


def test_new_from_a_local_folder_needs_no_extra(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "num_hidden_layers": 2, '
        '"num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1024, '
        '"vocab_size": 1000, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}'
    )
    result = lean_cli(
        "new", "acme/tiny", "--revision", "0" * 40, "--from-dir", str(model), "--out", str(tmp_path / "deployments")
    )
    assert "huggingface_hub" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "deployments" / "tiny.yaml").is_file()


# --- validate's weights-fit check and the Hugging Face cache -----------------------------------------------


def _cache_snapshot(cache) -> None:
    model_id, revision = CACHED
    (cache / ("models--" + model_id.replace("/", "--")) / "snapshots" / revision).mkdir(parents=True)


def test_lean_validate_is_silent_without_a_cached_model_and_warns_with_one(tmp_path):
    result = lean_cli("validate", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0 and "huggingface_hub" not in result.stdout + result.stderr
    _cache_snapshot(tmp_path / "hub")
    result = lean_cli("validate", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "deployments/qwen2-5-7b-instruct.yaml:11:13: warning: model.revision:" in out
    assert "cannot check that the model fits its GPUs: reading the Hugging Face cache needs huggingface_hub" in out
    assert "pip install 'fleetform[hub]'" in out


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_CACHE": "{tmp}/a"},
        {"HF_HOME": "{tmp}/home"},
        {"XDG_CACHE_HOME": "{tmp}/xdg"},
        {"HOME": "{tmp}/user"},
    ],
)
def test_the_lean_cache_folder_is_the_one_huggingface_hub_uses(env, tmp_path):
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")}
    full = {**base, **{k: v.format(tmp=tmp_path) for k, v in env.items()}}

    def ask(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True).stdout

    hub = ask("from huggingface_hub import constants; print(constants.HF_HUB_CACHE)")
    lean = ask(
        "import sys; sys.modules['huggingface_hub'] = None\n"
        "from renderer.config.rules import _hf_hub_cache; print(_hf_hub_cache())"
    )
    assert hub.strip() and lean == hub


def test_the_package_version_is_the_distributions():
    """`fleetform --version`, the version init pins in workflows, and the wheel's are one number."""
    import tomllib

    from renderer import __version__

    with open(REPO / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == __version__
