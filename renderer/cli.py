"""The `fleetform` command: parses options, calls the pipeline stages, prints, returns an exit code.

Exit codes (stable, for CI):
  0  success (plan --detailed-exitcode: no changes)
  1  invalid input, or a failed deploy / test / bench
  2  usage error (bad flags, unknown environment); plan --detailed-exitcode: changes pending

Only the standard library is imported at start-up; each command imports what it needs, so
`fleetform validate` never loads `modal`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
DEFAULT_PATHS = ["deployments"]

EPILOG = """\
examples:
  fleetform validate                      check every file in deployments/
  fleetform plan --env prod               what would run in prod, and what it costs
  fleetform render --out build            write one Modal app module per deployment
  fleetform render --out build --check   fail if build/ is stale (for CI)
  modal deploy build/llama-3-1-8b-fp8.py  deploy one rendered app by hand

exit codes: 0 ok, 1 invalid input or failed operation, 2 usage error
"""


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Tables need room: a pipe or CI log is not an 80-column terminal.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width)


# --- shared steps ----------------------------------------------------------------------------------


class Abort(Exception):
    """Stop the command with this exit code (the message was already printed)."""

    def __init__(self, code: int):
        self.code = code


def _print_diagnostics(diags, fmt: str) -> None:
    from renderer.diagnostics import format_github, format_text

    for d in diags:
        if fmt == "github":
            print(format_github(d))
        else:
            print(format_text(d), file=sys.stderr)


def _resolve(args) -> Any:
    """load -> validate -> resolve; prints diagnostics; raises Abort(1) on errors."""
    from renderer.load import load_fleet
    from renderer.resolve import UnknownEnvironment, resolve

    loaded = load_fleet(args.paths or DEFAULT_PATHS)
    if not loaded.deployments and not loaded.diagnostics:
        print(f"error: no deployment files (*.yaml) in {' '.join(args.paths or DEFAULT_PATHS)}", file=sys.stderr)
        raise Abort(EXIT_USAGE)
    try:
        resolved = resolve(loaded, getattr(args, "env", None))
    except UnknownEnvironment as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise Abort(EXIT_USAGE) from None
    if args.format != "json":
        _print_diagnostics(resolved.diagnostics, args.format)
    if not resolved.ok:
        if args.format == "json":
            from renderer.diagnostics import diagnostics_json, dumps

            print(dumps({"ok": False, "diagnostics": diagnostics_json(resolved.diagnostics)}))
        else:
            n = sum(d.is_error for d in resolved.diagnostics)
            print(f"{n} error(s); nothing was rendered or deployed", file=sys.stderr)
        raise Abort(EXIT_INVALID)
    return resolved


def _render(resolved) -> list:
    from renderer.render import RenderError, render_fleet

    try:
        return render_fleet(resolved.deployments)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise Abort(EXIT_INVALID) from None


def _one(resolved, name: str):
    for d in resolved.deployments:
        if d.name == name:
            return d
    from renderer.diagnostics import did_you_mean

    hint = did_you_mean(name, [d.name for d in resolved.deployments])
    print(f"error: no deployment named {name!r}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    raise Abort(EXIT_USAGE)


# --- commands -------------------------------------------------------------------------------------------


def cmd_validate(args) -> int:
    resolved = _resolve(args)
    n, warnings = len(resolved.deployments), sum(not d.is_error for d in resolved.diagnostics)
    if args.format == "json":
        from renderer.diagnostics import diagnostics_json, dumps

        print(dumps({"ok": True, "deployments": [d.name for d in resolved.deployments],
                     "diagnostics": diagnostics_json(resolved.diagnostics)}))
    elif args.format == "text":
        print(f"ok: {n} deployment(s) valid" + (f", {warnings} warning(s)" if warnings else ""))
    return EXIT_OK


def cmd_render(args) -> int:
    from renderer.render import stale, write_all

    apps = _render(_resolve(args))
    if args.check:
        problems = stale(apps, args.out)
        for p in problems:
            print(f"stale: {p}", file=sys.stderr)
        if problems:
            print(f"run `fleetform render --out {args.out}` and commit the result", file=sys.stderr)
            return EXIT_INVALID
        print(f"ok: {len(apps)} module(s) in {args.out} are up to date")
        return EXIT_OK
    try:
        written = write_all(apps, args.out)
    except OSError as exc:
        print(f"error: cannot write to {args.out}: {exc.strerror or exc}; earlier output left as it was",
              file=sys.stderr)
        return EXIT_INVALID
    if args.format == "json":
        from renderer.diagnostics import dumps

        print(dumps([{"name": a.deployment.name, "path": str(p), "content_hash": a.content_hash}
                     for a, p in zip(apps, written)]))
    else:
        for a, p in zip(apps, written):
            print(f"wrote {p}  ({a.short_hash})")
    return EXIT_OK


def cmd_plan(args) -> int:
    from renderer.plan import make_plan, print_plan

    resolved = _resolve(args)
    apps = _render(resolved)
    plan = make_plan(apps, resolved.prices, resolved.environment)
    if args.format == "json":
        from renderer.diagnostics import dumps

        print(dumps(plan.to_dict()))
    else:
        print_plan(plan, _console())
    return EXIT_OK


def cmd_explain(args) -> int:
    resolved = _resolve(args)
    d = _one(resolved, args.name)
    rows = resolved.explain(d.name)
    if args.format == "json":
        from renderer.diagnostics import dumps, format_path

        print(dumps({"name": d.name, "environment": resolved.environment, "fields": [
            {"path": format_path(p), "value": v, "from": None if m is None else
             {"file": m.file, "line": m.line, "column": m.col}} for p, v, m in rows]}))
        return EXIT_OK
    from rich.table import Table

    from renderer.diagnostics import format_path

    table = Table(title=f"{d.name}" + (f" (env: {resolved.environment})" if resolved.environment else ""),
                  title_justify="left")
    table.add_column("field")
    table.add_column("value")
    table.add_column("from")
    for path, value, mark in rows:
        table.add_row(format_path(path), repr(value) if isinstance(value, str) else str(value),
                      str(mark) if mark else "default (schema)")
    console = _console()
    console.print(table)
    console.print("vLLM command: " + " ".join(d.argv), style="dim")
    return EXIT_OK


def cmd_serve(args) -> int:
    import shlex

    from renderer.serve import LocalOptions, run_local

    if not args.local:
        print("error: serve runs on this machine only: add --local (to run on Modal, use `fleetform deploy`)",
              file=sys.stderr)
        return EXIT_USAGE
    d = _one(_resolve(args), args.name)
    opts = LocalOptions(model_path=args.model_path, load_format=args.load_format, port=args.port,
                        vllm=tuple(shlex.split(args.vllm)) + ("serve",) if args.vllm else LocalOptions.vllm,
                        startup_timeout=args.startup_timeout)
    if args.print_argv:
        from renderer.serve import local_argv

        print(shlex.join(local_argv(d, opts)))
        return EXIT_OK
    return run_local(d, opts, log=lambda m: print(f"[fleetform] {m}", file=sys.stderr, flush=True))


# --- the parser -------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, formats=("text", "json", "github")) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="deployment files or folders (default: deployments/); fleet.yaml in a folder holds defaults")
    p.add_argument("--env", metavar="ENV", help="apply the overrides of this environment from fleet.yaml")
    p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")


def build_parser() -> argparse.ArgumentParser:
    from renderer import __version__

    parser = argparse.ArgumentParser(
        prog="fleetform",
        description="Declare an LLM fleet in YAML; validate it, render it into Modal apps that run vLLM, "
                    "plan, deploy, test and benchmark it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fleetform {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("validate", help="check deployment files against the schema and the rules",
                       description="Check every deployment file: the JSON Schema in schema/, then semantic rules "
                                   "(GPU counts, FP8 hardware, literal credentials, ...). Every problem is reported "
                                   "as file:line:column with the field path and a hint.", formatter_class=raw)
    _add_common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="write one Modal app module per deployment",
                       description="Render each deployment into a self-contained Modal app module (it imports only "
                                   "`modal`). Output is deterministic and written all-or-nothing.",
                       epilog="example: fleetform render --out build && modal deploy build/NAME.py",
                       formatter_class=raw)
    _add_common(p, ("text", "json"))
    p.add_argument("--out", default="build", metavar="DIR", help="output folder (default: build)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if DIR is not what render would write")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("plan", help="show what would run and what it costs",
                       description="Render the fleet and show, per deployment, the model and revision, GPUs, "
                                   "container range, concurrency, content hash and estimated GPU cost per hour.",
                       formatter_class=raw)
    _add_common(p, ("text", "json"))
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("explain", help="show a deployment's resolved values and where each came from",
                       description="Print every field of one resolved deployment with the file:line:column it came "
                                   "from: the deployment file, fleet.yaml defaults, an environment's overrides, "
                                   "or the schema's default.",
                       epilog="example: fleetform explain llama-3-3-70b-fp8 --env prod", formatter_class=raw)
    p.add_argument("name", help="the deployment to explain")
    _add_common(p, ("text", "json"))
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="run a deployment's vLLM command on this machine",
                       description="Run the exact vLLM command line the rendered app runs, on this machine's GPU, "
                                   "wait until it is healthy, and stream its logs. Ctrl-C stops it.",
                       epilog="example: fleetform serve llama-3-1-8b-fp8 --local --model-path /models/llama "
                              "--load-format dummy", formatter_class=raw)
    p.add_argument("name", help="the deployment to serve")
    p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
    p.add_argument("--env", metavar="ENV", help="apply this environment's overrides")
    p.add_argument("--local", action="store_true", help="run on this machine (required)")
    p.add_argument("--model-path", metavar="DIR", help="serve a local copy of the model instead of the hub id")
    p.add_argument("--load-format", metavar="FMT", help="vLLM --load-format, e.g. dummy for random weights")
    p.add_argument("--port", type=int, help="port to listen on (default: the deployment's)")
    p.add_argument("--vllm", metavar="CMD", help='the vLLM executable (default: "vllm"), e.g. '
                                                 '"python3 -m vllm.entrypoints.cli.main"')
    p.add_argument("--startup-timeout", type=int, metavar="S", help="seconds to wait for health")
    p.add_argument("--print-argv", action="store_true", help="print the command line and exit")
    p.set_defaults(func=cmd_serve, format="text")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except Abort as exc:
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a fleetform bug: one line, unless debugging
        if os.environ.get("FLEETFORM_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set FLEETFORM_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INVALID


Command = Callable[[argparse.Namespace], int]
