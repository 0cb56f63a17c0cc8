"""The rendered module reads like a hand-written Modal example: constants used by name, only
non-default decorator arguments with comments true for their values, the runtime above the app
with its imports at the top, double quotes, ruff-clean; and still injection-safe and deterministic."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from renderer.codegen import render as render_mod
from renderer.codegen.render import RenderError, py, render
from renderer.config import spec
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import REPO
from modal_objects import import_module, server_config

MINIMAL = f"""\
name: demo
description: a plain description
model:
  id: org/model
  revision: {"a" * 40}
  served_model_names: [m1, m2]
gpu:
  type: L4
"""


def deployment(tmp_path: Path, text: str = MINIMAL, env: str | None = None) -> spec.Deployment:
    f = tmp_path / "demo.yaml"
    f.write_text(text, encoding="utf-8")
    fleet = resolve(load_fleet([str(f)]), env)
    assert fleet.ok, fleet.diagnostics
    return fleet.deployments[0]


def with_yaml(extra: str) -> str:
    return MINIMAL + extra


def every_kind_of_module(tmp_path: Path, example_fleet) -> dict[str, str]:
    """Module texts: every example (with and without --env prod), the all-knobs fixture, snapshot mode,
    each auth mode, env vars, fallbacks, regions, an unlimited and a capped autoscaler."""
    texts = {f"{d.name}.py": render(d).text for d in example_fleet.deployments}
    prod = resolve(load_fleet([str(REPO / "deployments")]), "prod")
    texts.update({f"prod-{d.name}.py": render(d).text for d in prod.deployments})
    knobs = resolve(load_fleet([str(REPO / "tests" / "fixtures" / "all-knobs.yaml")]))
    assert knobs.ok, knobs.diagnostics
    texts["all-knobs.py"] = render(knobs.deployments[0]).text
    variants = {
        "snapshot": "engine:\n  cold_start: snapshot\n  env:\n    A_SETTING: x\n",
        "open": "auth:\n  mode: none\n",
        "apikey": "auth:\n  mode: api_key\n  api_key_secret: my-key\n",
        "busy": "scaling:\n  min_containers: 2\n  max_containers: 5\n  buffer_containers: 1\n  max_concurrency: 40\n"
        "region: [us-east-1]\nrouting_region: eu-west\n",
    }
    for name, extra in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        texts[f"{name}.py"] = render(deployment(folder, with_yaml(extra))).text
    return texts


@pytest.fixture(scope="module")
def modules(tmp_path_factory, example_fleet) -> dict[str, str]:
    return every_kind_of_module(tmp_path_factory.mktemp("kinds"), example_fleet)


# --- ruff, quotes, imports ------------------------------------------------------------------------------


def test_every_rendered_module_passes_ruff_with_default_rules(modules, tmp_path):
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff, "ruff is in the `test` extra: pip install -e '.[test]'"
    for name, text in modules.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [ruff, "check", "--isolated", "--no-cache", "--output-format", "concise", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(modules) == 13


def string_tokens(text: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    kinds = {tokenize.STRING, getattr(tokenize, "FSTRING_START", -1)}
    return [t.string for t in tokens if t.type in kinds]


def test_every_string_literal_is_double_quoted(modules):
    for name, text in modules.items():
        strings = string_tokens(text)
        assert strings
        single = [s for s in strings if s.lstrip("rbfuRBFU")[0] != '"']
        assert not single, f"{name}: {single[:5]}"


def test_imports_are_at_the_top_stdlib_then_modal(modules):
    for name, text in modules.items():
        tree = ast.parse(text)
        assert isinstance(tree.body[0], ast.Expr)  # the docstring
        imports = [n for n in tree.body[1:] if isinstance(n, ast.Import)]
        assert tree.body[1 : 1 + len(imports)] == imports, name  # all at the top, one block
        names = [n.names[0].name for n in imports]
        assert names[-1] == "modal" and names[:-1] == sorted(names[:-1]), name
        assert all(m.split(".")[0] in sys.stdlib_module_names for m in names[:-1])


def test_the_runtime_is_above_the_app_under_one_banner(modules):
    for name, text in modules.items():
        runtime_at = text.index("# === Start-up logic: fleetform's runtime module")
        assert text.count("# === Start-up logic") == 1
        assert text.index("class VLLMProcess") > runtime_at
        assert text.index("app = modal.App(") > text.index("def boot(") > runtime_at, name
        assert text.index("VLLM_COMMAND = [") < runtime_at


def test_snapshot_runtime_only_in_snapshot_modules(modules):
    for name, text in modules.items():
        snapshot = "enable_memory_snapshot=True" in text
        assert snapshot == (name in ("snapshot.py", "all-knobs.py")), name
        for marker in ("GUARD_SOURCE = ", "def boot_for_snapshot(", "def after_restore(", "import secrets\n"):
            assert (marker in text) == snapshot, (name, marker)


# --- constants, named once and used by name ------------------------------------------------------------


def test_vllm_command_refers_to_the_constants(modules):
    for name, text in modules.items():
        tree = ast.parse(text)
        command = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "VLLM_COMMAND")
        code = [ast.unparse(e) for e in command.elts]
        assert code[2] == "MODEL_ID" and code[3:5] == ["'--revision'", "MODEL_REVISION"], name
        assert "*SERVED_MODEL_NAMES" in code and "str(VLLM_PORT)" in code, name
        loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        defined = {n.targets[0].id for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id.isupper()}
        assert defined - loads == set(), f"{name}: defined and never used: {defined - loads}"


def test_editing_a_constant_changes_what_runs(tmp_path, example_fleet):
    d = next(d for d in example_fleet.deployments if d.name == "llama-3-1-8b-fp8")
    text = render(d).text
    edits = {
        f"MODEL_REVISION = {py(d.model.revision)}": f"MODEL_REVISION = {py('b' * 40)}",
        "VLLM_PORT = 8000": "VLLM_PORT = 9000",
        'SERVED_MODEL_NAMES = ["RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "llm"]': 'SERVED_MODEL_NAMES = ["x"]',
        f"MODEL_ID = {py(d.model.id)}": 'MODEL_ID = "org/other"',
    }
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "edited.py"
    path.write_text(text)
    assert import_module(path).VLLM_COMMAND == [
        "vllm",
        "serve",
        "org/other",
        "--revision",
        "b" * 40,
        "--served-model-name",
        "x",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--uvicorn-log-level",
        "info",
        "--no-enforce-eager",
        "--tensor-parallel-size",
        "1",
    ]
    assert server_config(path).data.http_config.port == 9000


def test_a_constant_that_does_not_hold_its_tokens_is_a_render_error(tmp_path):
    d = deployment(tmp_path)
    bad = tuple(
        dataclasses.replace(a, names=(None, "MODEL_ID")) if a.tokens[0] == "--revision" else a for a in d.vllm_args
    )
    with pytest.raises(RenderError, match="MODEL_ID does not hold"):
        render(dataclasses.replace(d, vllm_args=bad))
    unknown = tuple(
        dataclasses.replace(a, names=(None, "NOPE")) if a.tokens[0] == "--revision" else a for a in d.vllm_args
    )
    with pytest.raises(RenderError, match="unknown constant 'NOPE'"):
        render(dataclasses.replace(d, vllm_args=unknown))


# --- the decorator: only what differs from Modal's defaults ----------------------------------------------


def server_keywords(text: str) -> dict[str, ast.expr]:
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Serve")
    [call] = cls.decorator_list
    assert ast.unparse(call.func) == "app.server"
    return {k.arg: k.value for k in call.keywords}


def test_the_default_table_is_modals():
    import modal

    signature = inspect.signature(modal.App.server)
    for key, default in render_mod.SERVER_DEFAULTS.items():
        assert signature.parameters[key].default == default, key


def test_decorator_arguments_differ_from_modals_defaults(modules):
    import modal

    defaults = {
        k: p.default
        for k, p in inspect.signature(modal.App.server).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for name, text in modules.items():
        keywords = server_keywords(text)
        for key, node in keywords.items():
            try:
                value = ast.literal_eval(node)
            except ValueError:
                continue  # a constant or object (image, volumes, VLLM_PORT): not a restated default
            if key != "min_containers":  # always written: the idle-cost choice
                assert value != defaults[key], f"{name}: {key}={value!r} is modal's default"
        assert {"name", "image", "gpu", "volumes", "port", "startup_timeout", "min_containers"} <= set(keywords)


def decorator_line(text: str, key: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith(f"{key}=")]
    return lines[0] if lines else None


@pytest.mark.parametrize(
    "extra,key,line",
    [
        ("", "min_containers", "min_containers=0,  # scales to zero when idle: no cost, but the next request waits"),
        ("scaling:\n  min_containers: 1\n", "min_containers", "min_containers=1,  # 1 container kept warm around"),
        ("scaling:\n  min_containers: 3\n", "min_containers", "min_containers=3,  # 3 containers kept warm around"),
        ("", "max_containers", None),
        ("scaling:\n  max_containers: 1\n", "max_containers", "max_containers=1,  # at most 1 container: a ceiling"),
        ("scaling:\n  max_containers: 4\n", "max_containers", "max_containers=4,  # at most 4 containers: a ceiling"),
        ("", "buffer_containers", None),
        (
            "scaling:\n  buffer_containers: 2\n",
            "buffer_containers",
            "buffer_containers=2,  # 2 spare containers started",
        ),
        ("", "max_concurrency", None),
        ("scaling:\n  max_concurrency: 64\n", "max_concurrency", "max_concurrency=64,  # hard cap of 64 requests a"),
        (
            "scaling:\n  target_concurrency: 12\n",
            "target_concurrency",
            "target_concurrency=12,  # another container starts when each has 12 requests in flight",
        ),
        ("", "scaledown_window", "scaledown_window=900,  # an idle container stops after 15 minutes"),
        (
            "scaling:\n  scaledown_window: 90\n",
            "scaledown_window",
            "scaledown_window=90,  # an idle container stops after 90 seconds",
        ),
        (
            "scaling:\n  scaledown_window: 1h\n",
            "scaledown_window",
            "scaledown_window=3600,  # an idle container stops after 1 hour",
        ),
        ("", "unauthenticated", None),
        ("auth:\n  mode: none\n", "unauthenticated", "unauthenticated=True,  # OPEN TO ANYONE: auth.mode is none"),
        ("", "secrets", None),
        ("", "routing_region", None),
        ("routing_region: ap-south\n", "routing_region", 'routing_region="ap-south",  # requests enter'),
        ("", "compute_region", None),
        (
            "region: [us-east-1, us-west-2]\n",
            "compute_region",
            'compute_region=["us-east-1", "us-west-2"],  # containers',
        ),
    ],
)
def test_each_decorator_comment_is_true_for_its_value(tmp_path, extra, key, line):
    text = render(deployment(tmp_path, with_yaml(extra))).text
    found = decorator_line(text, key)
    if line is None:
        assert found is None, found
    else:
        assert found is not None and found.startswith(line), found


def test_startup_timeout_comment_says_its_duration(tmp_path):
    text = render(deployment(tmp_path, with_yaml("scaling:\n  startup_timeout: 30m\n"))).text
    assert "STARTUP_TIMEOUT = 1800  # seconds: 30 minutes to download, load" in text


# --- auth modes, read from the real Modal objects ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,unauthenticated,secrets",
    [
        ("", False, []),
        ("auth:\n  mode: none\n", True, []),
        ("auth:\n  mode: api_key\n  api_key_secret: my-key\n", True, ["modal.Secret.from_name('my-key')"]),
    ],
)
def test_auth_mode_reaches_the_modal_server(tmp_path, extra, unauthenticated, secrets):
    path = tmp_path / "m.py"
    path.write_text(render(deployment(tmp_path, with_yaml(extra))).text)
    cfg = server_config(path)
    assert cfg.data.http_config.unauthenticated is unauthenticated
    assert cfg.secrets == secrets


# --- injection ---------------------------------------------------------------------------------------------------

HOSTILE = [
    '"); import os; ("',
    "'); import os; ('",
    '"""; import os; """',
    "'''; import os; '''",
    "\\",
    "end\\",
    '\\"',
    "a\nimport os\n",
    "a\r\nimport os",
    "a\rimport os",
    "nul\x00byte",
    "ls\u2028import os",
    "ps\u2029import os",
    "nel\x85x",
    "ff\x0cx",
    "tab\tx",
    "{{ 7 * 7 }}",
    "{% raw %}",
    "# comment",
    "\\N{BULLET}",
    "\\x41\\u0041",
    "smile \U0001f600",
    "\u202eevil",
    "\ud800",
]
EVIL = "".join(HOSTILE)


def hostile_deployment(tmp_path: Path, value: str, benign: bool = False) -> spec.Deployment:
    """A deployment whose every free string holds `value`: through dataclasses, so fields that
    validation would refuse today are tried too. Tokens of the vLLM command follow the constants."""
    d = deployment(
        tmp_path,
        MINIMAL.replace("  served_model_names", "  chat_template: plain\n  served_model_names")
        + "engine:\n  env:\n    SETTING: plain\n  extra_args: [--seed, '1']\nsecrets: [plain-secret]\n",
    )
    v = (lambda i: f"plain{i}") if benign else (lambda i: f"{value}{i}")
    swap = {d.model.id: v(1), d.model.revision: v(2), "m1": v(3), "m2": v(4), "plain": v(5), "1": v(6)}
    args = tuple(dataclasses.replace(a, tokens=tuple(swap.get(t, t) for t in a.tokens)) for a in d.vllm_args)
    return dataclasses.replace(
        d,
        name=v(7),
        description=v(8),
        vllm_args=args,
        secrets=(v(9),),
        routing_region=v(10),
        region=(v(11),),
        model=dataclasses.replace(d.model, id=v(1), revision=v(2), served_model_names=(v(3), v(4))),
        engine=dataclasses.replace(d.engine, env=(("SETTING", v(12)),)),
        image=dataclasses.replace(d.image, python_version=v(13), pip=(v(14),)),
        cache=dataclasses.replace(d.cache, huggingface_volume=v(15), vllm_volume=v(16)),
    )


def shape(source: str) -> str:
    """The AST with every constant blanked: the structure of the code, not its data."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
    return ast.dump(tree)


