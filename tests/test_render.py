"""Rendered modules: real Modal objects carry the YAML's values; safe, deterministic code generation."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from renderer.codegen import render as render_mod
from renderer.codegen.render import RenderError, render, render_fleet
from renderer.config.load import load_fleet, load_text
from renderer.config.resolve import resolve

from conftest import REPO
from modal_objects import import_module, server_config

EXPECTED_ARGV = {
    "llama-3-1-8b-fp8": [
        "vllm",
        "serve",
        "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
        "--revision",
        "12fd6884d2585dd4d020373e7f39f74507b31866",
        "--served-model-name",
        "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
        "llm",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--uvicorn-log-level",
        "info",
        "--no-enforce-eager",
        "--tensor-parallel-size",
        "1",
    ],
    "qwen2-5-7b-instruct": [
        "vllm",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct",
        "--revision",
        "a09a35458c702b33eeacc393d103063234e8bc28",
        "--served-model-name",
        "qwen2.5-7b-instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--uvicorn-log-level",
        "info",
        "--no-enforce-eager",
        "--tensor-parallel-size",
        "1",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.92",
        "--enable-prefix-caching",
    ],
    "llama-3-3-70b-fp8": [
        "vllm",
        "serve",
        "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic",
        "--revision",
        "f50dbad2c84590ca17dc51e207c34321b65ff14b",
        "--served-model-name",
        "llama-3.3-70b-instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--uvicorn-log-level",
        "info",
        "--no-enforce-eager",
        "--tensor-parallel-size",
        "2",
        "--max-model-len",
        "16384",
        "--gpu-memory-utilization",
        "0.92",
        "--kv-cache-dtype",
        "fp8",
    ],
    "qwen2-5-7b-awq": [
        "vllm",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "--revision",
        "b25037543e9394b818fdfca67ab2a00ecc7dd641",
        "--served-model-name",
        "qwen2.5-7b-awq",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--uvicorn-log-level",
        "info",
        "--enforce-eager",
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "8192",
        "--max-num-seqs",
        "64",
    ],
}

HF = "/root/.cache/huggingface"
VC = "/root/.cache/vllm"
VOLUMES = {HF: "modal.Volume.from_name('huggingface-cache')", VC: "modal.Volume.from_name('vllm-cache')"}

# What each example's YAML (with fleet.yaml defaults, no --env) says, written out by hand.
EXPECTED = {
    "llama-3-1-8b-fp8": dict(
        gpus=[("B200", 1)],
        secrets=[],
        scaledown=900,
        startup=600,
        min=0,
        max=0,
        buffer=0,
        target=32,
        max_conc=0,
        unauth=False,
    ),
    "qwen2-5-7b-instruct": dict(
        gpus=[("L40S", 1)],
        secrets=[],
        scaledown=600,
        startup=600,
        min=0,
        max=4,
        buffer=0,
        target=24,
        max_conc=64,
        unauth=False,
    ),
    "llama-3-3-70b-fp8": dict(
        gpus=[("H100", 2), ("H200", 2)],
        secrets=["modal.Secret.from_name('huggingface-secret')"],
        scaledown=1200,
        startup=1800,
        min=0,
        max=2,
        buffer=0,
        target=48,
        max_conc=0,
        unauth=False,
    ),
    "qwen2-5-7b-awq": dict(
        gpus=[("L4", 1), ("A10", 1)],
        secrets=["modal.Secret.from_name('qwen-awq-api-key')"],
        scaledown=300,
        startup=600,
        min=0,
        max=2,
        buffer=0,
        target=16,
        max_conc=0,
        unauth=True,
    ),
}


def test_every_example_is_covered(example_fleet):
    assert {d.name for d in example_fleet.deployments} == set(EXPECTED) == set(EXPECTED_ARGV)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_modal_objects_carry_the_yaml(rendered_dir, name):
    cfg = server_config(rendered_dir / f"{name}.py")
    want = EXPECTED[name]
    assert cfg.app_name == name
    assert cfg.app_tags == {"managed-by": "fleetform"}
    assert cfg.gpus == want["gpus"]
    assert cfg.volumes == VOLUMES
    assert cfg.secrets == want["secrets"]
    auto = cfg.data.autoscaler_settings
    assert auto.scaledown_window == want["scaledown"]
    assert auto.min_containers == want["min"]
    assert auto.max_containers == want["max"]
    assert auto.buffer_containers == want["buffer"]
    assert auto.target_concurrency_float == want["target"]
    assert cfg.function.max_concurrent_inputs == want["max_conc"]
    http = cfg.data.http_config
    assert http.port == 8000
    assert http.startup_timeout == want["startup"]
    assert cfg.data.startup_timeout_secs == want["startup"]
    assert http.unauthenticated is want["unauth"]
    assert list(http.proxy_regions) == ["us-east"]
    assert cfg.data.is_server


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGV))
def test_vllm_argv_is_exactly_what_the_yaml_implies(example_fleet, rendered_dir, name):
    d = next(d for d in example_fleet.deployments if d.name == name)
    assert list(d.argv) == EXPECTED_ARGV[name]
    module = import_module(rendered_dir / f"{name}.py")
    assert module.VLLM_COMMAND == EXPECTED_ARGV[name]  # the module runs what resolve built


def test_module_image_pins_vllm_and_imports_only_modal(rendered_dir):
    for path in rendered_dir.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "renderer" not in imported and "fleetform" not in imported
        # modal at the top; huggingface_hub only inside the adapter fetcher (it ships with vLLM)
        assert imported - {"modal", "huggingface_hub"} <= set(sys.stdlib_module_names), imported
        top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        assert "huggingface_hub" not in top
        assert "shell=True" not in path.read_text()
        assert '.uv_pip_install("vllm==0.26.0")' in path.read_text()
        # every import at the top of the module, none in its middle (only the adapter fetcher's, in a function)
        assert [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            and n not in tree.body
            and "huggingface_hub" not in ast.dump(n)
        ] == []
        first_code = next(i for i, n in enumerate(tree.body) if not isinstance(n, (ast.Expr, ast.Import)))
        assert all(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body[first_code:])


def test_env_overlay_changes_objects(tmp_path):
    fleet = resolve(load_fleet([str(REPO / "deployments")]), "prod")
    [big] = [d for d in fleet.deployments if d.name == "llama-3-3-70b-fp8"]
    assert big.modal_env == "llm-prod"
    out = tmp_path / "m.py"
    out.write_text(render(big).text)
    auto = server_config(out).data.autoscaler_settings
    assert (auto.min_containers, auto.buffer_containers) == (1, 1)


def runtime_sections() -> dict[str, str]:
    """runtime.py's sections by name, read here independently of the renderer."""
    source = (REPO / "renderer" / "codegen" / "runtime.py").read_text()
    parts = re.split(r"^(?=# ---- [a-z]+: )", source, flags=re.MULTILINE)
    return {part.split(":", 1)[0][len("# ---- ") :]: part.rstrip("\n") for part in parts[1:]}


