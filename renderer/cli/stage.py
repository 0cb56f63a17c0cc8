"""`fleetform stage`: put deployments' pinned weights on their Hugging Face cache Volumes, on CPUs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from renderer.cli.common import RAW, backend, one, positive, resolve_fleet
from renderer.cli.output import CliError, ExitCode, TextReporter

EPILOG = """\
examples (need a Modal account):
  fleetform stage                               stage every deployment of deployments/
  fleetform stage llama-3-3-70b-fp8 --env prod  one deployment, into prod's Modal environment
  fleetform stage --force --format json         check every file again; one JSON report

What it runs: per deployment, an ephemeral Modal app NAME-stage-run-<hash> with one CPU-only
function (the deployment's Python image with huggingface_hub instead of vLLM, its Hugging Face
cache Volume at the app's path, its Secrets). It downloads the pinned revision of the model and of
each LoRA adapter, skips the files already there with the Hub's size, downloads again the ones
that are not, checks every file against the Hub's metadata, commits the Volume and writes a marker
under fleetform-staged/ on it. A deployment whose markers are all there is skipped without
starting anything (--force starts it anyway). `fleetform deploy` does the same before each GPU app
it deploys. See docs/deploying.md.

exit codes: 0 every deployment staged (or already), 1 one failed or no credentials, 2 usage error, 130 interrupted
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "stage",
        help="download deployments' pinned weights into their Modal Volume on CPUs, before any GPU starts",
        description="Run each deployment's stage function on Modal (CPU only): download the pinned model "
        "revision and LoRA adapters into the deployment's Hugging Face cache Volume, verify every file's "
        "size against the Hub, and mark the revision staged, so the first GPU container downloads nothing.",
        epilog=EPILOG,
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="NAME|PATH",
        help="deployments to stage (default: all), and deployment files or folders (default: deployments/); "
        "an argument that names an existing file or folder is a path",
    )
    p.add_argument("--env", metavar="ENV", help="fleet environment: its overrides and its Modal environment")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--parallel", type=positive(int), default=4, metavar="N", help="deployments at a time (default: 4)")
    p.add_argument("--force", action="store_true", help="run the stage function even where the markers say staged")
    p.set_defaults(func=run_stage, needs=("modal",))


def split_targets(targets: list[str]) -> tuple[list[str], list[str]]:
    """(names, paths): an argument that is an existing file or folder is a path, any other a name."""
    names, paths = [], []
    for t in targets:
        (paths if os.path.exists(t) else names).append(t)
    return names, paths


def run_stage(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.cli.output import console
    from renderer.deploy.progress import RichProgress
    from renderer.deploy.stage import run_stage as stage

    names, paths = split_targets(args.targets)
    resolved = resolve_fleet(paths or None, args.env, report, invalid="nothing was staged")
    chosen = [one(resolved, n) for n in dict.fromkeys(names)] if names else list(resolved.deployments)
    progress = RichProgress(console(stderr=args.format == "json"), title="Staging weights")
    try:
        result = stage(chosen, backend(), progress, parallel=args.parallel, force=args.force)
    except KeyboardInterrupt:
        raise CliError("interrupted: running stage functions stop with this command", ExitCode.INTERRUPTED) from None
    return report.result(result, stderr=bool(result.error) and not result.results)
