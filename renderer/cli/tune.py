"""`fleetform tune`: the per-container concurrency that meets a latency SLO, and the autoscaling numbers.

The search is `renderer.endpoint.tune`; this module parses the options, measures each level with
`bench`'s load generator, prints progress on stderr, and renders the answer (table, the charts of
`cli.charts` in the terminal and as `--plot` HTML or PNG, `--write` into the deployment's YAML). With
`--local` it starts the deployment's vLLM on this machine (`endpoint.serve.LocalServer`, as
`serve --local`) once per `--engine` setting, each setting resolved as if the YAML said it, searches
each, and names the best.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass, field
from typing import Any

from renderer.cli.charts import chart, plot_file, require_writers, terminal_chart
from renderer.cli.common import RAW, fraction, non_negative, number, one, positive
from renderer.cli.endpoint import add_local_options
from renderer.cli.output import CliError, ExitCode, TextReporter, console, literal
from renderer.endpoint import AUTH_KINDS

DEFAULTS = {"start": 1, "limit": 1024, "factor": 2.0, "resolution": 0.1, "headroom": 0.8, "tail": 10, "noise": 0.1}


def _fraction_below_one(text: str) -> float:
    """A number in [0, 1)."""
    value = number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _factor(text: str) -> float:
    """A growth factor: a finite number above 1."""
    value = number(float, text)
    if not value > 1:
        raise argparse.ArgumentTypeError(f"expected a number above 1, got {text!r}")
    return value


def _slo(text: str) -> list:
    from renderer.endpoint.tune import SloError, parse_slo

    try:
        return parse_slo(text)
    except SloError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gpu(text: str) -> tuple[str, int]:
    from renderer.gpus import GPU_TYPES, parse_gpu_type

    name, _, count = text.partition(":")
    if parse_gpu_type(name)[0] not in GPU_TYPES:
        raise argparse.ArgumentTypeError(f"unknown GPU type {name!r}; one of {', '.join(GPU_TYPES)}")
    if count and (not count.isdigit() or int(count) < 1):
        raise argparse.ArgumentTypeError(f"expected TYPE[:COUNT] with COUNT >= 1, got {text!r}")
    return parse_gpu_type(name)[0], int(count or 1)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="find the per-container concurrency that meets a latency SLO",
        description="Search for the highest per-container concurrency at which every SLO term holds "
        "(grow geometrically, then bisect), with as few requests as keep each percentile stable, and "
        "report max_concurrency, target_concurrency (a fraction of it, headroom for the autoscaler), the "
        "throughput per container there and its cost per million output tokens. --write puts the two "
        "numbers into the deployment's YAML file in place. Metrics as `fleetform bench` defines them.\n\n"
        "SLO syntax: comma-separated METRIC_STAT<=VALUE terms; METRIC ttft, tpot, itl or e2el; STAT p50, "
        "p90 or p99; VALUE with ms or s; and error_rate<=VALUE as a fraction or with % (default: no errors).",
        epilog="examples (need a server):\n"
        '  fleetform tune llama-3-1-8b-fp8 --slo "ttft_p90<=500ms,tpot_p90<=40ms" --write\n'
        '  fleetform tune http://127.0.0.1:8000 --deployment llama-3-1-8b-fp8 --slo "e2el_p99<=8s,error_rate<=1%" '
        "--plot tune.html\n"
        '  fleetform tune URL --model llm --gpu H100 --slo "ttft_p50<=200ms" --input-len 512 --format json\n'
        "\nexamples (need vLLM and a GPU): start vLLM for each engine setting, search each, name the best\n"
        '  fleetform tune llama-3-1-8b-fp8 --local --slo "tpot_p90<=25ms" --engine max_num_seqs=64,128,256\n'
        "  fleetform tune llama-3-1-8b-fp8 --local --model-path /models/llama --load-format dummy "
        '--slo "ttft_p90<=500ms" --engine max_num_seqs=128,256 kv_cache_dtype=auto,fp8 --write\n'
        "\n--engine: the grid is every combination of the values; each setting is checked as if the YAML said\n"
        "it (a bad value fails before anything starts, exit 1). The best setting has the highest output tokens\n"
        "per GPU-dollar at its target among those that meet the SLO; --write puts its concurrency numbers and\n"
        "engine values into the YAML. Exit 0 when every setting started and was searched and one met the SLO;\n"
        "1 when a setting failed to start or its search stopped (the others still run; nothing is written),\n"
        "or none met the SLO; 130 on Ctrl-C, which stops the running vLLM first.\n"
        "\nsee docs/tune.md for how the search decides",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("target", metavar="TARGET", help="a deployment name (its URL comes from Modal) or a base URL")
    p.add_argument("paths", nargs="*", metavar="PATH", help="deployment files or folders (default: deployments/)")
    p.add_argument("--env", metavar="ENV", help="environment of the deployment")
    p.add_argument("--deployment", metavar="NAME", help="with a URL: take served names, auth, GPU and file from it")
    p.add_argument("--model", action="append", metavar="NAME", help="model name to use (default: the first served)")
    p.add_argument("--auth", choices=AUTH_KINDS, help="as for bench (default: the deployment's mode, or none)")
    p.add_argument("--api-key-env", default="FLEETFORM_API_KEY", metavar="VAR", help="variable holding the API key")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--health-timeout", type=positive(float), default=600.0, metavar="S", help="seconds to wait for /health"
    )
    p.add_argument("--slo", type=_slo, required=True, metavar="TERMS", help='e.g. "ttft_p90<=500ms,tpot_p90<=40ms"')
    g = p.add_argument_group("workload (as for bench)")
    g.add_argument("--input-len", type=positive(int), default=128, metavar="N", help="synthetic prompt length")
    g.add_argument("--output-len", type=positive(int), default=128, metavar="N", help="max_tokens of each request")
    g.add_argument("--ignore-eos", action="store_true", help="always generate --output-len tokens (vLLM extension)")
    g.add_argument("--dataset", metavar="FILE", help='JSONL prompts: {"prompt": ...} or {"messages": [...]} a line')
    g.add_argument("--seed", type=non_negative(int), default=0)
    g = p.add_argument_group("search")
    g.add_argument(
        "--start",
        type=positive(int),
        default=DEFAULTS["start"],
        metavar="C",
        help="first level (1); if it fails, the search shrinks from it",
    )
    g.add_argument("--limit", type=positive(int), default=DEFAULTS["limit"], metavar="C", help="highest level (1024)")
    g.add_argument("--factor", type=_factor, default=DEFAULTS["factor"], metavar="X", help="growth per level (2)")
    g.add_argument(
        "--resolution",
        type=_fraction_below_one,
        default=DEFAULTS["resolution"],
        metavar="F",
        help="bisect until pass and fail are within max(1, F x pass) (0.1)",
    )
    g.add_argument(
        "--headroom",
        type=fraction,
        default=DEFAULTS["headroom"],
        metavar="F",
        help="target_concurrency = floor(F x max_concurrency) (0.8)",
    )
    g.add_argument(
        "--tail-samples",
        type=positive(int),
        default=DEFAULTS["tail"],
        metavar="K",
        help="samples above the SLO's highest percentile per level (10: p90 -> 100 requests)",
    )
    g.add_argument(
        "--noise",
        type=_fraction_below_one,
        default=DEFAULTS["noise"],
        metavar="F",
        help="repeat a level, with twice the requests, when a figure is within F of its bound (0.1); a level "
        "stops early once enough requests lie beyond a bound and F that it must fail",
    )
    g.add_argument("--max-requests", type=positive(int), metavar="N", help="cap on the requests of one level")
    g = p.add_argument_group("output")
    g.add_argument("--gpu", type=_gpu, metavar="TYPE[:COUNT]", help="price this GPU (default: the deployment's)")
    g.add_argument(
        "--plot",
        type=plot_file,
        action="append",
        metavar="FILE",
        help="write the chart to FILE: .html (a self-contained page) or .png (needs the plot extra); repeatable",
    )
    g.add_argument(
        "--write",
        action="store_true",
        help="set scaling.target/max_concurrency (with --engine: and the best setting's values) in the deployment's "
        "file",
    )
    g = add_local_options(p, "start the deployment's vLLM on this machine and tune it (TARGET: a deployment name)")
    g.add_argument(
        "--engine",
        action="extend",
        nargs="+",
        metavar="KEY=V1,V2",
        help="with --local: restart vLLM for each combination of these engine values and search each; KEY one of "
        "max_num_seqs, max_num_batched_tokens, gpu_memory_utilization, kv_cache_dtype (repeatable)",
    )
    g.add_argument(
        "--log-dir", metavar="DIR", help="with --local: where vLLM's output of each setting goes (default: a temp dir)"
    )
    p.set_defaults(func=run_tune, needs=("aiohttp",))


# --- the run ------------------------------------------------------------------------------------------------------


@dataclass
class TuneRun:
    answer: Any  # endpoint.tune.TuneAnswer
    base_url: str
    model: str
    workload: dict[str, Any]
    written: str | None = None  # the file --write changed
    diff: str = ""
    notes: list[str] = field(default_factory=list)
    grid: Any = None  # endpoint.tune.EngineGrid with --local; the answer is then its best setting's

    @property
    def exit_code(self) -> int:
        if self.grid is not None and (self.grid.failed or self.grid.best is None):
            return ExitCode.INVALID
        return ExitCode.OK if self.answer.max_concurrency is not None and not self.answer.stopped else ExitCode.INVALID

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "workload": self.workload,
            **self.answer.to_dict(),
            "write": None if self.written is None else {"file": self.written, "diff": self.diff},
            "notes": self.notes,
            "engine": None if self.grid is None else self.grid.to_dict(),
        }

    def render(self, out: Any) -> None:
        if self.grid is not None:
            render_grid(self.grid, out)
            if self.grid.best is None:
                for note in self.notes:
                    out.print(literal(note), soft_wrap=True)
                return
            out.print(literal(f"best setting: {self.grid.best.label}; its search:"))
        from rich.table import Table

        a = self.answer
        table = Table(title=literal(f"tune: {self.model} at {self.base_url}"))
        for col in ("concurrency", "phase", "requests", *(t.name for t in a.slo), "output tok/s", "verdict"):
            table.add_column(col, justify="left" if col in ("phase", "verdict") else "right")
        for lv in sorted(a.levels, key=lambda lv: (lv.concurrency, a.levels.index(lv))):
            cells = [str(lv.concurrency), lv.phase + (" (repeated)" if lv.repeated else ""), str(lv.requests)]
            cells += [_value(t, lv.values.get(t.name)) for t in a.slo]
            cells += [
                f"{lv.result.output_throughput:.1f}",
                "pass" if lv.passed else "FAIL: " + "; ".join(lv.violations),
            ]
            table.add_row(*map(literal, cells))
        out.print(table)
        out.print(literal("SLO: " + ", ".join(t.text() for t in a.slo)))
        if a.max_concurrency is None:
            out.print(literal(f"no level meets the SLO (from concurrency {a.config.start})"))
        else:
            capped = f" (the limit, {a.config.limit}: the true maximum may be higher)" if a.capped else ""
            out.print(literal(f"max_concurrency: {a.max_concurrency}{capped}"))
            out.print(
                literal(
                    f"target_concurrency: {a.target_concurrency} "
                    f"(floor({a.config.headroom:g} x {a.max_concurrency}), headroom for the autoscaler)"
                )
            )
            tps = a.output_throughput
            if tps is not None:
                out.print(literal(f"throughput per container at the target: {tps:.1f} output tok/s"))
            for c in a.costs:
                per_m = "n/a" if c.usd_per_million_output_tokens is None else f"${c.usd_per_million_output_tokens:.4f}"
                out.print(
                    literal(f"cost: {c.gpu} x {c.count} (${c.usd_per_hour:.2f}/h): {per_m} per million output tokens")
                )
        if a.stopped:
            out.print(literal(f"stopped: {a.stopped}"), style="red")
        out.print(literal(f"{a.requests} requests over {len(a.levels)} levels"))
        for note in self.notes:
            out.print(literal(note), soft_wrap=True)
        out.print(literal(terminal_chart(a)))
        if self.written:
            out.print(literal(f"wrote {self.written}:"), soft_wrap=True)
            out.print(literal(self.diff.rstrip("\n")), soft_wrap=True)


def _value(term: Any, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if term.stat else f"{value * 100:.1f}%"


def _resolve_target(args: argparse.Namespace, report: TextReporter) -> tuple[Any, list[str], Any, dict]:
    """(endpoint, model names, deployment or None, fleet prices): TARGET as `bench` resolves it."""
    from renderer.cli.endpoint import resolve_target

    found = resolve_target(args, report)
    prices = dict(found.fleet.prices or {}) if found.fleet is not None else {}
    return found.endpoint, found.names, found.deployment, prices


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(SearchConfig, the workload as a BenchConfig) from the options, or a usage error."""
    from renderer.endpoint.bench import BenchConfig
    from renderer.endpoint.tune import SearchConfig

    search_config = SearchConfig(
        start=args.start,
        factor=args.factor,
        limit=args.limit,
        resolution=args.resolution,
        headroom=args.headroom,
        tail_samples=args.tail_samples,
        noise=args.noise,
        max_requests=args.max_requests,
    )
    base = BenchConfig(
        num_requests=1,
        input_len=args.input_len,
        output_len=args.output_len,
        ignore_eos=args.ignore_eos,
        dataset=args.dataset,
        seed=args.seed,
        health_timeout=args.health_timeout,
        max_consecutive_failures=10,  # a dead server ends the level, and the search, after 10 failures
    )
    try:
        search_config.validate()
        base.validate()
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    return search_config, base