def test_runtime_sections_are_embedded_verbatim_and_only_where_used(rendered_dir, tmp_path):
    sections = runtime_sections()
    assert set(sections) == {"process", "snapshot"}
    for path in rendered_dir.glob("*.py"):
        text = path.read_text()
        assert sections["process"] in text
        assert sections["snapshot"] not in text and "GUARD_SOURCE" not in text and "def boot_for_snapshot" not in text
        top = {a.name for n in ast.parse(text).body if isinstance(n, ast.Import) for a in n.names}
        assert {"secrets", "tempfile", "sys"}.isdisjoint(top)  # only the snapshot section uses them
    snap = _render_yaml(BENIGN_YAML.replace("engine:\n", "engine:\n  cold_start: snapshot\n"), tmp_path)
    assert sections["process"] + "\n\n\n" + sections["snapshot"] in snap
    assert {"secrets", "tempfile", "sys"} <= {
        a.name for n in ast.parse(snap).body if isinstance(n, ast.Import) for a in n.names
    }


def test_runtime_module_is_what_serve_local_imports():
    """One code path: the sections the renderer embeds are the module `serve --local` runs."""
    from renderer.codegen import runtime
    from renderer.endpoint import serve

    assert serve.runtime is runtime
    assert Path(runtime.__file__).read_text().count("\n# ---- ") == 2


