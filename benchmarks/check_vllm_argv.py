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


# Turns on every optional flag fleetform can emit (shared with tests/test_vllm_flags.py).
VARIANTS = [Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "all-knobs.yaml"]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from renderer.config.load import load_fleet
    from renderer.config.resolve import resolve
    import vllm

    argvs = {d.name: list(d.argv) for d in resolve(load_fleet(["deployments"])).deployments}
    for path in VARIANTS:
        fleet = resolve(load_fleet([str(path)]))
        assert fleet.ok, fleet.diagnostics
        argvs[fleet.deployments[0].name] = list(fleet.deployments[0].argv)

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