def _workload(base: Any) -> dict[str, Any]:
    return {
        "input_len": base.input_len,
        "output_len": base.output_len,
        "ignore_eos": base.ignore_eos,
        "dataset": str(base.dataset) if base.dataset else None,
        "seed": base.seed,
    }


def _on_level(slo: list) -> Any:
    def on_level(level: Any) -> None:
        figures = "  ".join(f"{t.name} {_value(t, level.values.get(t.name))}" for t in slo)
        verdict = "pass" if level.passed else "FAIL (" + "; ".join(level.violations) + ")"
        again = ", repeated" if level.repeated else ""
        if level.result.decided:
            again += f", stopped early: {level.result.decided}"
        print(
            f"[tune] concurrency {level.concurrency} ({level.phase}, {level.requests} requests{again}): {figures}  "
            f"output {level.result.output_throughput:.1f} tok/s  {verdict}",
            file=sys.stderr,
            flush=True,
        )

    return on_level


def _gpus(args: argparse.Namespace, deployment: Any) -> list[tuple[str, int]]:
    if args.gpu:
        return [(args.gpu[0], args.gpu[1])]
    if deployment is None:
        return []
    from renderer.gpus import parse_gpu_type

    return [(parse_gpu_type(t)[0], deployment.gpu.count) for t in (deployment.gpu.type, *deployment.gpu.fallbacks)]