def test_render_is_deterministic_across_processes(tmp_path, example_fleet):
    first = {a.filename: a.text for a in render_fleet(example_fleet.deployments)}
    again = {a.filename: a.text for a in render_fleet(example_fleet.deployments)}
    assert first == again
    out = tmp_path / "other"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-m", "renderer", "render", "--out", str(out)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    assert {p.name: p.read_text() for p in out.glob("*.py")} == first


def test_header_names_source_and_hash(example_fleet):
    app = render(example_fleet.deployments[0])
    lines = app.text.splitlines()
    assert lines[0].startswith("# Generated by fleetform ") and '"deployments/llama-3-1-8b-fp8.yaml"' in lines[0]
    assert lines[1] == f"# fleetform-hash: {app.content_hash}"
    import hashlib

    body = app.text.split("\n", 2)[2]
    assert app.content_hash == "sha256:" + hashlib.sha256(body.encode()).hexdigest()


# --- injection -----------------------------------------------------------------------------------------

EVIL = '"); import os; os.system("echo pwned"); ("\\\'\n\r\n#\u2028\x00end'

BENIGN_YAML = """\
name: safe
model:
  id: Qwen/Qwen2.5-7B-Instruct
  revision: a09a35458c702b33eeacc393d103063234e8bc28
  chat_template: "plain"
gpu:
  type: L4
description: "plain"
engine:
  env:
    SOME_SETTING: "plain"
"""


def _render_yaml(text: str, tmp_path: Path) -> str:
    f = tmp_path / "d.yaml"
    f.write_text(text, encoding="utf-8")
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok, fleet.diagnostics
    return render(fleet.deployments[0]).text


