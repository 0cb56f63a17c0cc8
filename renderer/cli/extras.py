"""Install profiles: which optional package a command needs, and the one message its absence gives.

`pip install fleetform` is the lean core: validate, render, plan (and plan --against), explain,
serve --local, `new --from-dir`, and the pre-commit hook. Four packages come with extras
(docs/install.md):

    modal  modal, aiohttp    deploy, status, rollback, destroy; test, bench and tune; `test NAME`
    hub    huggingface_hub   new ORG/MODEL from the Hugging Face Hub; validate's weights-fit check
    plot   matplotlib        tune --plot FILE.png
    all    all three

A command declares what it needs up front (`set_defaults(needs=...)`), so a missing extra stops it
before it does anything, and `run` also turns any later import of a missing optional package into
the same one-line error (exit 1) instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from renderer.cli.output import CliError, ExitCode, TextReporter

EXTRA_OF = {"modal": "modal", "aiohttp": "modal", "huggingface_hub": "hub", "matplotlib": "plot"}

# `plan` with Modal credentials but without the SDK (the lean install on a machine that also uses Modal).
NO_SDK_PLAN_NOTE = (
    "the Modal SDK is not installed, showing the offline plan (pip install 'fleetform[modal]' for the live view)"
)


def installed(module: str) -> bool:
    """Whether a top-level package can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


def missing_extra(command: str, module: str) -> CliError:
    extra = EXTRA_OF[module]
    return CliError(
        f"fleetform {command} needs {module}, which this install of fleetform leaves out: "
        f"pip install 'fleetform[{extra}]' (or 'fleetform[all]')",
        ExitCode.INVALID,
    )


def require(command: str, *modules: str) -> None:
    """Stop with the install message unless every one of `modules` (keys of EXTRA_OF) is installed."""
    for module in modules:
        if not installed(module):
            raise missing_extra(command, module)


def run(args: argparse.Namespace, report: TextReporter) -> Any:
    """Run the parsed command: check what it declares it needs, then call it."""
    command = getattr(args, "command", None) or "command"
    require(command, *getattr(args, "needs", ()))
    try:
        return args.func(args, report)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").partition(".")[0]
        if root in EXTRA_OF:
            raise missing_extra(command, root) from None
        raise