def _price(answer: Any, gpus: list[tuple[str, int]], prices: dict) -> None:
    if gpus:
        from renderer.plan.cost import gpu_price

        answer.price([(g, n, gpu_price(g, prices)) for g, n in gpus])


def run_tune(args: argparse.Namespace, report: TextReporter) -> TuneRun:
    require_writers(args.plot)
    if args.local or args.engine:
        return run_tune_local(args, report)
    import asyncio

    from renderer.cli.endpoint import say_waiting
    from renderer.endpoint.bench import resolve_model, run_bench_sync
    from renderer.endpoint.client import ClientError, open_session, wait_for_health
    from renderer.endpoint.tune import level_config, search

    search_config, base = _configs(args)
    if args.log_dir:
        raise CliError("--log-dir is where --local writes vLLM's output: add --local", ExitCode.USAGE)
    is_url = args.target.startswith(("http://", "https://"))
    if args.write and is_url and not args.deployment:
        raise CliError("--write needs the deployment: name it as TARGET or with --deployment", ExitCode.USAGE)
    try:
        endpoint, names, deployment, prices = _resolve_target(args, report)
    except ClientError as exc:
        raise CliError(exc.message) from None
    say_waiting(endpoint.base_url, args.health_timeout)

    async def first_model() -> str:
        async with open_session(endpoint, limit=1) as session:
            await wait_for_health(endpoint, args.health_timeout, base.health_interval, session=session)
            return await resolve_model(session, endpoint, names[0] if names else None)

    err = console(stderr=True)

    def measure(concurrency: int, requests: int, until: Any) -> Any:
        config = level_config(base, concurrency, requests)
        return run_bench_sync(endpoint, model, config, progress=sys.stderr.isatty(), console=err, until=until)[0]

    try:
        model = asyncio.run(first_model())
        answer = search(measure, args.slo, search_config, _on_level(args.slo))
    except ClientError as exc:
        raise CliError(exc.message) from None
    _price(answer, _gpus(args, deployment), prices)
    run = TuneRun(answer, endpoint.base_url, model, _workload(base))
    _plot(run, args.plot, f"fleetform tune: {model}")
    if args.write:
        if answer.max_concurrency is None or answer.stopped:
            run.notes.append("nothing written: the search found no SLO-meeting level it could trust")
        else:
            _write(run, deployment, args.env)
    return run


