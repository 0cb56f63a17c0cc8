"""Every flag fleetform puts on a `vllm serve` command line exists in the pinned vLLM.

The fixture lists the option strings of vLLM 0.26.0's own `serve` parser, written by
`benchmarks/check_vllm_argv.py` on a machine with vLLM installed (where that script also parses
each full command line with the real parser). This test needs no vLLM: it checks the command
lines of every example and of a deployment that turns on every optional flag.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

from conftest import REPO

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-0.26.0-serve-options.txt"
ALL_KNOBS = Path(__file__).parent / "fixtures" / "all-knobs.yaml"


def vllm_options() -> set[str]:
    lines = FIXTURE.read_text().splitlines()
    assert lines[0].startswith("# `vllm serve` option strings of vLLM 0.26.0")
    return {line for line in lines[1:] if line}


def command_lines(tmp_path: Path) -> dict[str, list[str]]:
    out = {d.name: list(d.argv) for d in resolve(load_fleet([str(REPO / "deployments")])).deployments}
    fleet = resolve(load_fleet([str(ALL_KNOBS)]))
    assert fleet.ok, fleet.diagnostics
    out["all-knobs"] = list(fleet.deployments[0].argv)
    return out


def test_examples_pin_the_vllm_the_fixture_was_read_from():
    for d in resolve(load_fleet([str(REPO / "deployments")])).deployments:
        assert d.engine.vllm_version == "0.26.0"


def test_every_flag_exists_in_vllm(tmp_path):
    options = vllm_options()
    assert len(options) > 300
    lines = command_lines(tmp_path)
    emitted = {t for argv in lines.values() for t in argv if t.startswith("-")}
    # the all-knobs deployment really exercises every optional flag fleetform knows
    assert {
        "--enable-sleep-mode",
        "--middleware",
        "--lora-modules",
        "--quantization",
        "--chat-template",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--no-enforce-eager",
        "--kv-cache-dtype",
        "--max-num-batched-tokens",
    } <= emitted
    unknown = sorted(emitted - options)
    assert unknown == [], f"flags the pinned vLLM does not accept: {unknown}"


def test_a_misspelled_flag_would_be_caught():
    assert "--tensor-paralel-size" not in vllm_options() and "--tensor-parallel-size" in vllm_options()


@pytest.mark.parametrize("flag", ["--served-model-name", "--revision", "--port", "--host"])
def test_core_flags_present(flag):
    assert flag in vllm_options()


# --- the argv table, the managed set and the shipped option list ------------------------------------------

from renderer.config import rules, vllm_args  # noqa: E402
from renderer.config import schema as S  # noqa: E402
from renderer.config.vllm_args import VllmOptions, load_options, managed_flags  # noqa: E402


def test_the_pinned_vllm_option_list_ships_in_the_package():
    options = load_options("0.26.0")
    assert options is not None and len(options.by_flag) > 300
    assert options.complete  # the full dump: destinations, values, choices and defaults
    # the same parser's option strings as the fixture, less argparse's own --help
    assert set(options.by_flag) == vllm_options() - {"-h", "--help"}
    assert vllm_args.OPTIONS_DIR.is_relative_to(Path(vllm_args.__file__).parent)
    assert load_options("0.7.0") is None


def _specs(tmp_path):
    """Resolved deployments that, together, take every branch of every table row."""
    out = list(resolve(load_fleet([str(REPO / "deployments")])).deployments)
    out += resolve(load_fleet([str(ALL_KNOBS)])).deployments
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        ALL_KNOBS.read_text()
        .replace("fast_boot: true", "fast_boot: false")
        .replace("enable_prefix_caching: false", "enable_prefix_caching: true")
    )
    out += resolve(load_fleet([str(plain)])).deployments
    return out


def test_each_row_writes_only_the_flags_it_declares(tmp_path):
    written = set()
    for d in _specs(tmp_path):
        for row in vllm_args.ARGS:
            for arg in row.build(d.model, d.gpu, d.engine):
                flags = {t for t in arg.tokens if t.startswith("-")}
                assert flags <= set(row.flags), (row.flags, arg.tokens)
                assert not arg.names or len(arg.names) == len(arg.tokens)
                written |= flags
    assert written == {f for row in vllm_args.ARGS for f in row.flags} - {"--model"}  # the model is positional


def test_managed_set_is_derived_from_the_table_with_every_spelling():
    managed = managed_flags(load_options("0.26.0"))
    for row in vllm_args.ARGS:
        assert set(row.flags) <= set(managed)
    # negations of what the table writes are managed as well, though no row writes them
    assert {"--no-enable-sleep-mode", "--no-enable-lora"} <= set(managed)
    assert "--no-enable-sleep-mode" not in {f for row in vllm_args.ARGS for f in row.flags}
    for flag in ("--api-key", "--hf-token", "--root-path", "--ssl-keyfile", "--config", "--uds", "--headless"):
        assert managed[flag].field is None and managed[flag].reason
    # short aliases belong to their option: -tp is --tensor-parallel-size, -q is --quantization
    assert managed["-tp"].field == "gpu.tensor_parallel_size" and managed["-q"].field == "model.quantization"


def test_the_guard_middleware_is_the_runtimes():
    from renderer.codegen import runtime

    assert vllm_args.GUARD_MIDDLEWARE == runtime.GUARD_MIDDLEWARE


def test_every_breaking_option_exists_in_the_pinned_vllm():
    options = load_options("0.26.0")
    assert set(vllm_args.BREAKING) <= set(options.by_dest), set(vllm_args.BREAKING) - set(options.by_dest)


@pytest.mark.parametrize(
    "arg",
    [
        "--api_key=x",
        "--API-KEY",
        "--api-ke",
        "--hf_token",
        "--enable_sleep_mode",
        "--host",
        "--port=1",
        "--middleware",
        "--served_model_name",
        "--root-path",
        "--root_path=/x",
        "--no-enable-prefix-caching",
        "--no-enable-sleep-mode",
        "--enable-lora",
        "--tensor_parallel_size",
        "--ssl-certfile",
        "--config=x.yaml",
        "--uds",
        "-tp",
        "-q",
        "-qfp8",
        "-tp=2",
        "--help",
        "-h",
        "--kv-cache-dtype=int3",
    ],
)
def test_managed_and_unknown_spellings_are_refused(arg):
    problems = rules.extra_arg_problems([arg], load_options("0.26.0"))
    assert len(problems) == 1 and problems[0].index == 0 and problems[0].hint


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "1"],
        ["--max-num-partial-prefills=2"],
        ["--enable-chunked-prefill"],
        ["--no-enable-chunked-prefill"],
        ["--max_num_partial_prefills", "2"],
        ["--override-generation-config", '{"temperature": 0.2}'],
        ["--seed", "-1"],
        ["-dp", "2"],
        ["--ignore-patterns", "a", "b"],
        ["--allowed-origins", '["a"]'],
        ["--seed=3"],
    ],
)
def test_real_options_pass(args):
    assert rules.extra_arg_problems(args, load_options("0.26.0")) == []


def test_abbreviations_unknown_flags_and_stray_values():
    options = load_options("0.26.0")
    [p] = rules.extra_arg_problems(["--tensor-paralel-size"], options)
    assert p.hint == 'did you mean "--tensor-parallel-size"?'
    [p] = rules.extra_arg_problems(["--max-num-batched", "8"], options)
    assert "abbreviates --max-num-batched-tokens" in p.message
    [p] = rules.extra_arg_problems(["stray"], options)
    assert "no option before it" in p.message


DUMP = {
    "vllm_version": "9.9.9",
    "generated_by": "test",
    "options": [
        {
            "dest": "gpu_memory_utilization",
            "flags": ["--gpu-memory-utilization"],
            "takes_value": True,
            "nargs": None,
            "default": 0.5,
            "choices": None,
            "type": "float",
        },
        {
            "dest": "tensor_parallel_size",
            "flags": ["--tensor-parallel-size", "-tp"],
            "takes_value": True,
            "nargs": None,
            "default": 1,
            "choices": None,
            "type": "int",
        },
        {
            "dest": "enforce_eager",
            "flags": ["--enforce-eager", "--no-enforce-eager"],
            "takes_value": False,
            "nargs": 0,
            "default": False,
            "choices": None,
            "type": None,
        },
        {
            "dest": "kv_cache_dtype",
            "flags": ["--kv-cache-dtype"],
            "takes_value": True,
            "nargs": None,
            "default": "auto",
            "choices": ["auto", "fp8"],
            "type": "str",
        },
        {
            "dest": "dtype",
            "flags": ["--dtype"],
            "takes_value": True,
            "nargs": None,
            "default": "auto",
            "choices": ["auto", "half", "float16", "bfloat16"],
            "type": "str",
        },
        {
            "dest": "seed",
            "flags": ["--seed", "-s"],
            "takes_value": True,
            "nargs": None,
            "default": 0,
            "choices": None,
            "type": "int",
        },
        {
            "dest": "tokenizer_mode",
            "flags": ["--tokenizer-mode"],
            "takes_value": True,
            "nargs": None,
            "default": "auto",
            "choices": ["auto", "slow"],
            "type": "str",
        },
        {
            "dest": "trust_remote_code",
            "flags": ["--trust-remote-code"],
            "takes_value": False,
            "nargs": 0,
            "default": False,
            "choices": None,
            "type": None,
        },
    ],
}


@pytest.fixture
def dumped(tmp_path, monkeypatch):
    """A full dump (the format vLLM's parser is read into) for a release 9.9.9, shipped beside the real one."""
    folder = tmp_path / "vllm"
    folder.mkdir()
    (folder / "serve-options-9.9.9.json").write_text(json.dumps(DUMP))
    monkeypatch.setattr(vllm_args, "OPTIONS_DIR", folder)
    load_options.cache_clear()
    yield load_options("9.9.9")
    load_options.cache_clear()


def test_a_full_dump_knows_aliases_values_and_choices(dumped: VllmOptions):
    assert dumped.complete and dumped.default("gpu_memory_utilization") == 0.5
    managed = managed_flags(dumped)
    assert "-tp" in managed and "--no-enforce-eager" in managed  # a short alias of a managed option
    check = rules.extra_arg_problems
    assert [p.message for p in check(["-tp", "2"], dumped)] == ["-tp is managed by fleetform"]
    assert check(["-s", "3", "--tokenizer-mode=slow", "--trust-remote-code"], dumped) == []
    [p] = check(["--tokenizer-mode=fast"], dumped)
    assert p.hint == "choose one of auto, slow"
    [p] = check(["--tokenizer-mode", "fast"], dumped)
    assert p.hint == "choose one of auto, slow" and p.index == 1
    [p] = check(["--trust-remote-code=yes"], dumped)
    assert "takes no value" in p.message
    [p] = check(["--trust-remote-code", "yes"], dumped)
    assert "no option before it" in p.message


def test_values_fleetform_passes_are_checked_against_vllms_choices(dumped, tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        "name: demo\nmodel:\n  id: a/b\n  revision: " + "a" * 40 + "\n  dtype: float32\n"
        "gpu:\n  type: H100\nengine:\n  vllm_version: 9.9.9\n  kv_cache_dtype: fp8_e5m2\n"
    )
    fleet = resolve(load_fleet([str(path)]))
    got = [(d.code, d.path, d.hint) for d in fleet.diagnostics]
    assert got == [
        ("vllm-choice", ("model", "dtype"), "choose one of auto, half, float16, bfloat16"),
        ("vllm-choice", ("engine", "kv_cache_dtype"), "choose one of auto, fp8"),
    ]


def test_the_fit_rules_take_vllms_default_utilization_from_the_dump(dumped, tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        "name: demo\nmodel:\n  id: a/b\n  revision: " + "a" * 40 + "\n  parameters_b: 30\n"
        "gpu:\n  type: H100\nengine:\n  vllm_version: 9.9.9\n"
    )
    [d] = resolve(load_fleet([str(path)])).diagnostics
    assert d.code == "weights-fit" and "at 0.5 utilization hold 40 GiB" in d.message


_UNSET = re.compile(r"Unset: vLLM's (?:default \(([^)]*)\)|`([^`]*)`|(\d[\d.]*)\.)")


def _as_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_schema_descriptions_state_the_pinned_vllms_defaults():
    """What a description says vLLM does when a field is unset is what the shipped option list says."""
    options = load_options(load_schema_default("engine", "vllm_version"))
    checked = {}
    for row in vllm_args.ARGS:
        if not row.field:
            continue
        section, prop = row.field.split(".")
        desc = S.load_schema(S.DEPLOYMENT_SCHEMA)["$defs"][section]["properties"][prop].get("description", "")
        m = _UNSET.search(desc)
        if m:
            stated = _as_value(next(g for g in m.groups() if g is not None))
            checked[row.field] = stated
            assert options.by_flag[row.flags[0]].default == stated, (row.field, stated)
    assert {"engine.gpu_memory_utilization", "model.dtype", "model.max_lora_rank", "engine.kv_cache_dtype"} <= set(
        checked
    )


def load_schema_default(section: str, prop: str):
    return S.load_schema(S.DEPLOYMENT_SCHEMA)["$defs"][section]["properties"][prop]["default"]


def test_schema_enums_are_among_vllms_choices():
    """Values fleetform passes for an enum field are ones the pinned vLLM accepts."""
    options = load_options(load_schema_default("engine", "vllm_version"))
    for field, flag in (
        ("model.dtype", "--dtype"),
        ("engine.kv_cache_dtype", "--kv-cache-dtype"),
        ("model.max_lora_rank", "--max-lora-rank"),
    ):
        section, prop = field.split(".")
        enum = S.load_schema(S.DEPLOYMENT_SCHEMA)["$defs"][section]["properties"][prop]["enum"]
        assert {str(v) for v in enum} <= set(options.by_flag[flag].choices), field


def test_vllm_version_default_has_a_shipped_option_list():
    assert load_options(load_schema_default("engine", "vllm_version")) is not None
