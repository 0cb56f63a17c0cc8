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
  fleetform plan --against origin/main    what this branch changes, field by field
  fleetform render --out build            write one Modal app module per deployment
  fleetform render --out build --check   fail if build/ is stale (for CI)
  fleetform deploy --env prod             deploy what changed, smoke test, roll back failures
  fleetform new ORG/MODEL --revision SHA  size a model and write its deployment file

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
    from renderer.config.load import load_fleet
    from renderer.config.resolve import UnknownEnvironment, resolve

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
    from renderer.codegen.render import RenderError, render_fleet

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


def _gateway(resolved) -> Any:
    """The fleet's gateway module (`RenderedGateway`) when fleet.yaml enables it, else None."""
    if resolved.gateway is None:
        return None
    from renderer.codegen.gateway import render_gateway

    return render_gateway(resolved.deployments, resolved.gateway, source=resolved.fleet_file)


def _backend() -> Any:
    """The Modal backend, looked up on its module at call time so tests can swap in a fake."""
    from renderer import modal_api

    return modal_api.default_backend()


def _emit(report, fmt: str, failed: bool) -> int:
    """Print a deploy-stage report; return its exit code.

    JSON always goes to stdout (one document). Text goes to stdout too, except a report that is
    nothing but an error: that is one line on stderr, like every other error of the CLI.
    """
    return report.emit(_console(stderr=failed and fmt == "text"), fmt)