def _plot(run: TuneRun, paths: list[str] | None, title: str) -> None:
    from renderer.codegen.write import write_file

    for path in paths or []:
        try:
            write_file(path, chart(path, run.answer, title), replace=True)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        run.notes.append(f"chart written to {path}")


# --- --local: vLLM on this machine, once per engine setting -------------------------------------------------------


def _settings(args: argparse.Namespace, fleet: Any, name: str, report: TextReporter) -> list[tuple[Any, dict]]:
    """(resolved deployment, values) for each setting of the --engine grid (one without --engine), every
    setting resolved and checked as if the deployment's file said it; any problem stops here."""
    from renderer.config.load import LoadError, load_option
    from renderer.config.resolve import Overlay, merge, resolve_with
    from renderer.endpoint.tune import EngineTermError, engine_grid

    try:
        grid = engine_grid(args.engine or [])
    except EngineTermError as exc:
        raise CliError(str(exc), ExitCode.USAGE if exc.usage else ExitCode.INVALID) from None
    out, problems = [], []
    for values in grid:
        try:
            nodes = [load_option(f"--engine {k}={v}", ("engine", k), v) for k, v in values.items()]
        except LoadError as exc:
            problems.extend(d for d in exc.diagnostics if d not in problems)
            continue
        if not nodes:
            out.append((one(fleet, name), {}))
            continue
        root = nodes[0]
        for node in nodes[1:]:
            root = merge(root, node)
        deployment, found = resolve_with(fleet, name, Overlay(name, root))
        problems.extend(d for d in found if d not in problems)
        if deployment is not None:
            out.append((deployment, {k: getattr(deployment.engine, k) for k in values}))
    if any(d.is_error for d in problems):
        report.diagnostics(problems)
        n = sum(d.is_error for d in problems)
        from renderer.diagnostics import diagnostics_json

        raise CliError(
            f"{n} error(s) in --engine; no vLLM was started",
            ExitCode.INVALID,
            plain=True,
            doc={"ok": False, "diagnostics": diagnostics_json(problems)},
        )
    return out


