"""The semantic rules (renderer/config/rules.py), each through the real CLI or on a resolved fleet:
what they refuse, what they let through, and that every message carries a hint."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
from test_sizing import REVISION, model_dir

from renderer import sizing
from renderer.config import rules
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import REPO, run_cli

CASES = sorted((Path(__file__).parent / "cases" / "invalid").glob("*.yaml"))
HEAD = """\
name: {name}
model:
  id: Qwen/Qwen2.5-7B-Instruct
  revision: a09a35458c702b33eeacc393d103063234e8bc28
"""


def deployment(tmp_path: Path, body: str, name: str = "demo") -> Path:
    path = tmp_path / "d.yaml"
    path.write_text(HEAD.format(name=name) + body)
    return path


def validate(tmp_path: Path, body: str, name: str = "demo", **env: str) -> tuple[int, list[dict]]:
    result = run_cli("validate", str(deployment(tmp_path, body, name)), "--format", "json", env=env or None)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)["diagnostics"]


def codes(diags: list[dict]) -> list[str]:
    return [d["code"] for d in diags]


# --- every diagnostic has a hint -------------------------------------------------------------------------


def test_every_diagnostic_of_every_invalid_case_has_a_hint():
    missing = []
    for case in CASES:
        result = run_cli("validate", str(case.relative_to(REPO)), "--format", "json")
        for d in json.loads(result.stdout)["diagnostics"]:
            if not d["hint"] and not d["code"].startswith("yaml-"):  # the loader's own (load.py)
                missing.append((case.name, d["code"], d["message"][:60]))
    assert missing == []


# --- engine.env --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("VLLM_API_KEY", '""'),
        ("VLLM_SERVER_DEV_MODE", '"1"'),
        ("HF_TOKEN", '""'),
        ("PYTHONPATH", "/opt"),
        ("LD_PRELOAD", "/x.so"),
        ("FLEETFORM_ADMIN_TOKEN", '""'),
    ],
)
def test_env_may_not_set_what_fleetform_or_a_secret_owns(tmp_path, key, value):
    rc, diags = validate(tmp_path, f"gpu:\n  type: H100\nengine:\n  env:\n    {key}: {value}\n")
    assert rc == 1
    [d] = diags
    assert (d["code"], d["path"], d["line"]) == ("env-owned", f"engine.env.{key}", 9)
    assert d["hint"] == f"remove {key} from engine.env"


def test_a_literal_secret_in_an_owned_variable_is_one_error_the_credential(tmp_path):
    """`HF_TOKEN: hf_...` is one problem: the token in the YAML, not also the owned variable."""
    rc, diags = validate(tmp_path, "gpu:\n  type: H100\nengine:\n  env:\n    FLEETFORM_ADMIN_TOKEN: x\n")
    assert rc == 1
    assert [(d["code"], d["path"], d["line"]) for d in diags] == [
        ("literal-credential", "engine.env.FLEETFORM_ADMIN_TOKEN", 9)
    ]


def test_env_of_other_names_passes(tmp_path):
    rc, diags = validate(tmp_path, "gpu:\n  type: H100\nengine:\n  env:\n    VLLM_LOGGING_LEVEL: DEBUG\n")
    assert (rc, diags) == (0, [])


def test_owned_env_covers_every_variable_fleetform_sets(tmp_path):
    """Where fleetform sets a variable of the vLLM process: the resolved process env (snapshot mode),
    the runtime's guard, and the rendered image's `.env({...})`."""
    from renderer.codegen.render import render
    from renderer.codegen.runtime import install_guard

    path = deployment(tmp_path, "gpu:\n  type: H100\nengine:\n  cold_start: snapshot\n")
    fleet = resolve(load_fleet([str(path)]))
    assert fleet.ok, fleet.diagnostics
    d = fleet.deployments[0]
    set_by_fleetform = set(d.process_env) - set(dict(d.engine.env))
    set_by_fleetform |= set(install_guard({}))
    module = ast.parse(render(d).text)
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "env" and node.args:
            set_by_fleetform |= set(ast.literal_eval(node.args[0]))
    assert {
        "VLLM_SERVER_DEV_MODE",
        "PYTHONPATH",
        "FLEETFORM_ADMIN_TOKEN",
        "HF_XET_HIGH_PERFORMANCE",
    } <= set_by_fleetform
    assert set_by_fleetform <= set(rules.OWNED_ENV)
    assert {"VLLM_API_KEY", "HF_TOKEN", "LD_PRELOAD"} <= set(rules.OWNED_ENV)  # what Secrets and the loader own


# --- names that shadow a module ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["secrets", "json", "types", "typing", "yaml", "modal", "grpclib", "vllm"])
def test_a_name_that_shadows_a_module_is_refused(tmp_path, name):
    rc, diags = validate(tmp_path, "gpu:\n  type: H100\n", name=name)
    assert rc == 1
    assert [(d["code"], d["path"], d["line"]) for d in diags] == [("module-name", "name", 1)]


def test_the_shadowed_set_is_derived_not_listed():
    for module in sorted(sys.stdlib_module_names)[:50]:
        if module.isidentifier() and module.islower():
            assert rules.shadowed_module(module) is not None, module
    assert rules.shadowed_module("llama-8b") is None  # not an importable name
    assert rules.shadowed_module("demo") is None
    assert rules.shadowed_module("mypkg", ["mypkg"]) == "a package installed in the image"


# --- image.pip -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req", ["vllm==0.9.0", "vLLM==0.26.0", "vllm[audio]==0.26.0", "torch==2.1.0", "Torch==2.1.0", "torchvision==0.20.0"]
)
def test_pip_may_not_pin_vllm_or_torch_again(tmp_path, req):
    rc, diags = validate(tmp_path, f'gpu:\n  type: H100\nimage:\n  pip: ["{req}"]\n')
    assert rc == 1 and codes(diags) == ["pip-vllm"]


def test_pip_that_does_not_parse_is_refused_and_others_pass(tmp_path):
    rc, diags = validate(tmp_path, 'gpu:\n  type: H100\nimage:\n  pip: ["ok==1!"]\n')
    assert rc == 1 and codes(diags) == ["pip-requirement"]
    rc, diags = validate(tmp_path, 'gpu:\n  type: H100\nimage:\n  pip: ["flashinfer-python==0.2.5", "vllm-x==1"]\n')
    assert (rc, diags) == (0, [])


# --- bfloat16 below compute capability 8.0 ----------------------------------------------------------------


def test_bf16_on_t4_is_refused_for_the_type_and_each_fallback(tmp_path):
    rc, diags = validate(tmp_path, "  dtype: bfloat16\ngpu:\n  type: T4\n  fallbacks: [L4, T4!]\n")
    assert rc == 1
    assert [(d["code"], d["path"]) for d in diags] == [
        ("dtype-hardware", "gpu.type"),
        ("dtype-hardware", "gpu.fallbacks[1]"),
    ]
    assert diags[0]["hint"].startswith("set model.dtype: float16")


def test_float16_on_t4_and_bf16_on_ampere_pass(tmp_path):
    assert validate(tmp_path, "  dtype: float16\ngpu:\n  type: T4\n") == (0, [])
    assert validate(tmp_path, "  dtype: bfloat16\ngpu:\n  type: A10\n") == (0, [])


BF16_MODEL = """\
name: llama
model:
  id: meta-llama/Llama-3.1-8B-Instruct
  revision: {revision}
  max_model_len: 8192
{dtype}gpu:
  type: T4
  count: 2
