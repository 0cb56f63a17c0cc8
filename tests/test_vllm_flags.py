"""Every flag fleetform puts on a `vllm serve` command line exists in the pinned vLLM.

The fixture lists the option strings of vLLM 0.26.0's own `serve` parser, written by
`benchmarks/check_vllm_argv.py` on a machine with vLLM installed (where that script also parses
each full command line with the real parser). This test needs no vLLM: it checks the command
lines of every example and of a deployment that turns on every optional flag.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve

FIXTURE = Path(__file__).parent / "fixtures" / "vllm-0.26.0-serve-options.txt"
ALL_KNOBS = Path(__file__).parent / "fixtures" / "all-knobs.yaml"


def vllm_options() -> set[str]:
    lines = FIXTURE.read_text().splitlines()
    assert lines[0].startswith("# `vllm serve` option strings of vLLM 0.26.0")
    return {l for l in lines[1:] if l}


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
    assert {"--enable-sleep-mode", "--middleware", "--lora-modules", "--quantization", "--chat-template",
            "--no-enable-prefix-caching", "--enforce-eager", "--no-enforce-eager", "--kv-cache-dtype"} <= emitted
    unknown = sorted(emitted - options)
    assert unknown == [], f"flags the pinned vLLM does not accept: {unknown}"


def test_a_misspelled_flag_would_be_caught():
    assert "--tensor-paralel-size" not in vllm_options() and "--tensor-parallel-size" in vllm_options()


@pytest.mark.parametrize("flag", ["--served-model-name", "--revision", "--port", "--host"])
def test_core_flags_present(flag):
    assert flag in vllm_options()
