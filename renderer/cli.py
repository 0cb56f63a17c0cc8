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


def _target(args):
    """(endpoint, model names) for TARGET: a URL, or a deployment name whose URL Modal knows.

    With a deployment name (or --deployment NAME beside a URL), the served names and the auth
    mode come from its YAML, so the test checks exactly what the fleet declares.
    """
    from renderer.client import Endpoint

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


def cmd_test(args) -> int:
    from renderer.client import ClientError, render_smoke_report, run_smoke

    try:
        endpoint, names = _target(args)
        if not names:
            print("error: name the model(s) to expect with --model, or give a deployment name", file=sys.stderr)
            return EXIT_USAGE
        prompts = args.prompt or None
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
    from renderer.bench import BenchConfig, render_bench_results, run_bench_sync
    from renderer.client import ClientError

    config = BenchConfig(
        concurrency=tuple(args.concurrency or [1]), request_rates=args.request_rate,
        max_concurrency=args.max_concurrency, num_requests=args.num_requests,
        duration=args.duration, input_len=args.input_len, output_len=args.output_len, ignore_eos=args.ignore_eos,
        dataset=args.dataset, seed=args.seed,
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
