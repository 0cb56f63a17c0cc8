"""`fleetform run`: start a deployment as an ephemeral Modal app, smoke-test it, stop it."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from renderer.cli.common import RAW, backend, one, positive, render_apps, resolve_args
from renderer.cli.output import CliError, ExitCode, TextReporter, literal

EPILOG = """\
examples (need Modal credentials):
  fleetform run llama-3-1-8b-fp8 --env dev              start it, test it, stop it
  fleetform run llama-3-1-8b-fp8 --max-cost-per-hour 5  refuse if its GPUs cost more than $5/hour
  fleetform run qwen2-5-7b-awq --keep 15                keep it up 15 minutes after a passing test
  fleetform run llama-3-1-8b-fp8 --format json          every step's figures as one JSON document

How a run never outlives its timeout: the cold start may take at most the startup timeout, --keep
at most its minutes, and the app stops when the command ends, however it ends (pass, failure,
Ctrl-C, SIGTERM, a crash of the test): the SDK tells Modal the client disconnected, which stops an
ephemeral app. If this process dies without that (SIGKILL, a lost machine), the app is ephemeral,
not deployed: the SDK sends it a heartbeat every 15 s while the command runs, and only a detached
app is meant to outlive its client; Modal stops an ephemeral app whose heartbeats stop.

exit codes: 0 the test passed, 1 it failed or the run was refused, 2 usage error, 130 interrupted
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="try a deployment on Modal before deploying it: an ephemeral app, smoke-tested, then stopped",
        description="Render a deployment and start it as an ephemeral Modal app named NAME-run-<hash> "
        "(never the live app), in the Modal environment of --env; wait for its URL and the cold start; "
        "run the smoke test of `fleetform test` (health, models, a chat, streamed chats); stop it. "
        "The GPU price per hour is printed before anything starts.",
        epilog=EPILOG,
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("name", metavar="NAME", help="the deployment to run")
    p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
    p.add_argument("--env", metavar="ENV", help="fleet environment: its overrides and its Modal environment")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument(
        "--max-cost-per-hour",
        type=positive(float),
        metavar="USD",
        help="refuse to start a run whose GPUs cost more than this per hour",
    )
    p.add_argument(
        "--keep",
        type=positive(float),
        default=0.0,
        metavar="MINUTES",
        help="after a passing test, keep the app up this many minutes (prints its URL and the command that "
        "stops it; Ctrl-C stops it sooner)",
    )
    p.add_argument(
        "--startup-timeout",
        type=positive(float),
        metavar="S",
        help="seconds the start and the cold start may take (default: the deployment's scaling.startup_timeout)",
    )
    p.add_argument("--prompt", action="append", metavar="TEXT", help="user prompt (repeatable)")
    p.add_argument("--max-tokens", type=positive(int), default=256, metavar="N")
    p.set_defaults(func=run_run, needs=("modal", "aiohttp"))


@dataclass
class RunResult:
    report: Any  # deploy.ephemeral.RunReport

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()

    def render(self, console: Any) -> None:
        from renderer.cli.views import render_smoke_report

        r = self.report
        if r.smoke is not None:
            render_smoke_report(r.smoke, console)
        console.print(
            literal(
                f"{r.name}: {r.outcome}"
                + (f" (ran as {r.run_name}, {r.app_id})" if r.app_id else "")
                + (f"; started in {r.start_seconds:.1f} s" if r.start_seconds is not None else "")
                + ("; stopped" if r.stopped else "")
                + f"; {r.total_seconds:.1f} s in all"
            )
        )
        if r.error:
            console.print(literal(f"error: {r.error}"), style="red")


def run_run(args: argparse.Namespace, report: TextReporter) -> RunResult:
    from renderer.deploy.ephemeral import RunOptions, try_run

    resolved = resolve_args(args, report)
    d = one(resolved, args.name)
    (app,) = [a for a in render_apps(resolved) if a.name == d.name]
    be = backend()
    options = RunOptions(
        startup_timeout=args.startup_timeout,
        max_cost_per_hour=args.max_cost_per_hour,
        keep_minutes=args.keep,
        prompts=tuple(args.prompt) if args.prompt else None,
        max_tokens=args.max_tokens,
    )
    restore = _sigterm_as_interrupt()  # a cancelled CI job stops the app too
    try:
        result = try_run(d, app, be, resolved.prices, options, log=log)
    finally:
        restore()
    if result.outcome in ("refused", "not started"):  # nothing ran: one error line (and the document)
        raise CliError(result.error, ExitCode.INVALID, doc=result.to_dict())
    return RunResult(result)


def _sigterm_as_interrupt() -> Any:
    """SIGTERM (what a CI runner sends a cancelled job) ends the run as Ctrl-C does: the app is stopped."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def log(message: str) -> None:
    print(f"[fleetform] {message}", file=sys.stderr, flush=True)
