"""`fleetform test`, `bench` and `serve`: talk to a served model, or serve one on this machine."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from renderer.cli.common import RAW, non_negative, one, output_file, port, positive, positive_list, resolve_args
from renderer.cli.output import CliError, ExitCode, TextReporter, console, dumps
from renderer.endpoint import AUTH_KINDS


def command_line(text: str) -> tuple[str, ...]:
    """`--vllm "python3 -m vllm.entrypoints.cli.main"`: split as a shell would, or a usage error."""
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into words: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("an empty command")
    return words


def add_parsers(sub: Any) -> None:
    def add_target(p: argparse.ArgumentParser) -> None:
        p.add_argument("target", metavar="TARGET", help="a deployment name (its URL comes from Modal) or a base URL")
        p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
        p.add_argument("--env", metavar="ENV", help="environment of the deployment")
        p.add_argument(
            "--deployment", metavar="NAME", help="with a URL: take served names and auth from this deployment"
        )
        p.add_argument(
            "--model",
            action="append",
            metavar="NAME",
            help="model name to use (repeatable for test; default: the deployment's served names, or for "
            "a bare URL those the server lists at /v1/models)",
        )
        p.add_argument(
            "--auth",
            choices=AUTH_KINDS,
            help="proxy: MODAL_PROXY_TOKEN_ID/SECRET; api_key: Bearer from --api-key-env (default: the "
            "deployment's mode, or none for a bare URL)",
        )
        p.add_argument(
            "--api-key-env",
            default="FLEETFORM_API_KEY",
            metavar="VAR",
            help="environment variable holding the API key (default: FLEETFORM_API_KEY)",
        )
        p.add_argument("--format", choices=("text", "json"), default="text")
        p.add_argument(
            "--health-timeout",
            type=positive(float),
            default=600.0,
            metavar="S",
            help="seconds to wait for /health, e.g. for a cold start (default: 600)",
        )
        p.add_argument("--timeout", dest="health_timeout", type=positive(float), help=argparse.SUPPRESS)  # old name

    p = sub.add_parser(
        "test",
        help="smoke-test an endpoint: health, models, chat, streaming chat",
        description="Check a deployment end to end: GET /health (waiting out a cold start), "
        "/v1/models lists every served name, one chat completion and one streaming chat "
        "completion per prompt (the reference example's two system prompts by default). "
        "Prints status, time to first token, tokens/s and the text.",
        epilog="examples (need Modal credentials or a running server):\n  fleetform test llama-3-1-8b-fp8\n"
        "  fleetform test http://127.0.0.1:8000 --deployment llama-3-1-8b-fp8\n"
        "  fleetform test http://127.0.0.1:8000 --model llm --prompt 'Say hi.'",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_target(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="user prompt (repeatable)")
    p.add_argument("--max-tokens", type=positive(int), default=256, metavar="N")
    p.set_defaults(func=run_test, needs=("aiohttp",))

    p = sub.add_parser(
        "bench",
        help="load-test an endpoint with vLLM's serving metrics",
        description="Generate load against /v1/chat/completions (streaming, token counts from the "
        "server's usage) and report request and token throughput, TTFT, TPOT, ITL and "
        "end-to-end latency (mean, median, p90, p99) as `vllm bench serve` defines them, "
        "plus errors by kind.",
        epilog="examples (need Modal credentials or a running server):\n"
        "  fleetform bench llama-3-1-8b-fp8 --concurrency 1,16,64 --num-requests 200\n"
        "  fleetform bench http://127.0.0.1:8000 --model llm --request-rate 4 --duration 60\n"
        "  fleetform bench URL --model llm --input-len 512 --output-len 128 --ignore-eos "
        "--output results.json",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_target(p)
    p.add_argument(
        "--concurrency",
        type=positive_list(int),
        metavar="C[,C...]",
        help="closed loop: sweep these concurrency levels (default 1)",
    )
    p.add_argument(
        "--request-rate",
        type=positive_list(float),
        metavar="R[,R...]",
        help="open loop: Poisson arrivals at R requests/s (each rate a level)",
    )
    p.add_argument(
        "--max-concurrency",
        type=positive(int),
        metavar="N",
        help="open loop (with --request-rate): cap on requests in flight",
    )
    p.add_argument(
        "--num-requests", type=positive(int), metavar="N", help="requests per level (default 100 without --duration)"
    )
    p.add_argument("--duration", type=positive(float), metavar="S", help="seconds per level")
    p.add_argument(
        "--input-len", type=positive(int), default=128, metavar="N", help="synthetic prompt length (~tokens)"
    )
    p.add_argument("--output-len", type=positive(int), default=128, metavar="N", help="max_tokens of each request")
    p.add_argument("--ignore-eos", action="store_true", help="always generate --output-len tokens (vLLM extension)")
    p.add_argument("--dataset", metavar="FILE", help='JSONL prompts: {"prompt": ...} or {"messages": [...]} a line')
    p.add_argument("--seed", type=non_negative(int), default=0)
    p.add_argument(
        "--output",
        type=output_file,
        metavar="FILE",
        help="write config and results as JSON (the document --format json prints)",
    )
    p.set_defaults(func=run_bench, needs=("aiohttp",))

    p = sub.add_parser(
        "serve",
        help="run a deployment's vLLM command on this machine",
        description="Run the exact vLLM command line the rendered app runs, on this machine's GPU, "
        "wait until it is healthy, and stream its logs. Ctrl-C stops it.",
        epilog="example (needs vLLM and a GPU):\n"
        "  fleetform serve llama-3-1-8b-fp8 --local --model-path /models/llama --load-format dummy",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("name", help="the deployment to serve")
    p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
    p.add_argument("--env", metavar="ENV", help="apply this environment's overrides")
    add_local_options(p, "run on this machine (required)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens the port to the network)",
    )
    p.add_argument("--print-argv", action="store_true", help="print the command line and exit")
    p.set_defaults(func=run_serve, format="text")


def add_local_options(p: argparse.ArgumentParser, local_help: str) -> Any:
    """The options of a vLLM run on this machine, one definition for `serve --local` and `tune --local`;
    returns their argument group, for a command's own local options."""
    g = p.add_argument_group("vLLM on this machine")
    g.add_argument("--local", action="store_true", help=local_help)
    g.add_argument("--model-path", metavar="DIR", help="serve a local copy of the model instead of the hub id")
    g.add_argument("--load-format", metavar="FMT", help="vLLM --load-format, e.g. dummy for random weights")
    g.add_argument("--port", type=port, help="port to listen on (default: the deployment's)")
    g.add_argument(
        "--vllm",
        type=command_line,
        metavar="CMD",
        help='the vLLM executable (default: "vllm"), e.g. "python3 -m vllm.entrypoints.cli.main"',
    )
    g.add_argument("--startup-timeout", type=positive(int), metavar="S", help="seconds to wait for health")
    return g