def _interrupted(what: str) -> int:
    """Ctrl-C while planning or at a yes/no prompt: one line, on a line of its own (the prompt's
    line is still open on a terminal), and the usual 130."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"interrupted: {what}", file=sys.stderr)
    return 130


# --- commands -------------------------------------------------------------------------------------------


def cmd_validate(args) -> int:
    if args.format == "github":
        from renderer.plan.against import validate_github

        return validate_github(args.paths or DEFAULT_PATHS, args.env)
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
    from renderer.codegen.render import stale, write_all

    resolved = _resolve(args)
    modules = _render(resolved)
    gateway = _gateway(resolved)
    if gateway is not None:
        modules.append(gateway)
    if args.check:
        problems = stale(modules, args.out)
        for p in problems:
            print(f"stale: {p}", file=sys.stderr)
        if problems:
            print(f"run `fleetform render --out {args.out}` and commit the result", file=sys.stderr)
            return EXIT_INVALID
        print(f"ok: {len(modules)} module(s) in {args.out} are up to date")
        return EXIT_OK
    try:
        written = write_all(modules, args.out)
    except OSError as exc:
        print(f"error: cannot write to {args.out}: {exc.strerror or exc}; earlier output left as it was",
              file=sys.stderr)
        return EXIT_INVALID
    if args.format == "json":
        from renderer.diagnostics import dumps

        print(dumps([{"name": m.name, "path": str(p), "content_hash": m.content_hash}
                     for m, p in zip(modules, written)]))
    else:
        for m, p in zip(modules, written):
            print(f"wrote {p}  ({m.short_hash})")
    return EXIT_OK


def _offline_plan(args, resolved, apps) -> Any:
    """What would run and what it costs, from the YAML alone: one row per deployment, the gateway,
    and the cost of every environment fleet.yaml declares (each resolved with its overlays)."""
    import dataclasses

    from renderer.plan.cost import environment_totals, make_plan
    from renderer.config.resolve import resolve

    plan = make_plan(apps, resolved.prices, resolved.environment, gateway=_gateway(resolved),
                     gateway_source=resolved.fleet_file, gateway_environment=resolved.modal_environment)
    if not resolved.declared_environments:
        return plan
    totals = []
    for env in (None, *resolved.declared_environments):
        fleet = resolved if env == resolved.environment else resolve(resolved.loaded, env)
        if fleet.ok:  # an overlay that breaks a deployment shows up when that --env is planned
            totals.append(environment_totals(env, fleet.deployments, fleet.prices))
    return dataclasses.replace(plan, by_environment=tuple(totals))


def _live_rows(resolved, apps) -> tuple[list | None, str | None]:
    """(what `deploy` would do to each app, None), or (None, why Modal could not tell)."""
    from renderer.plan.live import live_plan
    from renderer.modal_api import BackendError

    try:
        return live_plan(apps, _backend(), resolved.modal_environment), None
    except BackendError as exc:
        return None, str(exc)


def cmd_plan(args) -> int:
    if args.against:
        from renderer.plan.against import plan_against

        return plan_against(args.against, args.paths or DEFAULT_PATHS, args.env, args.format, args.detailed_exitcode)
    if args.format == "github":
        print("error: --format github annotates changes, so it needs --against REF (e.g. --against origin/main)",
              file=sys.stderr)
        return EXIT_USAGE
    from renderer import modal_api

    live = modal_api.credentials_available()
    if args.detailed_exitcode and not live:
        print("error: cannot tell what changes without Modal credentials; use --against REF", file=sys.stderr)
        return EXIT_INVALID
    from renderer.plan.live import NO_CREDENTIALS_PLAN_NOTE, plan_exit_code, plan_to_dict, render_plan
    from renderer.plan.cost import print_plan

    resolved = _resolve(args)
    apps = _render(resolved)
    plan = _offline_plan(args, resolved, apps)
    rows, error = _live_rows(resolved, apps) if live else (None, None)
    if not live:
        print(NO_CREDENTIALS_PLAN_NOTE, file=sys.stderr)  # stderr: stdout stays the table or the JSON
    if args.format == "json":
        from renderer.diagnostics import dumps

        doc = {**plan.to_dict(), "live": None if rows is None else plan_to_dict(rows)}
        print(dumps(doc | ({"error": error} if error else {})))
    else:
        console = _console()
        print_plan(plan, console)
        if rows is not None:
            render_plan(rows, console)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return plan_exit_code(rows) if args.detailed_exitcode and rows is not None else EXIT_OK


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


def _target(args):
    """(endpoint, model names) for TARGET: a URL, or a deployment name whose URL Modal knows.

    With a deployment name (or --deployment NAME beside a URL), the served names and the auth
    mode come from its YAML, so the test checks exactly what the fleet declares.
    """
    from renderer.endpoint.client import Endpoint

    is_url = args.target.startswith(("http://", "https://"))
    deployment = None
    if not is_url or args.deployment:
        deployment = _one(_resolve(args), args.deployment or args.target)
    names = list(args.model or (deployment.model.names if deployment else []))
    auth = args.auth or (deployment.auth.mode if deployment else "none")
    url = args.target
    if not is_url:
        from renderer import modal_api

        backend = modal_api.default_backend()
        if not backend.credentials_available():
            print(f"error: {modal_api.NO_CREDENTIALS}", file=sys.stderr)
            raise Abort(EXIT_INVALID)
        try:
            url = backend.web_url(deployment.name, deployment.environment)
        except modal_api.BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise Abort(EXIT_INVALID) from None
        if not url:
            print(f"error: {deployment.name} is not deployed (no URL); run `fleetform deploy` first", file=sys.stderr)
            raise Abort(EXIT_INVALID)
    return Endpoint.from_env(url, auth, api_key_var=args.api_key_env), names


def _say_waiting(url: str, timeout: float) -> None:
    """Waiting for /health can take minutes (a cold start): say so before the first request."""
    print(f"checking {url.rstrip('/')}/health (waits up to {timeout:g} s for a cold start)", file=sys.stderr,
          flush=True)


def cmd_test(args) -> int:
    from renderer.endpoint.client import ClientError, render_smoke_report, run_smoke

    try:
        endpoint, names = _target(args)
        if not names:
            print("error: name the model(s) to expect with --model, or give a deployment name", file=sys.stderr)
            return EXIT_USAGE
        prompts = args.prompt or None
        _say_waiting(endpoint.base_url, args.timeout)
        report = run_smoke(endpoint, names, prompts=prompts, health_timeout=args.timeout,
                           max_tokens=args.max_tokens)
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    if args.format == "json":
        from renderer.diagnostics import dumps

        print(dumps(report.to_dict()))
    else:
        render_smoke_report(report, _console())
    return EXIT_OK if report.ok else EXIT_INVALID


def _numbers(text: str, kind: type) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def cmd_bench(args) -> int:
    from renderer.endpoint.bench import BenchConfig, render_bench_results, run_bench_sync
    from renderer.endpoint.client import ClientError

    config = BenchConfig(
        concurrency=tuple(args.concurrency or [1]), request_rates=args.request_rate,
        max_concurrency=args.max_concurrency, num_requests=args.num_requests,
        duration=args.duration, input_len=args.input_len, output_len=args.output_len, ignore_eos=args.ignore_eos,
        dataset=args.dataset, seed=args.seed, health_timeout=args.health_timeout,
    )
    if config.num_requests is None and config.duration is None:
        import dataclasses

        config = dataclasses.replace(config, num_requests=100)
    try:
        config.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        endpoint, names = _target(args)
        console = _console(stderr=args.format == "json")
        _say_waiting(endpoint.base_url, args.health_timeout)
        results = run_bench_sync(endpoint, names[0] if names else None, config, progress=True, console=console)
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    data = [r.to_dict() for r in results]
    if args.output:
        import json

        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump({"config": {k: v for k, v in config.__dict__.items() if k != "dataset"} |
                       {"dataset": str(config.dataset) if config.dataset else None, "base_url": endpoint.base_url},
                       "results": data}, fh, indent=2, default=str)
    if args.format == "json":
        from renderer.diagnostics import dumps

        print(dumps(data))
    else:
        render_bench_results(results, _console())
    failed = sum(r.failed for r in results)
    completed = sum(r.completed for r in results)
    return EXIT_OK if completed and not failed else EXIT_INVALID


def cmd_deploy(args) -> int:
    from renderer.deploy.run import DeployOptions, run_deploy

    resolved = _resolve(args)
    apps = _render(resolved)
    options = DeployOptions(
        only=tuple(args.only or ()), parallel=args.parallel, dry_run=args.dry_run, yes=args.yes,
        rollback=not args.no_rollback, fail_fast=args.fail_fast, format=args.format,
        smoke_test=not args.skip_smoke_test, strategy=args.strategy, environment=resolved.modal_environment,
    )
    try:
        report = run_deploy(apps, _backend(), options, _console())
    except KeyboardInterrupt:  # while planning or at the prompt; once deploys run, run_deploy handles Ctrl-C
        return _interrupted("nothing was deployed")
    return _emit(report, args.format, failed=bool(report.error) and not report.results)


def cmd_status(args) -> int:
    from renderer.deploy.status import run_status

    resolved = _resolve(args)
    report = run_status(_render(resolved), _backend(), resolved.modal_environment)
    return _emit(report, args.format, failed=bool(report.error))


def _app_environment(args) -> tuple[Any, str | None]:
    """(the resolved fleet, the Modal environment of app NAME): its deployment's, or for a name no
    deployment file has (an orphan), the one `--env` selects."""
    from renderer.plan.live import environment_for

    resolved = _resolve(args)
    return resolved, environment_for(args.name, _render(resolved), resolved.modal_environment)


def cmd_rollback(args) -> int:
    from renderer.deploy.rollback import run_rollback

    _, environment = _app_environment(args)
    report = run_rollback(args.name, _backend(), environment=environment, to=args.to)
    return _emit(report, args.format, failed=not report.ok)


def cmd_destroy(args) -> int:
    from renderer.deploy.destroy import run_destroy

    _, environment = _app_environment(args)
    prompt = _console(stderr=args.format == "json")  # the question never mixes into the JSON document
    try:
        report = run_destroy(args.name, _backend(), environment=environment, yes=args.yes, console=prompt)
    except KeyboardInterrupt:
        return _interrupted(f"{args.name} left running")
    return _emit(report, args.format, failed=not report.ok)


def _fleet_prices(out: str) -> dict[str, float] | None:
    """GPU prices of the fleet that `new` writes into: OUT/fleet.yaml's `prices`, so the cheapest fit
    is judged as `plan` will price it. None without a fleet.yaml; Abort(1) if it does not validate."""
    from pathlib import Path

    from renderer.config.load import FLEET_FILE, LoadError, load_file
    from renderer.config.validate import FLEET_SCHEMA, check_schema

    path = Path(out) / FLEET_FILE
    if not path.is_file():
        return None
    try:
        doc = load_file(path)
        problems = [d for d in check_schema(doc, FLEET_SCHEMA) if d.is_error]
    except LoadError as exc:
        problems = list(exc.diagnostics)
    if problems:
        _print_diagnostics(problems, "text")
        print(f"error: {path} does not validate, so its GPU prices cannot be used; fix it first", file=sys.stderr)
        raise Abort(EXIT_INVALID)
    return dict(doc.data.get("prices") or {}) or None


def cmd_new(args) -> int:
    from renderer.sizing import run_new

    args.prices = _fleet_prices(args.out)
    return run_new(args, _console())


def cmd_serve(args) -> int:
    import shlex

    from renderer.endpoint.serve import LocalOptions, run_local

    if not args.local:
        print("error: serve runs on this machine only: add --local (to run on Modal, use `fleetform deploy`)",
              file=sys.stderr)
        return EXIT_USAGE
    d = _one(_resolve(args), args.name)
    opts = LocalOptions(model_path=args.model_path, load_format=args.load_format, port=args.port,
                        vllm=tuple(shlex.split(args.vllm)) + ("serve",) if args.vllm else LocalOptions.vllm,
                        startup_timeout=args.startup_timeout)
    if args.print_argv:
        from renderer.endpoint.serve import local_argv

        print(shlex.join(local_argv(d, opts)))
        return EXIT_OK
    return run_local(d, opts, log=lambda m: print(f"[fleetform] {m}", file=sys.stderr, flush=True))


# --- the parser -------------------------------------------------------------------------------------------


def _add_common(p: argparse.ArgumentParser, formats=("text", "json", "github")) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="deployment files or folders (default: deployments/); fleet.yaml in a folder holds defaults")
    p.add_argument("--env", metavar="ENV", help="apply the overrides of this environment from fleet.yaml")
    p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")


def _add_deploy_commands(sub) -> None:
    """deploy, status, rollback, destroy: the commands that change or read what Modal runs."""
    raw = argparse.RawDescriptionHelpFormatter
    needs = "Needs Modal credentials (`modal token new`, or MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)."

    p = sub.add_parser("deploy", help="deploy what changed to Modal, smoke test it, roll back what fails",
                       description="Render the fleet, compare each deployment with the app Modal runs (its "
                                   "ff-<content hash> tag) and deploy only what changed, several at a time. Each "
                                   "deployed app is smoke tested (health, /v1/models, one chat completion); one that "
                                   "fails is rolled back to the version live before (a first deploy is stopped). Asks "
                                   "before deploying unless --yes. Ctrl-C starts no new deploy and lets running ones "
                                   f"finish. {needs} See docs/deploying.md.",
                       epilog="examples:\n"
                              "  fleetform deploy --env prod --dry-run          what would be deployed, nothing more\n"
                              "  fleetform deploy --env prod                    ask, then deploy what changed\n"
                              "  fleetform deploy --only llama-3-1-8b-fp8 --yes one deployment, no question\n"
                              "  fleetform deploy --env prod --yes --format json   for CI: one JSON report on stdout\n"
                              "\nexit codes: 0 all deployed or unchanged, 1 a deployment or the run failed, "
                              "2 usage error", formatter_class=raw)
    _add_common(p, ("text", "json"))
    p.add_argument("--only", action="append", metavar="NAME", help="deploy just this deployment (repeatable)")
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="deploys at a time (default: 4)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deployed; deploy nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    p.add_argument("--no-rollback", action="store_true",
                   help="leave a version that fails its smoke test live, for debugging")
    p.add_argument("--fail-fast", action="store_true", help="after the first failure, start no new deploy")
    p.add_argument("--strategy", choices=("rolling", "recreate"), default="rolling",
                   help="Modal's deployment strategy: rolling starts new containers before old ones drain "
                        "(default); recreate stops the old ones first")
    p.add_argument("--skip-smoke-test", action="store_true",
                   help="do not test deployed apps (so nothing is ever rolled back)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", help="show what Modal runs for each deployment: in sync, drifted, not deployed",
                       description="Per deployment: the live version and its tag, the tag the YAML renders to, "
                                   "the state (in sync, drifted, not deployed, unmanaged) and the URL; then the "
                                   f"orphans, managed apps no YAML describes. {needs}",
                       epilog="examples:\n  fleetform status --env prod\n  fleetform status --format json",
                       formatter_class=raw)
    _add_common(p, ("text", "json"))
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rollback", help="make an earlier version of a deployed app live again",
                       description="Roll a managed app back to the version before the live one (skipping versions "
                                   "that ran the same module), or to --to VERSION. Modal records the rollback as a "
                                   "new version; `status` then shows the app as drifted until the YAML matches. "
                                   f"Apps fleetform does not manage are refused. {needs}",
                       epilog="examples:\n  fleetform rollback llama-3-1-8b-fp8 --env prod\n"
                              "  fleetform rollback llama-3-1-8b-fp8 --to v3\n"
                              "  fleetform rollback llama-3-1-8b-fp8 --to ff-1a2b3c4d5e6f",
                       formatter_class=raw)
    p.add_argument("name", help="the deployment (or orphaned app) to roll back")
    _add_common(p, ("text", "json"))
    p.add_argument("--to", metavar="VERSION",
                   help="a version number (v3 or 3, as `modal app history` lists them) or a deployment tag (ff-...)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("destroy", help="stop a deployed app: its containers terminate, its URL stops answering",
                       description="Stop a managed app, after a yes/no question unless --yes (without a terminal, "
                                   "--yes is required). Volumes with the weights and caches are kept. Apps fleetform "
                                   f"does not manage are refused. {needs}",
                       epilog="examples:\n  fleetform destroy old-model --env dev\n"
                              "  fleetform destroy old-model --env dev --yes --format json",
                       formatter_class=raw)
    p.add_argument("name", help="the deployment (or orphaned app) to stop")
    _add_common(p, ("text", "json"))
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_destroy)


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
                                   "as file:line:column with the field path and a hint. A model whose config.json and "
                                   "weights are in the local Hugging Face cache is also checked to fit its GPUs.",
                       epilog="examples:\n"
                              "  fleetform validate                            every file in deployments/\n"
                              "  fleetform validate deployments/chat.yaml      one file (with the fleet.yaml beside it)\n"
                              "  fleetform validate --env prod                 with prod's overrides applied\n"
                              "  fleetform validate --format github            annotations and a summary for CI "
                              "(docs/ci.md)\n"
                              "\nexit codes: 0 valid (warnings allowed), 1 errors, 2 usage error",
                       formatter_class=raw)
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

    p = sub.add_parser("plan", help="show what would run, what it costs, and what a deploy would change",
                       description="Render the fleet and show, per deployment, the model and revision, GPUs, "
                                   "container range, concurrency, content hash and estimated GPU cost per hour "
                                   "(the gateway, when fleet.yaml enables it, is a CPU-only row at $0). With Modal "
                                   "credentials it also shows what `deploy` would do to each app (create, update, "
                                   "unchanged, conflict, orphan); without them it says so in one line and shows "
                                   "the offline plan. --against REF instead compares with the fleet at a git "
                                   "revision, offline: see docs/ci.md.",
                       epilog="examples:\n"
                              "  fleetform plan --env prod                       cost, and the live view with credentials\n"
                              "  fleetform plan --against origin/main            what this branch changes, field by field\n"
                              "  fleetform plan --against origin/main --format github   annotations for a pull request\n"
                              "  fleetform plan --env prod --detailed-exitcode   exit 2 if deploy would change something\n"
                              "\nexit codes: 0 ok, 1 error, 2 usage error; with --detailed-exitcode: 0 no changes, "
                              "2 changes pending, 1 any error",
                       formatter_class=raw)
    _add_common(p, ("text", "json", "github"))
    p.add_argument("--against", metavar="REF",
                   help="compare with the fleet at git revision REF (e.g. origin/main): what changes, field by field, "
                        "and which changes start new containers")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0 if nothing changes, 2 if changes are pending, 1 on error (without --against: "
                        "against what Modal runs, which needs credentials)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("explain", help="show a deployment's resolved values and where each came from",
                       description="Print every field of one resolved deployment with the file:line:column it came "
                                   "from: the deployment file, fleet.yaml defaults, an environment's overrides, "
                                   "or the schema's default.",
                       epilog="example: fleetform explain llama-3-3-70b-fp8 --env prod", formatter_class=raw)
    p.add_argument("name", help="the deployment to explain")
    _add_common(p, ("text", "json"))
    p.set_defaults(func=cmd_explain)

    _add_deploy_commands(sub)

    p = sub.add_parser("new", help="size a model and write a deployment for it on the cheapest GPUs that fit",
                       description="Read a model's config.json and weight sizes (from --from-dir, the local Hugging "
                                   "Face cache, or the Hub), weigh every GPU type and count for its weights plus the "
                                   "KV cache of --concurrency sequences of --max-model-len tokens, print the options, "
                                   "and write OUT/NAME.yaml on the cheapest that fits. GPU prices come from "
                                   "OUT/fleet.yaml's `prices` when it has them.",
                       epilog="examples:\n"
                              "  fleetform new meta-llama/Llama-3.1-8B-Instruct --revision 0e9e39f249a16976918f6564b8830bc894c89659\n"
                              "  fleetform new ORG/MODEL --revision SHA --max-model-len 8192 --concurrency 16\n"
                              "  fleetform new ORG/MODEL --revision SHA --from-dir ./checkpoint --quantization fp8\n"
                              "\nexit codes: 0 written, 1 the model cannot be read or fit (or the file exists), "
                              "2 usage error", formatter_class=raw)
    p.add_argument("model_id", metavar="MODEL_ID", help="Hugging Face repository id, e.g. meta-llama/Llama-3.1-8B")
    p.add_argument("--revision", required=True, metavar="SHA", help="the full 40-character commit to pin")
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="longest context to serve (default: the model's own limit)")
    p.add_argument("--concurrency", type=int, metavar="C",
                   help="sequences of that length to hold at once (default 1); also the autoscaler's target")
    p.add_argument("--from-dir", metavar="DIR", help="read config.json and weights from this folder (offline)")
    p.add_argument("--name", help="deployment name (default: derived from the model id)")
    p.add_argument("--quantization", choices=["none", "fp8", "awq", "gptq", "compressed-tensors", "bitsandbytes"],
                   help="the checkpoint's format, or fp8/bitsandbytes to quantize a 16-bit checkpoint on load")
    p.add_argument("--gpu-memory-utilization", type=float, metavar="U",
                   help="share of GPU memory vLLM may use (default 0.9)")
    p.add_argument("--out", default="deployments", metavar="DIR", help="folder to write NAME.yaml into "
                                                                      "(default: deployments)")
    p.add_argument("--force", action="store_true", help="replace an existing NAME.yaml")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=cmd_new)

    def add_target(p: argparse.ArgumentParser) -> None:
        p.add_argument("target", metavar="TARGET", help="a deployment name (its URL comes from Modal) or a base URL")
        p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
        p.add_argument("--env", metavar="ENV", help="environment of the deployment")
        p.add_argument("--deployment", metavar="NAME", help="with a URL: take served names and auth from this deployment")
        p.add_argument("--model", action="append", metavar="NAME", help="model name to use (repeatable for test)")
        p.add_argument("--auth", choices=("proxy", "api_key", "none"),
                       help="proxy: MODAL_PROXY_TOKEN_ID/SECRET; api_key: Bearer from --api-key-env (default: the "
                            "deployment's mode, or none for a bare URL)")
        p.add_argument("--api-key-env", default="FLEETFORM_API_KEY", metavar="VAR",
                       help="environment variable holding the API key (default: FLEETFORM_API_KEY)")
        p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("test", help="smoke-test an endpoint: health, models, chat, streaming chat",
                       description="Check a deployment end to end: GET /health (waiting out a cold start), "
                                   "/v1/models lists every served name, one chat completion and one streaming chat "
                                   "completion per prompt (the reference example's two system prompts by default). "
                                   "Prints status, time to first token, tokens/s and the text.",
                       epilog="examples:\n  fleetform test llama-3-1-8b-fp8\n"
                              "  fleetform test http://127.0.0.1:8000 --deployment llama-3-1-8b-fp8\n"
                              "  fleetform test http://127.0.0.1:8000 --model llm --prompt 'Say hi.'",
                       formatter_class=raw)
    add_target(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="user prompt (repeatable)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds to wait for /health")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("bench", help="load-test an endpoint with vLLM's serving metrics",
                       description="Generate load against /v1/chat/completions (streaming, token counts from the "
                                   "server's usage) and report request and token throughput, TTFT, TPOT, ITL and "
                                   "end-to-end latency (mean, median, p90, p99) as `vllm bench serve` defines them, "
                                   "plus errors by kind.",
                       epilog="examples:\n  fleetform bench llama-3-1-8b-fp8 --concurrency 1,16,64 --num-requests 200\n"
                              "  fleetform bench http://127.0.0.1:8000 --model llm --request-rate 4 --duration 60\n"
                              "  fleetform bench URL --model llm --input-len 512 --output-len 128 --ignore-eos "
                              "--output results.json", formatter_class=raw)
    add_target(p)
    p.add_argument("--concurrency", type=lambda t: _numbers(t, int), metavar="C[,C...]",
                   help="closed loop: sweep these concurrency levels (default 1)")
    p.add_argument("--request-rate", type=lambda t: _numbers(t, float), metavar="R[,R...]",
                   help="open loop: Poisson arrivals at R requests/s (each rate a level)")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="open loop: cap on requests in flight")
    p.add_argument("--num-requests", type=int, metavar="N", help="requests per level (default 100 without --duration)")
    p.add_argument("--duration", type=float, metavar="S", help="seconds per level")
    p.add_argument("--input-len", type=int, default=128, metavar="N", help="synthetic prompt length (~tokens)")
    p.add_argument("--output-len", type=int, default=128, metavar="N", help="max_tokens of each request")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --output-len tokens (vLLM extension)")
    p.add_argument("--dataset", metavar="FILE", help='JSONL prompts: {"prompt": ...} or {"messages": [...]} a line')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--health-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for /health before measuring (a cold start is not measured)")
    p.add_argument("--output", metavar="FILE", help="write config and results as JSON")
    p.set_defaults(func=cmd_bench)

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
