"""The stage module: rendered like the apps, checked from the Modal objects the real SDK builds."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from renderer.codegen import stage as stage_mod
from renderer.codegen.render import render
from renderer.codegen.stage import render_stage
from renderer.config import spec
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import REPO
from modal_objects import function_config, import_module

ADAPTERS = (
    "model:\n  id: org/model\n  revision: " + "a" * 40 + "\n  served_model_names: [m1]\n  max_lora_rank: 64\n"
    "  lora_adapters:\n    - {name: sql, id: org/sql-lora, revision: " + "b" * 40 + "}\n"
)


def deployment(tmp_path, text):
    f = tmp_path / "d.yaml"
    f.write_text(text)
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok, fleet.diagnostics
    return fleet.deployments[0]


def write(tmp_path, rendered):
    path = tmp_path / rendered.filename
    path.write_text(rendered.text)
    return path


def test_the_stage_function_runs_on_cpus_with_the_apps_volume_and_secrets(example_fleet, tmp_path):
    d = next(d for d in example_fleet.deployments if d.name == "llama-3-3-70b-fp8")
    rendered = render_stage(d)
    cfg = function_config(write(tmp_path, rendered), "stage")
    app_cfg = function_config(write(tmp_path, render(d)), "serve")
    assert cfg.app_name == "llama-3-3-70b-fp8-stage" == rendered.name
    assert cfg.app_tags == {"managed-by": "fleetform"}
    f = cfg.function
    assert not f.resources.HasField("gpu_config") or not f.resources.gpu_config.gpu_type
    assert f.resources.milli_cpu == 4000 and f.resources.memory_mb == 8192
    assert f.timeout_secs == stage_mod.TIMEOUT
    assert f.function_type == f.FUNCTION_TYPE_GENERATOR  # progress events stream back
    hf = spec.HF_CACHE_PATH
    assert cfg.volumes == {hf: app_cfg.volumes[hf]} == {hf: f"modal.Volume.from_name('{d.cache.huggingface_volume}')"}
    assert cfg.secrets == app_cfg.secrets == ["modal.Secret.from_name('huggingface-secret')"]


def test_the_module_stages_the_pinned_revision_and_the_adapters_where_the_app_looks(tmp_path):
    d = deployment(tmp_path, "name: demo\n" + ADAPTERS + "gpu:\n  type: H100\n")
    stage_module = import_module(write(tmp_path, render_stage(d)))
    app_module = import_module(write(tmp_path, render(d)))
    assert (stage_module.MODEL_ID, stage_module.MODEL_REVISION) == (app_module.MODEL_ID, app_module.MODEL_REVISION)
    assert stage_module.LORA_ADAPTERS == app_module.LORA_ADAPTERS  # same folders, same revisions
    assert stage_module.HF_CACHE_PATH == spec.HF_CACHE_PATH
    assert render_stage(d).repos == (("org/model", "a" * 40), ("org/sql-lora", "b" * 40))


def test_the_image_is_the_deployments_python_with_the_pinned_hub_and_no_vllm(example_fleet):
    for d in example_fleet.deployments:
        text = render_stage(d).text
        assert f'modal.Image.debian_slim(python_version="{d.image.python_version}")' in text
        assert '.uv_pip_install("huggingface_hub==2.4.0", "hf-xet==1.8.0")' in text
        assert "vllm==" not in text and "vllm-cache" not in text  # no vLLM, no compile cache


def test_the_pinned_hub_is_the_one_the_staging_tests_run():
    assert importlib.metadata.version("huggingface_hub") == stage_mod.HUB_VERSION
    assert importlib.metadata.version("hf-xet") == stage_mod.XET_VERSION
    # ... because the test extra installs exactly those (a newer Hub release must not change what CI tests)
    test_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert {f"huggingface_hub=={stage_mod.HUB_VERSION}", f"hf-xet=={stage_mod.XET_VERSION}"} <= set(test_extra)


def test_staging_is_copied_verbatim_and_the_module_imports_only_the_stdlib_and_modal(example_fleet):
    source = (REPO / "renderer" / "codegen" / "staging.py").read_text()
    section = source[source.index("# ---- stage:") :].rstrip("\n")
    for d in example_fleet.deployments:
        text = render_stage(d).text
        assert section in text
        tree = ast.parse(text)
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert top == {"datetime", "json", "os", "modal"}
        assert "huggingface_hub" in text  # imported inside the functions that use it


def test_render_is_deterministic_and_the_header_hash_is_the_content_hash(example_fleet):
    d = example_fleet.deployments[0]
    a, b = render_stage(d), render_stage(d)
    assert a.text == b.text and a.content_hash == b.content_hash
    assert a.text.splitlines()[1] == f"# fleetform-hash: {a.content_hash}"


def test_hostile_values_stay_string_constants(tmp_path):
    d = deployment(tmp_path, "name: demo\n" + ADAPTERS + "gpu:\n  type: H100\n")
    evil = 'x"; import os; os.system("id"); "'
    from dataclasses import replace

    d = replace(d, cache=replace(d.cache, huggingface_volume=evil))
    tree = ast.parse(render_stage(d).text)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_name"]
    volume = next(c for c in calls if c.func.value.attr == "Volume")
    assert isinstance(volume.args[0], ast.Constant) and volume.args[0].value == evil
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "system"]


def test_every_stage_module_passes_ruff(example_fleet, tmp_path):
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is in the `test` extra")
    for d in example_fleet.deployments:
        write(tmp_path, render_stage(d))
    out = subprocess.run(
        [ruff, "check", "--isolated", "--no-cache", "--output-format", "concise", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_staging_is_python_3_10_and_imports_only_the_stdlib_and_the_hub():
    source = (REPO / "renderer" / "codegen" / "staging.py").read_text()
    tree = ast.parse(source, feature_version=(3, 10))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - {"huggingface_hub"} <= set(sys.stdlib_module_names), imported