def _tail(path: str | None, lines: int = 15) -> str:
    try:
        with open(path or "", encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def _search_setting(
    run: Any, url: str, deployment: Any, args: argparse.Namespace, search_config: Any, base: Any, err: Any
) -> None:
    """The search against one setting's local vLLM. Ctrl-C is not caught: it ends the whole grid."""
    import asyncio

    from renderer.endpoint.bench import resolve_model, run_bench
    from renderer.endpoint.client import Endpoint, open_session
    from renderer.endpoint.tune import level_config, search

    endpoint = Endpoint.from_env(url, args.auth or "none", api_key_var=args.api_key_env)
    names = list(args.model or deployment.model.names)

    async def first_model() -> str:
        async with open_session(endpoint, limit=1) as session:
            return await resolve_model(session, endpoint, names[0] if names else None)

    model = run.model = asyncio.run(first_model())

    def measure(concurrency: int, requests: int, until: Any) -> Any:
        config = level_config(base, concurrency, requests)
        return asyncio.run(run_bench(endpoint, model, config, sys.stderr.isatty(), console=err, until=until))[0]

    run.answer = search(measure, args.slo, search_config, _on_level(args.slo))


def run_tune_local(args: argparse.Namespace, report: TextReporter) -> TuneRun:
    """--local: for each engine setting, start vLLM as `serve --local` does, search it, stop it."""
    import os
    import signal
    import tempfile

    from renderer.cli.common import resolve_args
    from renderer.cli.endpoint import local_options, require_vllm
    from renderer.endpoint.client import ClientError
    from renderer.endpoint.serve import LocalServer, ServeError, local_argv
    from renderer.endpoint.tune import EngineGrid, SettingRun, TuneAnswer

    if not args.local:
        raise CliError(
            "--engine restarts vLLM for each setting, so it needs a server this command starts: add --local "
            "(with --model-path, --load-format ... as `fleetform serve --local` takes them). tune does not "
            "redeploy a Modal app per setting",
            ExitCode.USAGE,
        )
    if args.target.startswith(("http://", "https://")) or args.deployment:
        raise CliError("--local starts the deployment itself: name it as TARGET, not a URL", ExitCode.USAGE)
    search_config, base = _configs(args)
    fleet = resolve_args(args, report)
    name = one(fleet, args.target).name
    settings = _settings(args, fleet, name, report)
    opts = local_options(args, "127.0.0.1")
    require_vllm(opts)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="fleetform-tune-")
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {log_dir}: {exc.strerror or exc}") from None
    prices = dict(fleet.prices or {})
    grid = EngineGrid([k for k in settings[0][1]], [], log_dir)
    err = console(stderr=True)

    def say(message: str) -> None:
        print(f"[tune] {message}", file=sys.stderr, flush=True)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # as Ctrl-C: the running vLLM is stopped on the way out

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        for i, (deployment, values) in enumerate(settings, 1):
            log = os.path.join(log_dir, f"setting-{i}.log")
            run = SettingRun(values, local_argv(deployment, opts), log)
            grid.runs.append(run)
            say(f"setting {i}/{len(settings)}: {run.label}: booting vLLM (its output: {log})")
            server = LocalServer(deployment, opts, log=lambda m: None, output=log)
            with server:
                try:
                    run.boot_s = server.start()
                except (ServeError, OSError) as exc:
                    run.error = f"vLLM did not start: {getattr(exc, 'strerror', None) or exc}"
                    say(f"setting {i}/{len(settings)}: {run.label}: {run.error}; last lines of {log}:")
                    print(_tail(log).rstrip("\n"), file=sys.stderr, flush=True)
                    continue
                say(f"setting {i}/{len(settings)}: {run.label}: ready after {run.boot_s:.1f} s")
                try:
                    _search_setting(run, server.url, deployment, args, search_config, base, err)
                except ClientError as exc:
                    run.error = exc.message
                    say(f"setting {i}/{len(settings)}: {run.label}: {run.error}")
                    continue
                _price(run.answer, _gpus(args, deployment), prices)
                a = run.answer
                found = (
                    "no level meets the SLO"
                    if a.max_concurrency is None
                    else f"max_concurrency {a.max_concurrency}, target {a.target_concurrency}"
                )
                stopped = f"; stopped: {a.stopped}" if a.stopped else ""
                say(f"setting {i}/{len(settings)}: {run.label}: {found}{stopped}; stopping vLLM")
    finally:
        signal.signal(signal.SIGTERM, old_term)
    best = grid.best
    answer = best.answer if best is not None else TuneAnswer(list(args.slo), search_config, [])
    deployment = settings[grid.runs.index(best)][0] if best is not None else settings[0][0]
    url = f"http://127.0.0.1:{opts.port or deployment.engine.port}"
    run = TuneRun(answer, url, (best.model if best else None) or deployment.model.names[0], _workload(base), grid=grid)
    if best is not None:
        _plot(run, args.plot, f"fleetform tune: {deployment.name}, {best.label}")
    if args.write:
        if grid.failed:
            run.notes.append(
                "nothing written: " + ", ".join(r.label for r in grid.failed) + " did not finish, so the best "
                "setting of the grid is unknown"
            )
        elif best is None:
            run.notes.append("nothing written: no setting met the SLO")
        else:
            _write(run, one(fleet, name), args.env, best.values if args.engine else {})
    return run