"""


def test_a_cached_bf16_checkpoint_with_dtype_unset_is_refused_on_t4(tmp_path):
    hub = tmp_path / "hf" / "hub"
    model_dir(hub / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / REVISION)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub)}
    path = tmp_path / "llama.yaml"
    for dtype, want in (("", ["dtype-hardware"]), ("  dtype: auto\n", ["dtype-hardware"]), ("  dtype: float16\n", [])):
        path.write_text(BF16_MODEL.format(revision=REVISION, dtype=dtype))
        result = run_cli("validate", str(path), "--format", "json", env=env)
        got = json.loads(result.stdout)["diagnostics"]
        assert codes(got) == want, (dtype, got)
        if want:
            assert "the checkpoint's dtype (config.json) is bfloat16" in got[0]["message"]
    # not cached: nothing to know, nothing refused
    path.write_text(BF16_MODEL.format(revision="b" * 40, dtype=""))
    assert run_cli("validate", str(path), env=env).returncode == 0


def test_the_sizing_advisor_never_picks_a_gpu_that_cannot_run_bf16():
    from test_sizing import shape as config_shape

    shape = config_shape("llama-3.1-8b")
    assert shape.torch_dtype == "bfloat16"
    options = sizing.rank_options(shape, 1e9, 1024, dtype="bfloat16")
    t4 = [o for o in options if o.gpu == "T4"]
    assert t4 and all(not o.fits and "bfloat16" in o.excluded for o in t4)
    # a small model T4 would otherwise be cheapest for: not chosen for bf16, chosen for float16
    assert sizing.cheapest(sizing.rank_options(shape, 1e9, 1024, dtype="float16")).gpu == "T4"
    assert sizing.cheapest(options).gpu != "T4"


# --- the remaining rules' messages -----------------------------------------------------------------------------


def test_tensor_parallel_equal_to_count_is_quiet(tmp_path):
    assert validate(tmp_path, "gpu:\n  type: H100\n  count: 2\n  tensor_parallel_size: 2\n") == (0, [])


def test_weights_fit_warning_and_its_threshold(tmp_path):
    rc, diags = validate(tmp_path, "  parameters_b: 70\ngpu:\n  type: H100\n")
    assert rc == 0
    [d] = diags
    assert (d["code"], d["severity"], d["path"]) == ("weights-fit", "warning", "gpu.type")
    # unset gpu_memory_utilization: vLLM 0.26.0's own default, 0.92, from the shipped option list
    assert (
        d["message"] == "70B parameters (none) need about 130 GiB of weights; 1 x H100 at 0.92 utilization hold 74 GiB"
    )
    assert validate(tmp_path, "  parameters_b: 70\ngpu:\n  type: H100\n  count: 2\n") == (0, [])
    # the memory model is the sizing advisor's: fp8 halves the bytes
    assert validate(tmp_path, "  parameters_b: 70\n  quantization: fp8\ngpu:\n  type: H100\n") == (0, [])


def test_weights_fit_uses_the_sizing_memory_model():
    assert sizing.parameter_weight_bytes(1e9, "awq", None) == 0.5625e9
    assert sizing.parameter_weight_bytes(1e9, "none", "float32") == 4e9
    assert sizing.parameter_weight_bytes(1e9, "none", "bfloat16") == 2e9


def test_tokenizer_becomes_the_tokenizer_flag(tmp_path):
    path = deployment(tmp_path, "  tokenizer: org/tok\ngpu:\n  type: H100\n")
    argv = resolve(load_fleet([str(path)])).deployments[0].argv
    i = argv.index("--tokenizer")
    assert argv[i + 1] == "org/tok"


def test_long_values_are_cut_in_messages(tmp_path):
    big = "a" * 400_000  # the loader refuses files over 1 MiB
    path = deployment(tmp_path, f"gpu:\n  type: H100\nengine:\n  extra_args: [{big}]\n", name="Bad" + "x" * 400_000)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert len(result.stderr) < 2000, len(result.stderr)
    assert "characters)" in result.stderr


def test_shown_cuts_with_the_length():
    assert rules.shown("abc") == "'abc'"
    cut = rules.shown("x" * 1000)
    assert len(cut) < rules.SHOWN_CHARS + 30 and cut.endswith("(1000 characters)")


def test_long_keys_are_cut_in_paths_and_messages(tmp_path):
    big = "Y" * 300_000
    path = deployment(
        tmp_path,
        f"gpu:\n  type: H100\nengine:\n  env:\n    ? {big}\n    : v\nenvironments:\n  ? x{big.lower()}\n  : {{}}\n",
    )
    result = run_cli("validate", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr) < 2000, len(result.stderr)
    assert f"{path}:9:7: error: engine.env.YYY" in result.stderr  # at the key's own line


def test_a_cached_model_that_does_not_fit_its_gpu_is_refused_and_an_uncached_one_is_not_checked(tmp_path):
    hub = tmp_path / "hf" / "hub"
    model_dir(hub / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / REVISION)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(hub)}
    path = tmp_path / "llama.yaml"
    body = "name: llama\nmodel:\n  id: meta-llama/Llama-3.1-8B-Instruct\n  revision: {rev}\ngpu:\n  type: L4\n"
    path.write_text(body.format(rev=REVISION))  # no max_model_len: 131072 tokens of KV cache on 24 GB
    result = run_cli("validate", str(path), "--format", "json", env=env)
    [d] = json.loads(result.stdout)["diagnostics"]
    assert (result.returncode, d["code"], d["path"]) == (1, "model-fit", "gpu.type")
    assert "do not fit 1 x L4" in d["message"]
    path.write_text(body.format(rev="b" * 40))  # another commit, not in the cache
    assert run_cli("validate", str(path), env=env).returncode == 0


def test_a_negative_number_after_an_option_is_its_value(tmp_path):
    assert validate(
        tmp_path, 'gpu:\n  type: H100\nengine:\n  extra_args: [--seed, "-1", --max-num-partial-prefills, "2"]\n'
    ) == (0, [])


def test_a_double_dash_and_a_one_letter_option_with_its_value_attached(tmp_path):
    rc, diags = validate(tmp_path, 'gpu:\n  type: H100\nengine:\n  extra_args: ["-qfp8", "--"]\n')
    assert rc == 1
    assert [(d["path"], d["message"]) for d in diags] == [
        ("engine.extra_args[0]", "-qfp8 is managed by fleetform (vLLM reads it as -q)"),
        ("engine.extra_args[1]", "`--` would end vLLM's options"),
    ]


def test_max_num_batched_tokens_must_hold_a_token_of_every_sequence(tmp_path):
    body = "gpu:\n  type: H100\nengine:\n  max_num_seqs: 256\n  max_num_batched_tokens: {tokens}\n"
    code, diags = validate(tmp_path, body.format(tokens=128))
    assert code == 1 and codes(diags) == ["batched-tokens"]
    assert diags[0]["path"] == "engine.max_num_batched_tokens" and "below max_num_seqs 256" in diags[0]["message"]
    assert validate(tmp_path, body.format(tokens=256)) == (0, [])
