"""`fleetform plan`: what would run and what it costs, the live view with credentials, and
`plan --against REF`: what changes since a git revision, field by field."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from renderer.cli.common import (
    DEFAULT_PATHS,
    RAW,
    add_common,
    backend,
    gateway,
    render_apps,
    resolve_args,
    resolve_fleet,
)
from renderer.cli.output import CliError, ExitCode, TextReporter, drive, reporter


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="show what would run, what it costs, and what a deploy would change",
        description="Render the fleet and show, per deployment, the model and revision, GPUs, "
        "container range, concurrency, content hash and estimated GPU cost per hour "
        "(a deployment with gpu.fallbacks at the dearest GPU that may run it; without "
        "max_containers its ceiling is unbounded; the gateway, when fleet.yaml enables it, "
        "is a CPU-only row at $0). The table fits the terminal (COLUMNS when piped, else "
        "160 columns); where it would not, each deployment is a block of lines. With Modal "
        "credentials it also shows what `deploy` would do to each app (create, update, "
        "unchanged, conflict, orphan); without them it says so in one line and shows "
        "the offline plan. --against REF instead compares with the fleet at a git "
        "revision, offline: see docs/ci.md.",
        epilog="examples:\n"
        "  fleetform plan --env prod                       cost, and the live view with credentials\n"
        "  fleetform plan --against origin/main            what this branch changes, field by field, and its cost\n"
        "  fleetform plan --against origin/main --format github   annotations for a pull request\n"
        "\nexamples (need Modal credentials):\n"
        "  fleetform plan --env prod --detailed-exitcode   exit 2 if deploy would change something\n"
        "\nexit codes: 0 ok, 1 error, 2 usage error; with --detailed-exitcode: 0 no changes, "
        "2 changes pending, 1 any error",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_common(p)
    p.add_argument(
        "--against",
        metavar="REF",
        help="compare with the fleet at git revision REF (e.g. origin/main): what changes, field by field, "
        "and which changes start new containers",
    )
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 if nothing changes, 2 if changes are pending, 1 on error (without --against: "
        "against what Modal runs, which needs credentials)",
    )
    p.set_defaults(func=run)


# --- the offline plan, and the live view ---------------------------------------------------------------------


@dataclass
class PlanResult:
    plan: Any  # plan.cost.Plan
    live: list | None  # what `deploy` would do to each app; None without credentials
    error: str | None = None  # why Modal could not tell
    exit_code: int = ExitCode.OK
    cold_starts: list = field(default_factory=list)  # plan.coldstart.ColdStartDownload, every deployment
    staging: list | None = None  # plan.coldstart.StagedState per deployment; None without credentials

    def to_dict(self) -> dict[str, Any]:
        from renderer.plan.coldstart import cold_starts_to_dict
        from renderer.plan.live import plan_to_dict

        doc = {**self.plan.to_dict(), "live": None if self.live is None else plan_to_dict(self.live)}
        doc["cold_start_download"] = cold_starts_to_dict(self.cold_starts)
        doc["staging"] = None if self.staging is None else [s.to_dict() for s in self.staging]
        return doc | ({"error": self.error} if self.error else {})

    def render(self, console: Any) -> None:
        from renderer.cli.views import print_plan
        from renderer.plan.coldstart import render_cold_starts, render_staged

        print_plan(self.plan, console)
        render_cold_starts(self.cold_starts, console)
        if self.live is not None:
            from renderer.plan.live import render_plan

            render_plan(self.live, console)
        if self.staging is not None:
            render_staged(self.staging, console)


def offline_plan(args: argparse.Namespace, resolved: Any, apps: list) -> Any:
    """What would run and what it costs, from the YAML alone: one row per deployment, the gateway,
    and the cost of every environment fleet.yaml declares (each resolved with its overlays; resolve
    has already checked every environment, so this reuses that check)."""
    import dataclasses

    from renderer.config.resolve import resolve
    from renderer.plan.cost import environment_totals, make_plan

    plan = make_plan(
        apps,
        resolved.prices,
        resolved.fleet_env,
        gateway=gateway(resolved),
        gateway_source=resolved.fleet_file,
        gateway_modal_env=resolved.modal_env,
    )
    if not resolved.declared_environments:
        return plan
    totals = []
    for env in (None, *resolved.declared_environments):
        fleet = resolved if env == resolved.fleet_env else resolve(resolved.loaded, env)
        if fleet.ok:
            totals.append(environment_totals(env, fleet.deployments, fleet.prices))
    return dataclasses.replace(plan, by_fleet_env=tuple(totals))


def live_rows(resolved: Any, apps: list) -> tuple[list | None, str | None]:
    """(what `deploy` would do to each app, None), or (None, why Modal could not tell)."""
    from renderer.modal_api import BackendError
    from renderer.plan.live import live_plan

    try:
        return live_plan(apps, backend(), resolved.modal_env, gateway(resolved)), None
    except BackendError as exc:
        return None, str(exc)


def run(args: argparse.Namespace, report: TextReporter) -> Any:
    if args.against:
        return against(args.against, args.paths, args.env, report, args.detailed_exitcode)
    if report.name == "github":
        raise CliError(
            "--format github annotates changes, so it needs --against REF (e.g. --against origin/main)", ExitCode.USAGE
        )
    from renderer import modal_api
    from renderer.cli.extras import NO_SDK_PLAN_NOTE, installed, require

    live = modal_api.credentials_available()
    if live and args.detailed_exitcode:
        require("plan --detailed-exitcode", "modal")  # without the SDK it cannot tell what changes
    if args.detailed_exitcode and not live:
        raise CliError("cannot tell what changes without Modal credentials; use --against REF")
    from renderer.plan.live import NO_CREDENTIALS_PLAN_NOTE, plan_exit_code

    note = NO_CREDENTIALS_PLAN_NOTE
    if live and not installed("modal"):  # the lean install: credentials, but no SDK to use them
        live, note = False, NO_SDK_PLAN_NOTE

    resolved = resolve_args(args, report)
    apps = render_apps(resolved)
    plan = offline_plan(args, resolved, apps)
    rows, error = live_rows(resolved, apps) if live else (None, None)
    if not live:
        print(note, file=report.err)  # stderr: stdout stays the table or the JSON
    code = (
        ExitCode.INVALID
        if error
        else (plan_exit_code(rows) if args.detailed_exitcode and rows is not None else ExitCode.OK)
    )
    from renderer.plan.coldstart import cold_start_downloads, staged_states

    staging = staged_states(apps, backend()) if rows is not None else None
    result = PlanResult(plan, rows, error, code, cold_start_downloads(resolved.deployments, resolved.prices), staging)
    report.result(result)
    if error:
        raise CliError(error)
    return int(code)


# --- plan --against REF ------------------------------------------------------------------------------------------


@dataclass
class AgainstResult:
    diff: Any  # plan.against.FleetDiff
    ref: str
    commit: str
    fleet_env: str | None
    notes: list[str] = field(default_factory=list)
    diagnostics: Sequence[Any] = ()
    origins: Mapping | None = None
    exit_code: int = ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        from renderer.plan.against import plan_json

        return plan_json(self.diff, self.ref, self.commit, self.fleet_env, self.notes, self.diagnostics)

    def text(self) -> str:
        from renderer.cli.views import format_text_plan

        return format_text_plan(self.diff, self.ref, self.commit, self.fleet_env, self.notes)

    def github(self, report: TextReporter) -> None:
        from renderer.cli.views import format_markdown_plan, github_annotations, write_step_summary

        for line in github_annotations(self.diff, self.ref, self.origins):
            print(line, file=report.out)
        markdown = format_markdown_plan(self.diff, self.ref, self.commit, self.fleet_env, self.notes)
        if write_step_summary(markdown, report.out, report.err, report.environ):
            report.out.write(self.text())


def at_ref(ref: str, paths: Sequence[str], env: str | None, report: TextReporter) -> tuple[str, Any, list[str]]:
    """(commit, the fleet resolved at REF, notes). A REF fleet that does not validate is an error:
    without it there is nothing sound to compare with."""
    from renderer.config.resolve import ResolvedFleet, UnknownEnvironment, resolve
    from renderer.diagnostics import format_text
    from renderer.plan.gitref import GitError, load_fleet_at

    try:
        at = load_fleet_at(ref, paths)
    except GitError as exc:
        raise CliError(str(exc), doc=_error_doc(str(exc))) from None
    notes: list[str] = []
    try:
        resolved = resolve(at.loaded, env)
    except UnknownEnvironment:
        notes.append(f"environment {env} is not declared at {ref}: every deployment in it counts as new")
        resolved = ResolvedFleet((), (), env, {})
    if not resolved.ok:
        errors = [d for d in resolved.diagnostics if d.is_error]
        for d in errors:
            print(f"  at {at.short}: {format_text(d)}", file=report.err)
        message = (
            f"the fleet at {ref} ({at.short}) does not validate ({len(errors)} error(s)), "
            "so there is nothing sound to compare with"
        )
        raise CliError(message, doc=_error_doc(message))
    if not at.loaded.deployments and not at.loaded.diagnostics:
        notes.append(f"no deployment files at {ref} in {' '.join(paths)}: every deployment counts as new")
    return at.commit, resolved, notes


def _gateway_version(resolved: Any) -> Any:
    """The fleet's gateway on one side of `--against`, or None where fleet.yaml does not enable it."""
    from renderer.plan.against import GatewayVersion

    rendered = gateway(resolved)
    return None if rendered is None else GatewayVersion(rendered, resolved.fleet_file or "", resolved.modal_env)