def local_options(args: argparse.Namespace, host: str | None) -> Any:
    """`endpoint.serve.LocalOptions` from the options `add_local_options` defines."""
    from renderer.endpoint.serve import LocalOptions

    return LocalOptions(
        model_path=args.model_path,
        load_format=args.load_format,
        port=args.port,
        host=host,
        vllm=args.vllm + ("serve",) if args.vllm else LocalOptions.vllm,
        startup_timeout=args.startup_timeout,
    )


def require_vllm(opts: Any) -> None:
    """The vLLM command must be one this machine can run, before anything starts."""
    import shutil

    if shutil.which(opts.vllm[0]) is None:
        raise CliError(
            f"cannot run {opts.vllm[0]!r}: it is not on PATH. Install vLLM (pip install vllm) on a machine "
            "with a GPU, or name its command with --vllm"
        )


# --- test and bench ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What TARGET names: the endpoint to call, the model names to expect, and (for a deployment name
    or --deployment) the deployment and the fleet it was resolved from."""

    endpoint: Any  # endpoint.client.Endpoint
    names: list[str]
    deployment: Any = None  # config.spec.Deployment
    fleet: Any = None  # config.resolve.ResolvedFleet


def resolve_target(args: argparse.Namespace, report: TextReporter) -> Target:
    """TARGET: a URL, or a deployment name whose URL Modal knows.

    With a deployment name (or --deployment NAME beside a URL), the served names and the auth
    mode come from its YAML, so the test checks exactly what the fleet declares.
    """
    from renderer.endpoint.client import Endpoint

    is_url = args.target.startswith(("http://", "https://"))
    deployment = fleet = None
    if not is_url or args.deployment:
        fleet = resolve_args(args, report)
        deployment = one(fleet, args.deployment or args.target)
    names = list(args.model or (deployment.model.names if deployment else []))
    auth = args.auth or (deployment.auth.mode if deployment else "none")
    url = args.target
    if not is_url:
        from renderer import modal_api
        from renderer.cli.extras import require

        require(args.command, "modal")  # Modal knows the deployment's URL

        backend = modal_api.default_backend()
        if not backend.credentials_available():
            raise CliError(modal_api.NO_CREDENTIALS)
        try:
            url = backend.web_url(deployment.name, deployment.modal_env)
        except modal_api.BackendError as exc:
            raise CliError(str(exc)) from None
        if not url:
            raise CliError(f"{deployment.name} is not deployed (no URL); run `fleetform deploy` first")
    return Target(Endpoint.from_env(url, auth, api_key_var=args.api_key_env), names, deployment, fleet)


def target(args: argparse.Namespace, report: TextReporter) -> tuple[Any, list[str]]:
    """(endpoint, model names) for TARGET; see `resolve_target`."""
    found = resolve_target(args, report)
    return found.endpoint, found.names


def say_waiting(url: str, timeout: float) -> None:
    """Waiting for /health can take minutes (a cold start): say so before the first request."""
    print(
        f"checking {url.rstrip('/')}/health (waits up to {timeout:g} s for a cold start)", file=sys.stderr, flush=True
    )


@dataclass
class SmokeResult:
    report: Any  # endpoint.client.SmokeReport

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.report.ok else ExitCode.INVALID

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict()

    def render(self, console: Any) -> None:
        from renderer.cli.views import render_smoke_report

        render_smoke_report(self.report, console)


def run_test(args: argparse.Namespace, report: TextReporter) -> SmokeResult:
    from renderer.endpoint.client import ClientError, run_smoke

    try:
        endpoint, names = target(args, report)  # no names: those the server lists at /v1/models
        say_waiting(endpoint.base_url, args.health_timeout)
        smoke = run_smoke(
            endpoint, names, prompts=args.prompt or None, health_timeout=args.health_timeout, max_tokens=args.max_tokens
        )
    except ClientError as exc:
        raise CliError(exc.message) from None
    return SmokeResult(smoke)


@dataclass
class BenchRun:
    config: Any  # endpoint.bench.BenchConfig
    base_url: str
    results: list

    @property
    def exit_code(self) -> int:
        failed = sum(r.failed for r in self.results)
        completed = sum(r.completed for r in self.results)
        return ExitCode.OK if completed and not failed else ExitCode.INVALID

    def to_dict(self) -> dict[str, Any]:
        """The one document --format json prints and --output writes: the config and the results."""
        c = self.config
        return {
            "config": {k: v for k, v in c.__dict__.items() if k != "dataset"}
            | {"dataset": str(c.dataset) if c.dataset else None, "base_url": self.base_url},
            "results": [r.to_dict() for r in self.results],
        }

    def render(self, console: Any) -> None:
        from renderer.cli.views import render_bench_results

        render_bench_results(self.results, console)


def run_bench(args: argparse.Namespace, report: TextReporter) -> BenchRun:
    import dataclasses

    from renderer.endpoint.bench import BenchConfig, run_bench_sync
    from renderer.endpoint.client import ClientError

    if args.max_concurrency is not None and not args.request_rate:
        raise CliError(
            "--max-concurrency caps the open loop of --request-rate; for a closed loop use --concurrency",
            ExitCode.USAGE,
        )
    config = BenchConfig(
        concurrency=tuple(args.concurrency or [1]),
        request_rates=args.request_rate,
        max_concurrency=args.max_concurrency,
        num_requests=args.num_requests,
        duration=args.duration,
        input_len=args.input_len,
        output_len=args.output_len,
        ignore_eos=args.ignore_eos,
        dataset=args.dataset,
        seed=args.seed,
        health_timeout=args.health_timeout,
    )
    if config.num_requests is None and config.duration is None:
        config = dataclasses.replace(config, num_requests=100)
    try:
        config.validate()
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    try:
        endpoint, names = target(args, report)
        say_waiting(endpoint.base_url, args.health_timeout)
        results = run_bench_sync(
            endpoint, names[0] if names else None, config, progress=True, console=console(stderr=args.format == "json")
        )
    except ClientError as exc:
        raise CliError(exc.message) from None
    result = BenchRun(config, endpoint.base_url, results)
    if args.output:
        from renderer.codegen.write import write_file

        try:
            write_file(args.output, dumps(result.to_dict()) + "\n", replace=True)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return result


# --- serve ---------------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace, report: TextReporter) -> int:
    from renderer.endpoint.serve import ServeError, local_argv, run_local

    if not args.local:
        raise CliError(
            "serve runs on this machine only: add --local (to run on Modal, use `fleetform deploy`)", ExitCode.USAGE
        )
    d = one(resolve_args(args, report), args.name)
    opts = local_options(args, args.host)
    if args.print_argv:
        print(shlex.join(local_argv(d, opts)))
        return ExitCode.OK
    require_vllm(opts)
    try:
        served = run_local(d, opts, log=lambda m: print(f"[fleetform] {m}", file=sys.stderr, flush=True))
    except ServeError as exc:  # said as the log lines before it are
        raise CliError(f"[fleetform] error: {exc}", plain=True) from None
    except OSError as exc:  # the executable vanished, or is not executable
        raise CliError(f"cannot run {shlex.join(opts.vllm)}: {exc.strerror or exc}") from None
    if served.interrupted:
        return ExitCode.INTERRUPTED
    return served.returncode or ExitCode.OK
