"""`fleetform deploy`, `status`, `rollback`, `destroy`: the commands that change or read what Modal runs.

Their reports (`DeployReport`, `StatusReport`, `ActionReport` in renderer.deploy) carry `to_dict()`,
`render(console)` and `exit_code`: the CLI's reporters print them like any other result.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from renderer.cli.common import RAW, LazyChoices, add_common, backend, gateway, positive, render_apps, resolve_args
from renderer.cli.output import CliError, ExitCode, TextReporter

NEEDS = "Needs Modal credentials (`modal token new`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)."


def _strategies() -> tuple[str, ...]:
    from renderer.modal_api import STRATEGIES

    return STRATEGIES


def _percent(text: str) -> int:
    """A canary's share: a whole percent from 1 to 99, written `10` or `10%`."""
    body = text[:-1] if text.endswith("%") else text
    if not body.isdigit() or not 1 <= int(body) <= 99:
        raise argparse.ArgumentTypeError(f"expected a whole percent from 1 to 99, such as 10%, got {text!r}")
    return int(body)


def _duration(text: str) -> int:
    """Seconds, written as the YAML writes durations (600, 10m, 1h30m, 90s), from 10 s to 24 h as
    `rollout.duration`."""
    from renderer.config.schema import parse_duration

    try:
        seconds = parse_duration(int(text) if text.isdigit() else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 600, 10m or 1h30m, got {text!r}") from None
    if not 10 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"expected a duration from 10s to 24h, got {text!r}")
    return seconds


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="deploy what changed to Modal, smoke test it, roll back what fails",
        description="Render the fleet, compare each deployment with the app Modal runs (its "
        "ff-<content hash> tag) and deploy only what changed, several at a time, each after its weights "
        "are staged on its Volume by a CPU-only function (as `fleetform stage`; --no-stage skips it). Each "
        "deployed app is smoke tested (health, /v1/models, one chat completion); one that "
        "fails is rolled back to the version live before (a first deploy is stopped). Asks "
        "before deploying unless --yes. Ctrl-C starts no new deploy and lets running ones "
        "finish. A deployment whose `rollout.strategy` is canary (or every updated one, with --canary) "
        "is first tried beside the live version on a share of its traffic through the gateway, then "
        f"promoted or rolled back on the gateway's figures. {NEEDS} See docs/deploying.md.",
        epilog="examples (need Modal credentials):\n"
        "  fleetform deploy --env prod --dry-run          what would be deployed, nothing more\n"
        "  fleetform deploy --env prod                    ask, then deploy what changed\n"
        "  fleetform deploy --only llama-3-1-8b-fp8 --yes one deployment, no question\n"
        "  fleetform deploy --env prod --yes --format json   for CI: one JSON report on stdout\n"
        "  fleetform deploy --env prod --only llama-3-1-8b-fp8 --canary 10 --canary-duration 15m\n"
        "                                                 a tenth of its traffic to the new version for\n"
        "                                                 15 minutes, then promoted or rolled back\n"
        "\nexit codes: 0 all deployed or unchanged, 1 a deployment or the run failed, "
        "2 usage error",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_common(p, ("text", "json"))
    p.add_argument("--only", action="append", metavar="NAME", help="deploy just this deployment (repeatable)")
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="deploys at a time (default: 4)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deployed; deploy nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    p.add_argument(
        "--no-rollback", action="store_true", help="leave a version that fails its smoke test live, for debugging"
    )
    p.add_argument("--fail-fast", action="store_true", help="after the first failure, start no new deploy")
    p.add_argument(
        "--strategy",
        choices=LazyChoices(_strategies),
        default="rolling",
        metavar="{rolling,recreate}",
        help="Modal's deployment strategy: rolling starts new containers before old ones drain "
        "(default); recreate stops the old ones first",
    )
    p.add_argument(
        "--skip-smoke-test", action="store_true", help="do not test deployed apps (so nothing is ever rolled back)"
    )
    p.add_argument(
        "--no-stage",
        action="store_true",
        help="do not stage the weights first (a CPU-only Modal function that downloads the pinned revision into "
        "the Hugging Face cache Volume and verifies it): the first GPU container downloads them itself, billed. "
        "For a Volume that is managed outside fleetform, or a model already served from it",
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="deploy over an app of the same name that fleetform does not manage (one made by hand or "
        "another tool): its running version is replaced and fleetform manages it from then on, "
        "so whatever deployed it before loses it. Check the name with `fleetform plan` first",
    )
    g = p.add_argument_group(
        "canary rollouts",
        "Need the fleet's gateway and its metrics key (FLEETFORM_GATEWAY_METRICS_KEY or\n"
        "FLEETFORM_GATEWAY_API_KEY). What is judged and the defaults: `rollout` in docs/schema.md;\n"
        "the steps, and what Ctrl-C leaves: docs/deploying.md.",
    )
    g.add_argument(
        "--canary",
        type=_percent,
        metavar="PERCENT",
        help="roll out every updated deployment selected as a canary with this share of its traffic, in percent "
        "(10, or 10 with a percent sign), whatever its `rollout.strategy`",
    )
    g.add_argument(
        "--canary-duration",
        type=_duration,
        metavar="DURATION",
        help="watch each canary this long (600, 10m, 1h) instead of its `rollout.duration`",
    )
    g.add_argument(
        "--no-canary",
        action="store_true",
        help="deploy every change directly, even where `rollout.strategy` is canary",
    )
    g.add_argument(
        "--watch-interval",
        type=positive(float),
        default=15.0,
        metavar="S",
        help="seconds between two reads of the gateway's /metrics while a canary runs (default: 15)",
    )
    p.set_defaults(func=run_deploy, needs=("modal", "aiohttp"))  # aiohttp: the smoke tests

    p = sub.add_parser(
        "status",
        help="show what Modal runs for each deployment: in sync, drifted, not deployed",
        description="Per deployment: the live version and its tag, the tag the YAML renders to, "
        "the state (in sync, drifted, not deployed, unmanaged) and the URL; then the "
        f"orphans, managed apps no YAML describes. {NEEDS}",
        epilog="examples (need Modal credentials):\n  fleetform status --env prod\n  fleetform status --format json\n"
        "  fleetform status --env prod --detailed-exitcode   (a scheduled drift check)\n\n"
        "exit codes: 0 ok, 1 error, 2 usage error; with --detailed-exitcode: 0 in sync, 2 drift, 1 any error",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_common(p, ("text", "json"))
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 if every app is in sync, 2 on drift (drifted, not deployed, unmanaged, or an orphan), "
        "1 on any error (an unknown --env too)",
    )
    p.set_defaults(func=run_status, needs=("modal",))

    p = sub.add_parser(
        "rollback",
        help="make an earlier version of a deployed app live again",
        description="Roll a managed app back to the version before the live one (skipping versions "
        "that ran the same module), or to --to VERSION. Modal records the rollback as a "
        "new version; `status` then shows the app as drifted until the YAML matches. While a canary "
        "of the deployment runs (a rollout in progress, or one left unfinished), rollback ends it "
        "instead: the gateway sends every request to the live version, and the canary app is stopped "
        "(with --to, the live app is then rolled back too). "
        f"Apps fleetform does not manage are refused. {NEEDS}",
        epilog="examples (need Modal credentials):\n  fleetform rollback llama-3-1-8b-fp8 --env prod\n"
        "  fleetform rollback llama-3-1-8b-fp8 --to v3\n"
        "  fleetform rollback llama-3-1-8b-fp8 --to ff-1a2b3c4d5e6f",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("name", help="the deployment (or orphaned app) to roll back")
    add_common(p, ("text", "json"))
    p.add_argument(
        "--to",
        metavar="VERSION",
        help="a version number (v3 or 3, as `modal app history` lists them) or a deployment tag (ff-...)",
    )
    p.set_defaults(func=run_rollback, needs=("modal",))

    p = sub.add_parser(
        "destroy",
        help="stop a deployed app: its containers terminate, its URL stops answering",
        description="Stop a managed app, after a yes/no question unless --yes (without a terminal, "
        "--yes is required). Volumes with the weights and caches are kept. Apps fleetform "
        f"does not manage are refused. {NEEDS}",
        epilog="examples (need Modal credentials):\n  fleetform destroy old-model --env dev\n"
        "  fleetform destroy old-model --env dev --yes --format json",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("name", help="the deployment (or orphaned app) to stop")
    add_common(p, ("text", "json"))
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run_destroy, needs=("modal",))


def interrupted(what: str) -> CliError:
    """Ctrl-C while planning or at a yes/no prompt: one line, on a line of its own (the prompt's
    line is still open on a terminal), and the usual 130."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    return CliError(f"interrupted: {what}", ExitCode.INTERRUPTED, plain=True)


def _emit(report: TextReporter, result: Any, failed: bool) -> int:
    """JSON always goes to stdout (one document). Text goes to stdout too, except a report that is
    nothing but an error: that is one line on stderr, like every other error of the CLI."""
    return report.result(result, stderr=failed)


def run_deploy(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.cli.output import console
    from renderer.deploy.run import DeployOptions
    from renderer.deploy.run import run_deploy as deploy

    if args.no_canary and (args.canary is not None or args.canary_duration is not None):
        raise CliError("--no-canary cannot go with --canary or --canary-duration", ExitCode.USAGE)
    resolved = resolve_args(args, report)
    apps = render_apps(resolved)
    options = DeployOptions(
        only=tuple(args.only or ()),
        parallel=args.parallel,
        dry_run=args.dry_run,
        yes=args.yes,
        rollback=not args.no_rollback,
        fail_fast=args.fail_fast,
        format=args.format,
        smoke_test=not args.skip_smoke_test,
        strategy=args.strategy,
        adopt=args.adopt,
        modal_env=resolved.modal_env,
        stage=not args.no_stage,
        canary_weight=args.canary,
        canary_duration=args.canary_duration,
        no_canary=args.no_canary,
        watch_interval=args.watch_interval,
    )
    try:
        result = deploy(apps, backend(), options, console(), gateway=gateway(resolved))
    except KeyboardInterrupt:  # while planning or at the prompt; once deploys run, run_deploy handles Ctrl-C
        raise interrupted("nothing was deployed") from None
    return _emit(report, result, failed=bool(result.error) and not result.results)


def run_status(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.deploy.status import IN_SYNC
    from renderer.deploy.status import run_status as status

    try:
        resolved = resolve_args(args, report)
    except CliError as exc:
        if args.detailed_exitcode and exc.code == ExitCode.USAGE:  # 2 means drift, and only that
            exc.code = ExitCode.INVALID
        raise
    result = status(render_apps(resolved), backend(), resolved.modal_env, gateway(resolved))
    code = _emit(report, result, failed=bool(result.error))
    if args.detailed_exitcode and code == ExitCode.OK and any(r.state != IN_SYNC for r in result.rows):
        return ExitCode.CHANGES  # drift: what runs is not what the YAML renders to
    return code


def _app_modal_env(args: argparse.Namespace, report: TextReporter) -> str | None:
    """The Modal environment of app NAME: its deployment's, or for a name no deployment file has (an
    orphan), the one `--env` selects."""
    from renderer.plan.live import modal_env_for

    resolved = resolve_args(args, report)
    return modal_env_for(args.name, render_apps(resolved), resolved.modal_env)


def run_rollback(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.deploy.canary import abort
    from renderer.deploy.rollback import run_rollback as rollback
    from renderer.plan.live import modal_env_for

    resolved = resolve_args(args, report)
    modal_env = modal_env_for(args.name, render_apps(resolved), resolved.modal_env)
    ended = abort(args.name, modal_env, backend(), gateway(resolved), resolved.modal_env)
    if ended is not None and (not ended.ok or args.to is None):
        return _emit(report, ended, failed=not ended.ok)
    result = rollback(args.name, backend(), modal_env=modal_env, to=args.to)
    if ended is not None:  # the canary ended, then --to: one report of both
        result.message = f"{ended.message}; then {result.message}"
        result.details = {**(result.details or {}), "canary": ended.details}
    return _emit(report, result, failed=not result.ok)


def run_destroy(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.cli.output import console
    from renderer.deploy.destroy import run_destroy as destroy

    modal_env = _app_modal_env(args, report)
    prompt = console(stderr=args.format == "json")  # the question never mixes into the JSON document
    try:
        result = destroy(args.name, backend(), modal_env=modal_env, yes=args.yes, console=prompt)
    except KeyboardInterrupt:
        raise interrupted(f"{args.name} left running") from None
    return _emit(report, result, failed=not result.ok)
