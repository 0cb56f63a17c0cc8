"""The `fleetform` command: one module per command group, each with its parser section and help.

    validate.py   validate
    render.py     render
    plan.py       plan, plan --against
    explain.py    explain
    deploy.py     deploy, status, rollback, destroy
    stage.py      stage
    new.py        new
    init.py       init, schema
    endpoint.py   test, bench, serve
    output.py     exit codes, the one error type (CliError), one reporter per --format
    views.py      tables, plan text, GitHub annotations and Markdown summaries
    common.py     the common options, load -> validate -> resolve, number types

Exit codes (stable, for CI; `ExitCode`):
  0  success (plan --detailed-exitcode: no changes)
  1  invalid input, or a failed deploy / test / bench
  2  usage error (bad flags, unknown environment); plan --detailed-exitcode: changes pending
  130 interrupted

Only the standard library is imported at start-up; each command imports what it needs, so
`fleetform validate` never loads `modal`, `aiohttp` or `jinja2`.
"""

from __future__ import annotations

import argparse
import os
import sys

from renderer.cli import deploy, endpoint, explain, extras, init, new, plan, render, run, stage, tune, validate
from renderer.cli.output import ExitCode, drive, reporter

EPILOG = """\
examples:
  fleetform validate                      check every file in deployments/
  fleetform plan --env prod               what would run in prod, and what it costs
  fleetform plan --against origin/main    what this branch changes, field by field, and its cost
  fleetform render --out build            write one Modal app module per deployment
  fleetform render --out build --check    fail if build/ is stale (for CI)

examples (need Modal credentials):
  fleetform deploy --env prod             deploy what changed, smoke test, roll back failures
  fleetform stage --env prod              download the pinned weights into the Volumes, on CPUs

examples (need the Hugging Face Hub):
  fleetform new ORG/MODEL --revision SHA  size a model and write its deployment file
  fleetform init acme-fleet               start a fleet repository of your own

exit codes: 0 ok, 1 invalid input or failed operation, 2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    from renderer import __version__

    parser = argparse.ArgumentParser(
        prog="fleetform",
        description="Declare an LLM fleet in YAML; validate it, render it into Modal apps that run vLLM, "
        "plan, deploy, test and benchmark it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"fleetform {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate.add_parser(sub)
    render.add_parser(sub)
    plan.add_parser(sub)
    explain.add_parser(sub)
    deploy.add_parsers(sub)
    stage.add_parser(sub)
    new.add_parser(sub)
    init.add_parsers(sub)
    endpoint.add_parsers(sub)
    run.add_parser(sub)
    tune.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.USAGE
    report = reporter(getattr(args, "format", "text"))
    try:
        return drive(report, lambda: extras.run(args, report))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as exc:  # a fleetform bug: one line, unless debugging
        if os.environ.get("FLEETFORM_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set FLEETFORM_DEBUG=1 for a traceback)", file=sys.stderr)
        return ExitCode.INVALID
