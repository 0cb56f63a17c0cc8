"""`fleetform validate`: the schema and the semantic rules, every problem at file:line:column."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from renderer.cli.common import DEFAULT_PATHS, RAW, add_common, resolve_fleet
from renderer.cli.output import ExitCode, TextReporter, drive, reporter


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check deployment files against the schema and the rules",
        description="Check every deployment file: the JSON Schema in schema/, then semantic rules "
        "(GPU counts, FP8 hardware, literal credentials, ...). Every problem is reported "
        "as file:line:column with the field path and a hint. A model whose config.json and "
        "weights are in the local Hugging Face cache is also checked to fit its GPUs.",
        epilog="examples:\n"
        "  fleetform validate                            every file in deployments/\n"
        "  fleetform validate deployments/qwen2-5-7b-instruct.yaml   one file (with the fleet.yaml beside it)\n"
        "  fleetform validate --env prod                 with prod's overrides applied\n"
        "  fleetform validate --format github            annotations and a summary for CI "
        "(docs/ci.md)\n"
        "\nexit codes: 0 valid (warnings allowed), 1 errors, 2 usage error",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_common(p)
    p.set_defaults(func=run)


@dataclass
class Validation:
    deployments: list[str]
    diagnostics: list = field(default_factory=list)
    exit_code: int = ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        from renderer.diagnostics import diagnostics_json

        return {"ok": True, "deployments": self.deployments, "diagnostics": diagnostics_json(self.diagnostics)}

    def text(self) -> str:
        warnings = sum(not d.is_error for d in self.diagnostics)
        return (
            f"ok: {len(self.deployments)} deployment(s) valid" + (f", {warnings} warning(s)" if warnings else "") + "\n"
        )

    def github(self, report: TextReporter) -> None:
        from renderer.cli.views import format_markdown_validation, write_step_summary

        write_step_summary(
            format_markdown_validation(self.diagnostics, len(self.deployments)), report.out, report.err, report.environ
        )


def markdown_on_invalid(report: TextReporter):
    """For --format github: the Markdown summary of a fleet that does not validate, beside the annotations."""

    def write(resolved: Any) -> None:
        if report.name == "github":
            from renderer.cli.views import format_markdown_validation, write_step_summary

            write_step_summary(
                format_markdown_validation(resolved.diagnostics, len(resolved.deployments)),
                report.out,
                report.err,
                report.environ,
            )

    return write


def run(args: argparse.Namespace, report: TextReporter) -> Validation:
    if report.name == "github":
        paths = args.paths or DEFAULT_PATHS
        resolved = resolve_fleet(
            paths,
            args.env,
            report,
            invalid="nothing was compared",
            title=" ".join(paths),
            on_invalid=markdown_on_invalid(report),
        )
    else:
        resolved = resolve_fleet(args.paths, args.env, report)
    return Validation([d.name for d in resolved.deployments], list(resolved.diagnostics))


def validate_github(
    paths: Sequence[str] | None,
    env: str | None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`validate --format github` printed to the given streams; returns the exit code (for tests and scripts)."""
    report = reporter("github", out, err, environ)
    return drive(report, lambda: run(argparse.Namespace(paths=list(paths or []), env=env), report))