def render_grid(grid: Any, out: Any) -> None:
    """One row per engine setting: how it started, what the search found, and what a GPU-dollar buys there."""
    from rich.table import Table

    best = grid.best
    table = Table(title=literal("tune: engine settings"))
    for col in (
        "setting",
        "boot s",
        "max_concurrency",
        "target",
        "output tok/s at target",
        "$/M output tok",
        "output tok/$",
        "",
    ):
        table.add_column(col, justify="left" if col in ("setting", "") else "right")
    for r in grid.runs:
        a = r.answer
        if r.error is not None or a is None:
            cells = [
                r.label,
                "-" if r.boot_s is None else f"{r.boot_s:.1f}",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"FAILED: {r.error}",
            ]
        else:
            cost = a.costs[0].usd_per_million_output_tokens if a.costs else None
            tps = a.output_throughput
            per_usd = r.output_tokens_per_usd
            verdict = (
                "best"
                if r is best
                else (
                    "stopped: " + a.stopped
                    if a.stopped
                    else "no level meets the SLO"
                    if a.max_concurrency is None
                    else ""
                )
            )
            cells = [
                r.label,
                f"{r.boot_s:.1f}",
                "-" if a.max_concurrency is None else str(a.max_concurrency) + (" (capped)" if a.capped else ""),
                "-" if a.target_concurrency is None else str(a.target_concurrency),
                "-" if tps is None else f"{tps:.1f}",
                "-" if cost is None else f"${cost:.4f}",
                "-" if per_usd is None else f"{per_usd:,.0f}",
                verdict,
            ]
        table.add_row(*map(literal, cells))
    out.print(table)
    if best is None:
        out.print(literal("no setting met the SLO" + (" that could be measured" if grid.failed else "")), style="red")
    else:
        gpu = best.answer.costs[0]
        out.print(
            literal(
                f"best: {best.label}: {best.output_tokens_per_usd:,.0f} output tokens per $ on {gpu.gpu} x {gpu.count} "
                f"(the most among the settings that meet the SLO)"
            )
        )
    if grid.failed:
        out.print(literal(f"{len(grid.failed)} of {len(grid.runs)} setting(s) did not finish: exit 1"), style="red")
    out.print(literal(f"vLLM's output of each setting: {grid.log_dir}"), soft_wrap=True)