def _error_doc(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "diagnostics": []}


def _render_or_say(resolved: Any) -> list:
    try:
        return render_apps(resolved)
    except CliError as exc:
        exc.doc = _error_doc(exc.message or "")
        raise


def against(
    ref: str, paths: Sequence[str] | None, env: str | None, report: TextReporter, detailed_exitcode: bool = False
) -> AgainstResult:
    """`fleetform plan --against REF`: what changes between REF and the working tree.

    Exit codes: 0 ok (with `detailed_exitcode`: no changes), 2 changes pending (only with
    `detailed_exitcode`), 1 any error. Without `detailed_exitcode` a usage error (no files, an unknown
    environment) is 2, as elsewhere in the CLI; with it, 2 means changes, so those are 1.
    Needs git, no Modal credentials and no network.
    """
    from renderer.cli.validate import markdown_on_invalid
    from renderer.plan.against import diff_fleets

    paths = list(paths or DEFAULT_PATHS)
    usage = ExitCode.INVALID if detailed_exitcode else ExitCode.USAGE
    try:
        after = resolve_fleet(
            paths,
            env,
            report,
            usage=usage,
            invalid="nothing was compared",
            title="the working tree",
            on_invalid=markdown_on_invalid(report),
        )
    except CliError as exc:
        if exc.doc is None:  # no files, an unknown environment: JSON gets the error as a document too
            exc.doc = _error_doc(exc.message or "")
        raise
    after_apps = _render_or_say(after)
    commit, before, notes = at_ref(ref, paths, env, report)
    before_apps = _render_or_say(before)
    diff = diff_fleets(
        before_apps,
        after_apps,
        before_prices=before.prices,
        after_prices=after.prices,
        before_gateway=_gateway_version(before),
        after_gateway=_gateway_version(after),
    )
    code = ExitCode.CHANGES if detailed_exitcode and diff.pending else ExitCode.OK
    return AgainstResult(diff, ref, commit, env, notes, after.diagnostics, getattr(after, "origins", None), code)


def plan_against(
    ref: str,
    paths: Sequence[str] | None,
    env: str | None,
    fmt: str = "text",
    detailed_exitcode: bool = False,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`plan --against` printed to the given streams; returns the exit code (for tests and scripts)."""
    report = reporter(fmt, out, err, environ)
    return drive(report, lambda: against(ref, paths, env, report, detailed_exitcode))
