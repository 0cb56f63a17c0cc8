#!/usr/bin/env python3
"""Parse every command line fleetform builds with the installed vLLM's own `vllm serve` parser.

Run where vLLM is installed (the GPU machine), from the repository root:

    python3 benchmarks/check_vllm_argv.py [OUT_DIR]

For each example deployment, plus variants that exercise every optional flag fleetform can emit
(fast_boot, snapshot, LoRA, every engine knob), the argv is parsed by vLLM's real argument parser.
It prints accepted/rejected per command line and writes the parser's options to
OUT_DIR/vllm-serve-options.txt (option strings, one a line: the offline test suite keeps it as
tests/fixtures/vllm-<version>-serve-options.txt) and OUT_DIR/serve-options-<version>.json (every
option's flags, destination, whether it takes a value, choices and defaults: fleetform ships it as
renderer/config/vllm/, and `validate` checks `engine.extra_args` and engine values against it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
    import vllm

    from renderer.config.load import load_fleet
    from renderer.config.resolve import resolve

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
    actions = _serve_actions(parser)
    options = sorted({opt for action in actions for opt in action.option_strings})
    dump = {
        "vllm_version": vllm.__version__,
        "generated_by": "benchmarks/check_vllm_argv.py from vLLM's own `vllm serve` argument parser",
        "options": option_table(actions),
    }
    (out / f"serve-options-{vllm.__version__}.json").write_text(json.dumps(dump, indent=1, sort_keys=True) + "\n")
    (out / "vllm-serve-options.txt").write_text(
        f"# `vllm serve` option strings of vLLM {vllm.__version__}, read from its parser\n" + "\n".join(options) + "\n"
    )
    print(f"{len(options)} options written to {out / 'vllm-serve-options.txt'}; {failures} rejected")
    return 1 if failures else 0


def _json_safe(value):
    """A default or choice as JSON: plain values as they are, anything else as its repr."""
    if value is argparse.SUPPRESS:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    if hasattr(value, "value") and isinstance(value.value, (str, int)):  # enums
        return value.value
    return repr(value)


def _engine_defaults() -> dict:
    """EngineArgs' own field defaults: where the parser says None, the engine may still pick a value."""
    from vllm.engine.arg_utils import EngineArgs

    out = {}
    for f in dataclasses.fields(EngineArgs):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _json_safe(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            try:
                out[f.name] = _json_safe(f.default_factory())  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a factory that needs a GPU context
                pass
    return out


def option_table(actions) -> list[dict]:
    engine = _engine_defaults()
    rows = []
    for action in actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        rows.append(
            {
                "dest": action.dest,
                "flags": sorted(action.option_strings),
                "takes_value": action.nargs != 0,
                "nargs": action.nargs if action.nargs not in (None, 0) else None,
                "default": _json_safe(action.default),
                "engine_default": engine.get(action.dest),
                "choices": None if action.choices is None else [_json_safe(c) for c in action.choices],
                "type": getattr(action.type, "__name__", None) if action.type is not None else None,
            }
        )
    return sorted(rows, key=lambda r: r["dest"])


def _serve_actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]._actions
    return []


if __name__ == "__main__":
    raise SystemExit(main())