def _shape(source: str) -> str:
    """The AST with every constant blanked: the structure of the code, not its data."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
    return ast.dump(tree)


def test_hostile_values_only_ever_become_string_constants(tmp_path):
    import json

    evil = json.dumps(EVIL)  # a YAML double-quoted scalar holding every nasty character
    hostile = (
        BENIGN_YAML.replace('chat_template: "plain"', f"chat_template: {evil}")
        .replace('description: "plain"', 'description: "ok"')
        .replace('SOME_SETTING: "plain"', f"SOME_SETTING: {evil}")
    )
    hostile_src = _render_yaml(hostile, tmp_path)
    benign_src = _render_yaml(BENIGN_YAML, tmp_path)
    assert _shape(hostile_src) == _shape(benign_src)
    constants = [n.value for n in ast.walk(ast.parse(hostile_src)) if isinstance(n, ast.Constant)]
    assert EVIL in constants
    out = tmp_path / "hostile.py"
    out.write_text(hostile_src)
    module = import_module(out)  # imports without running anything hostile
    assert EVIL in module.VLLM_COMMAND


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", 'demo"); import os; ("'),
        ("model.id", "a/b'); import os; ('"),
        ("served", "x\nimport os"),
        ("secret", "s'); import os; ('"),
        ("volume", "v\\x"),
    ],
)
def test_hostile_names_are_rejected_by_validation(tmp_path, field, value):
    import json

    v = json.dumps(value)
    text = BENIGN_YAML
    if field == "name":
        text = text.replace("name: safe", f"name: {v}")
    elif field == "model.id":
        text = text.replace("id: Qwen/Qwen2.5-7B-Instruct", f"id: {v}")
    elif field == "served":
        text = text.replace("  chat_template", f"  served_model_names: [{v}]\n  chat_template")
    elif field == "secret":
        text += f"secrets: [{v}]\n"
    else:
        text += f"cache:\n  vllm_volume: {v}\n"
    f = tmp_path / "d.yaml"
    f.write_text(text)
    fleet = resolve(load_fleet([str(f)]))
    assert not fleet.ok and not fleet.deployments


def test_values_without_the_filter_are_refused():
    env = render_mod.environment()
    with pytest.raises(RenderError, match="without the `py` filter"):
        env.from_string("x = {{ value }}").render(value="1; import os")
    assert env.from_string("x = {{ value|py }}").render(value="1'; import os") == 'x = "1\'; import os"'
    with pytest.raises(RenderError):
        env.from_string("# {{ value|note }}").render(value="a\nimport os")
    with pytest.raises(RenderError):
        render_mod.py(object())


# --- snapshot mode ---------------------------------------------------------------------------------------


def test_snapshot_mode_builds_snapshot_objects(tmp_path):
    from modal._partial_function import _find_partial_methods_for_user_cls, _PartialFunctionFlags
    from modal._utils.async_utils import synchronizer

    f = tmp_path / "d.yaml"
    f.write_text(BENIGN_YAML.replace("engine:\n", "engine:\n  cold_start: snapshot\n"))
    fleet = resolve(load_fleet([str(f)]))
    assert fleet.ok
    assert [d.code for d in fleet.diagnostics if not d.is_error] == ["snapshot-alpha"]
    out = tmp_path / "snap.py"
    out.write_text(render(fleet.deployments[0]).text)
    cfg = server_config(out)
    assert cfg.function.checkpointing_enabled is True
    assert dict(cfg.data.experimental_options) == {"enable_gpu_snapshot": "True"}
    module = import_module(out)
    user_cls = synchronizer._translate_in(module.Serve)._user_cls
    pre = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.ENTER_PRE_SNAPSHOT)
    post = _find_partial_methods_for_user_cls(user_cls, _PartialFunctionFlags.ENTER_POST_SNAPSHOT)
    assert list(pre) == ["start"] and list(post) == ["wake"]
    assert module.VLLM_ENV["VLLM_SERVER_DEV_MODE"] == "1"
    assert "--enable-sleep-mode" in module.VLLM_COMMAND
    assert module.VLLM_COMMAND[module.VLLM_COMMAND.index("--middleware") + 1] == "fleetform_guard.DevRouteGuard"


def test_standard_mode_has_no_snapshot(rendered_dir):
    cfg = server_config(rendered_dir / "llama-3-1-8b-fp8.py")
    assert cfg.function.checkpointing_enabled is False
    assert dict(cfg.data.experimental_options) == {}
    module = import_module(rendered_dir / "llama-3-1-8b-fp8.py")
    assert not hasattr(module, "VLLM_ENV") and "--enable-sleep-mode" not in module.VLLM_COMMAND  # no env to set


def test_the_parse_check_still_sees_every_line_outside_the_runtime():
    """render_module parses fleetform's own runtime once and the rest of each module every time:
    a broken line anywhere is still a RenderError, in the runtime or outside it."""
    from renderer.codegen.render import _parses

    block = "def helper():\n    return 1\n"
    _parses(f"import os\n\n{block}\nx = helper()\n", [block])
    with pytest.raises(SyntaxError):
        _parses(f"import os\n\n{block}\nx = (helper(\n", [block])
    with pytest.raises(SyntaxError):
        _parses("x = 1\ndef broken(:\n    pass\n", ["def broken(:\n    pass\n"])
    with pytest.raises(SyntaxError):  # a block cut out of the middle of a statement leaves it broken
        _parses(f"x = [\n{block}]\n", [block])


def test_the_module_docstring_keeps_its_line_breaks_and_the_tag_hash_is_the_content_hash(tmp_path):
    text = _render_yaml(
        "name: demo\ndescription: a test deployment\nmodel: {id: org/m, revision: "
        + "a" * 40
        + "}\ngpu: {type: H100}\n",
        tmp_path,
    )
    docstring = text.split('"""')[1]
    assert "\n\n" in docstring and "\\n" not in docstring  # written as lines, not as escapes
    assert ast.get_docstring(ast.parse(text)) == docstring.strip()
    fleet = resolve(load_fleet([str(tmp_path / "d.yaml")]))
    app = render(fleet.deployments[0])
    algorithm, digest = app.content_hash.split(":", 1)
    assert app.short_hash == digest[:12] and len(app.short_hash) == 12 and algorithm
