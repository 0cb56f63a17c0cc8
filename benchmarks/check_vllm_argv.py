#!/usr/bin/env python3
"""Parse every command line fleetform builds with the installed vLLM's own `vllm serve` parser.

Run where vLLM is installed (the GPU machine), from the repository root:

    python3 benchmarks/check_vllm_argv.py [OUT_DIR]

For each example deployment, plus variants that exercise every optional flag fleetform can emit
(fast_boot, snapshot, LoRA, every engine knob), the argv is parsed by vLLM's real argument parser.
It prints accepted/rejected per command line and writes the parser's option strings to
OUT_DIR/vllm-serve-options.txt, which the offline test suite keeps as a fixture
(tests/fixtures/vllm-<version>-serve-options.txt).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def serve_parser():
    """vLLM's `serve` subcommand parser, built the way `vllm` itself builds it."""
    import vllm.entrypoints.cli.serve as serve_mod

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older layouts
        from vllm.utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    cmds = serve_mod.cmd_init()
    for cmd in cmds:
        cmd.subparser_init(sub)
    return parser, cmds[0]


VARIANTS = {
    "all-knobs": """
name: all-knobs
model:
  id: org/model
  revision: {rev}
  served_model_names: [a, b]
  dtype: bfloat16
  max_model_len: 8192
  tokenizer: org/tok
  chat_template: "{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}"
  quantization: fp8
  quantize_on_load: true
  max_lora_rank: 64
  lora_adapters:
    - {{name: sql, id: org/sql-lora, revision: {rev}}}
gpu: {{type: H100, count: 2}}
engine:
  fast_boot: true
  cold_start: snapshot
  gpu_memory_utilization: 0.85
  max_num_seqs: 128
  enable_prefix_caching: false
  kv_cache_dtype: fp8
""",
}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from renderer.load import load_fleet
    from renderer.resolve import resolve
    import vllm

    argvs = {d.name: list(d.argv) for d in resolve(load_fleet(["deployments"])).deployments}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in VARIANTS.items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text.format(rev="a" * 40))
            fleet = resolve(load_fleet([str(path)]))
            assert fleet.ok, fleet.diagnostics
            argvs[name] = list(fleet.deployments[0].argv)

    parser, cmd = serve_parser()
    failures = 0
    for name, argv in argvs.items():
        assert argv[:2] == ["vllm", "serve"]
        try:
            args = parser.parse_args(argv[1:])
            if hasattr(cmd, "validate"):
                cmd.validate(args)
            print(f"accepted  {name}: {' '.join(argv)}")
        except SystemExit as exc:
            failures += 1
            print(f"REJECTED  {name} (exit {exc.code}): {' '.join(argv)}")
        except Exception as exc:  # noqa: BLE001 - report whatever vLLM raises
            failures += 1
            print(f"REJECTED  {name}: {type(exc).__name__}: {exc}")
    options = sorted({opt for action in _serve_actions(parser) for opt in action.option_strings})
    (out / "vllm-serve-options.txt").write_text(
        f"# `vllm serve` option strings of vLLM {vllm.__version__}, read from its parser\n" + "\n".join(options) + "\n")
    print(f"{len(options)} options written to {out / 'vllm-serve-options.txt'}; {failures} rejected")
    return 1 if failures else 0


def _serve_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]._actions
    return []


if __name__ == "__main__":
    raise SystemExit(main())