@pytest.mark.parametrize("value", [*HOSTILE, EVIL], ids=lambda v: ascii(v)[:30])
def test_hostile_strings_in_any_field_only_ever_become_string_constants(tmp_path, value):
    hostile = render(hostile_deployment(tmp_path, value)).text
    benign = render(hostile_deployment(tmp_path, value, benign=True)).text
    assert shape(hostile) == shape(benign)
    tree = ast.parse(hostile)
    constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for i in range(1, 17):
        if i != 8:
            assert f"{value}{i}" in constants, i
    assert f"{value}8" not in hostile  # the description never reaches the module (nor its hash)
    assert f"{value}7: {value}1 on " in ast.get_docstring(tree, clean=False)  # name and model id in the docstring
    after_docstring = [text.splitlines()[ast.parse(text).body[0].end_lineno :] for text in (hostile, benign)]
    assert len(after_docstring[0]) == len(after_docstring[1])  # only the docstring may have more lines


def test_hostile_module_imports_and_runs_nothing(tmp_path):
    d = hostile_deployment(tmp_path, EVIL)
    d = dataclasses.replace(
        d,
        name="demo",
        image=dataclasses.replace(d.image, python_version="3.12"),
        routing_region="us-east",
        region=None,
        cache=dataclasses.replace(d.cache, huggingface_volume="hf", vllm_volume="vc"),
    )
    path = tmp_path / "hostile.py"
    path.write_text(render(d).text, encoding="utf-8")
    module = import_module(path)
    assert f"{EVIL}1" in module.VLLM_COMMAND and module.MODEL_ID == f"{EVIL}1"
    assert module.__doc__.startswith(f"demo: {EVIL}1 on 1 x L4")