def _overridden(text: str, path: str, fleet_env: str | None, written: dict[str, list[str]]) -> list[str]:
    """The written `section.key`s that the file's overlay for `fleet_env` sets, which win there."""
    from renderer.config.load import LoadError, load_text

    if fleet_env is None:
        return []
    try:
        data = load_text(path, text.encode("utf-8")).data
    except LoadError:
        return []
    overlay = (data.get("environments") or {}).get(fleet_env) or {}
    found = []
    for section, keys in written.items():
        mapping = overlay.get(section) if isinstance(overlay, dict) else None
        found += [f"{section}.{k}" for k in keys if isinstance(mapping, dict) and k in mapping]
    return found


def _write(run: TuneRun, deployment: Any, fleet_env: str | None, engine: dict[str, Any] | None = None) -> None:
    """The answer's two scaling numbers (and with --engine the best setting's values) into the file, in place."""
    from renderer.codegen.write import write_file
    from renderer.config.edit import EditError, set_values

    path = deployment.source
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            before = fh.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    values = {"target_concurrency": run.answer.target_concurrency, "max_concurrency": run.answer.max_concurrency}
    try:
        after = set_values(path, before, "scaling", values)
        if engine:
            after = set_values(path, after, "engine", engine)
    except EditError as exc:
        raise CliError(f"{exc}; nothing written") from None
    if after != before:
        try:
            write_file(path, after, replace=True)
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    run.written = path
    for key in _overridden(after, path, fleet_env, {"scaling": list(values), "engine": list(engine or {})}):
        run.notes.append(f"note: environments.{fleet_env}.{key} in {path} still overrides the written value")
    run.diff = (
        "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}"))
        or "(no change: the file already has these values)\n"
    )