def test_literals_round_trip_and_are_double_quoted():
    for value in [*HOSTILE, EVIL, "", "it's", 'say "hi"']:
        literal = py(value)
        assert literal.startswith('"') and ast.literal_eval(literal) == value
        doc = py(value, docstring=True)
        assert doc.startswith('"""') and ast.literal_eval(doc) == value
        assert "\r" not in literal and "\n" not in literal and "\x00" not in literal and "\u2028" not in doc
    assert py(["a", 1, 2.5, None, True, {"k": "v"}]) == '["a", 1, 2.5, None, True, {"k": "v"}]'


# --- determinism --------------------------------------------------------------------------------------------------


def test_snapshot_and_all_knobs_render_the_same_bytes_under_any_hash_seed(tmp_path):
    knobs = REPO / "tests" / "fixtures" / "all-knobs.yaml"
    outs = []
    for seed in ("1", "4242"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "renderer", "render", str(knobs), "--out", str(out)],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
        outs.append((out / "all-knobs.py").read_bytes())
    here = resolve(load_fleet([str(knobs)])).deployments[0]
    assert outs[0] == outs[1] == render(here).text.encode()
    assert re.search(r'^# Generated by fleetform \S+ from "tests/fixtures/all-knobs.yaml"\.', outs[0].decode())
