"""Load generator behind ``fleetform bench``, with vLLM's serving metrics.

Requests are streamed ``/v1/chat/completions`` calls with
``stream_options.include_usage``, so token counts are the server's own.
Two load shapes:

* closed loop: for each concurrency level, that many workers each issue
  requests back to back (vLLM's ``--max-concurrency`` with an infinite rate);
* open loop: Poisson arrivals at ``request_rate`` req/s from a seeded RNG
  (vLLM's ``--request-rate`` with burstiness 1), optionally capped by
  ``max_concurrency`` in-flight requests.

A level stops issuing requests once ``num_requests`` were sent or
``duration`` seconds passed (whichever comes first), waits for the ones in
flight and is measured up to that point. Metrics follow
``vllm bench serve`` (vllm/benchmarks/serve.py ``calculate_metrics`` and
lib/endpoint_request_func.py): see :func:`compute_metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from renderer.endpoint.client import (
    ClientError,
    Endpoint,
    FailureKind,
    StreamResult,
    list_models,
    open_session,
    stream_chat,
    wait_for_health,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

# Common English words that are one token each (with a leading space) in the
# usual BPE vocabularies, so a prompt of N words is roughly N tokens.
_WORDS = (
    "the of and to in is was for on as with by at from his an were are which this be "
    "has had one not but they have their more first two new after all also time other "
    "about its many some most into only these such over year people city world state "
    "part during when there than would been where while under since both found war "
    "history life small large water number work high system name then game same well "
    "house long down early three school known power music group line book"
).split()

# Error messages kept per failure kind (the rest are only counted).
_SAMPLES_PER_KIND = 3


@dataclass
class BenchConfig:
    """What load to generate. Give ``request_rates`` for open loop, else
    ``concurrency`` levels are swept closed loop. At least one of
    ``num_requests`` / ``duration`` must be set (both: first reached wins)."""

    concurrency: Sequence[int] = (1,)
    request_rates: Sequence[float] | None = None
    max_concurrency: int | None = None  # open loop only: cap on in-flight requests
    num_requests: int | None = None  # per level
    duration: float | None = None  # seconds, per level
    input_len: int = 128  # synthetic prompt length in words (~tokens)
    output_len: int = 128  # max_tokens
    ignore_eos: bool = False  # vLLM extension: always generate max_tokens
    dataset: str | Path | None = None  # JSONL: {"prompt": ...} or {"messages": [...]}
    seed: int = 0
    idle_timeout: float = 120.0  # a stream silent this long fails with TIMEOUT
    connect_timeout: float = 30.0
    # Before the first level, wait this long for /health (a cold start), untimed.
    health_timeout: float = 600.0
    health_interval: float = 2.0
    # Stop a level after this many failures in a row (a dead server), None = never.
    max_consecutive_failures: int | None = 100

    def validate(self) -> None:
        """Raise ValueError on settings that cannot run."""
        if self.num_requests is None and self.duration is None:
            raise ValueError("set num_requests and/or duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("num_requests must be >= 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be > 0")
        if self.request_rates is not None:
            if not self.request_rates or any(r <= 0 for r in self.request_rates):
                raise ValueError("request rates must be > 0")
        elif not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError("concurrency levels must be >= 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("input_len and output_len must be >= 1")
        if self.dataset is not None:
            load_dataset(self.dataset)  # a bad file fails here, not mid-run

    @property
    def open_loop(self) -> bool:
        return self.request_rates is not None

    def pool_size(self) -> int:
        """Connections to keep: enough for the busiest level (0 = unbounded)."""
        if self.open_loop:
            return self.max_concurrency or 0
        return max(self.concurrency)


# --------------------------------------------------------------------------- prompts


def load_dataset(path: str | Path) -> list[list[dict[str, Any]]]:
    """Read a JSONL file of ``{"prompt": str}`` or ``{"messages": [...]}`` lines."""
    entries: list[list[dict[str, Any]]] = []
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the dataset ({exc.strerror})") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                entries.append([{"role": "user", "content": item["prompt"]}])
            elif isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
                entries.append(item["messages"])
            else:
                raise ValueError(f'{path}:{lineno}: expected {{"prompt": str}} or {{"messages": [...]}}')
    if not entries:
        raise ValueError(f"{path}: no prompts")
    return entries


def synthetic_prompt(n_words: int, rng: random.Random) -> str:
    """About ``n_words`` tokens of random common words.

    Random rather than repeated text so vLLM's prefix cache cannot serve the
    prompts from memory, which would flatter TTFT. The chat template adds a
    few tokens; the server-reported prompt_tokens is what gets counted.
    """
    return " ".join(rng.choices(_WORDS, k=n_words))


def prompt_source(config: BenchConfig, rng: random.Random) -> Iterator[list[dict[str, Any]]]:
    """Endless message lists: the dataset cycled in order, or synthetic prompts.

    The dataset is read here, eagerly, so a bad file fails before any request.
    """
    if config.dataset is not None:
        return itertools.cycle(load_dataset(config.dataset))
    return ([{"role": "user", "content": synthetic_prompt(config.input_len, rng)}] for _ in itertools.count())


def build_payload(model: str, messages: list[dict[str, Any]], config: BenchConfig) -> dict[str, Any]:
    """The streamed chat request body, as vLLM's bench sends it."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": config.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        payload["ignore_eos"] = True
    return payload


# --------------------------------------------------------------------------- metrics


@dataclass(slots=True)
class RequestRecord:
    """One request's outcome: timing on success, failure kind otherwise."""

    ok: bool
    result: StreamResult | None = None
    failure: FailureKind | None = None
    error: str = ""


@dataclass
class Stats:
    """Summary of one latency metric in milliseconds (None: no samples)."""

    mean: float | None = None
    median: float | None = None
    std: float | None = None
    p90: float | None = None
    p99: float | None = None
    count: int = 0

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        """Mean, median, population std and linearly interpolated percentiles
        (what numpy's defaults give, as vLLM uses), converted to ms."""
        if not seconds:
            return cls()
        ms = [s * 1000.0 for s in seconds]
        if len(ms) == 1:
            p90 = p99 = ms[0]
        else:
            cuts = statistics.quantiles(ms, n=100, method="inclusive")
            p90, p99 = cuts[89], cuts[98]
        return cls(
            mean=statistics.fmean(ms),
            median=statistics.median(ms),
            std=statistics.pstdev(ms),
            p90=p90,
            p99=p99,
            count=len(ms),
        )


@dataclass
class BenchResult:
    """Figures for one concurrency level or request rate."""

    model: str
    concurrency: int | None
    request_rate: float | None
    duration_s: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats
    failures: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, list[str]] = field(default_factory=dict)
    # Successful requests whose stream carried no usage (their tokens count as 0).
    missing_usage: int = 0
    # Why the level stopped early, if it did.
    aborted: str | None = None
    # Why the caller's `until` rule ended the level before all its requests were sent (run_bench).
    decided: str | None = None

    @property
    def label(self) -> str:
        if self.request_rate is not None:
            cap = f", max {self.concurrency}" if self.concurrency else ""
            return f"{self.request_rate:g} req/s{cap}"
        return f"concurrency {self.concurrency}"

    def to_dict(self) -> dict[str, Any]:
        """The figures, nested (`ttft_ms: {mean, median, ...}`), and beside them the flat keys of
        `vllm bench serve`'s result file (`duration`, `median_ttft_ms`, `p99_itl_ms`, ...), so tools
        written for vLLM's JSON read fleetform's."""
        doc = asdict(self)
        doc["duration"] = self.duration_s
        for metric in ("ttft", "tpot", "itl", "e2el"):
            stats = getattr(self, f"{metric}_ms")
            for stat in ("mean", "median", "std", "p90", "p99"):
                doc[f"{stat}_{metric}_ms"] = getattr(stats, stat)
        return doc


def tpot_of(res: StreamResult) -> float | None:
    """One request's time per output token after the first, in seconds (None: one token or none)."""
    out = res.output_tokens or 0
    return (res.latency - res.ttft) / (out - 1) if out > 1 else None


# Decides, after each request of a level, whether the level has seen enough: a reason ends it (no
# new requests start; those in flight finish and count), None lets it go on.
Until = Callable[[Sequence[RequestRecord]], "str | None"]


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    model: str = "",
    concurrency: int | None = None,
    request_rate: float | None = None,
) -> BenchResult:
    """vLLM's serving metrics over one level's requests.

    Only successful requests count toward tokens and latencies.
    ``request_throughput`` = completed / duration; ``output_throughput`` =
    output tokens / duration; ``total_token_throughput`` = (input + output)
    tokens / duration. TTFT, E2E latency and ITL (all chunk gaps, pooled over
    requests) come from the stream timings; TPOT = (latency - TTFT) /
    (output_tokens - 1), only for requests with more than one output token.
    """
    ttfts: list[float] = []
    tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    total_in = total_out = missing_usage = 0
    failures: Counter[str] = Counter()
    samples: dict[str, list[str]] = {}
    for rec in records:
        res = rec.result
        if not rec.ok or res is None:
            kind = (rec.failure or FailureKind.OTHER).value
            failures[kind] += 1
            kept = samples.setdefault(kind, [])
            if len(kept) < _SAMPLES_PER_KIND and rec.error not in kept:
                kept.append(rec.error)
            continue
        if res.output_tokens is None:
            missing_usage += 1
        out = res.output_tokens or 0
        total_in += res.prompt_tokens or 0
        total_out += out
        ttfts.append(res.ttft)
        e2els.append(res.latency)
        itls.extend(res.itl)
        tpot = tpot_of(res)
        if tpot is not None:
            tpots.append(tpot)
    completed = len(ttfts)
    dur = duration_s if duration_s > 0 else float("inf")
    return BenchResult(
        model=model,
        concurrency=concurrency,
        request_rate=request_rate,
        duration_s=duration_s,
        completed=completed,
        failed=sum(failures.values()),
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=completed / dur,
        output_throughput=total_out / dur,
        total_token_throughput=(total_in + total_out) / dur,
        ttft_ms=Stats.of(ttfts),
        tpot_ms=Stats.of(tpots),
        itl_ms=Stats.of(itls),
        e2el_ms=Stats.of(e2els),
        failures=dict(failures),
        error_samples=samples,
        missing_usage=missing_usage,
    )


# --------------------------------------------------------------------------- load generation


class _Budget:
    """Decides whether another request may start in this level."""

    def __init__(self, config: BenchConfig, start: float, stop: asyncio.Event | None) -> None:
        self.stop = stop
        self.remaining = config.num_requests
        self.deadline = start + config.duration if config.duration is not None else None
        self.max_failures = config.max_consecutive_failures
        self.consecutive_failures = 0
        self.aborted: str | None = None
        self.decided: str | None = None

    def take(self) -> bool:
        if self.aborted is not None or self.decided is not None or (self.stop is not None and self.stop.is_set()):
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True

    def settle(self, record: RequestRecord) -> None:
        if record.ok:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.max_failures is not None and self.consecutive_failures >= self.max_failures:
            self.aborted = f"stopped after {self.consecutive_failures} failures in a row (last: {record.error})"


class _Level:
    """Shared machinery of one level: request issuing, recording, progress."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        model: str,
        config: BenchConfig,
        prompts: Iterator[list[dict[str, Any]]],
        on_done: Callable[[RequestRecord], None],
        stop: asyncio.Event | None = None,
        until: Until | None = None,
    ) -> None:
        self.session = session
        self.stop = stop
        self.until = until
        self.endpoint = endpoint
        self.model = model
        self.config = config
        self.prompts = prompts
        self.on_done = on_done
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.idle_timeout
        )
        self.records: list[RequestRecord] = []
        self.budget = _Budget(config, time.perf_counter(), stop)

    async def one(self, messages: list[dict[str, Any]]) -> None:
        """Issue one request and record it; never raises ClientError."""
        payload = build_payload(self.model, messages, self.config)
        try:
            res = await stream_chat(self.session, self.endpoint, payload, timeout=self.timeout, keep_text=False)
            record = RequestRecord(True, res)
        except ClientError as exc:
            record = RequestRecord(False, failure=exc.kind, error=exc.message)
        self.records.append(record)
        self.budget.settle(record)
        if self.until is not None and self.budget.decided is None:
            self.budget.decided = self.until(self.records)
        self.on_done(record)

    async def closed_loop(self, workers: int) -> None:
        async def worker() -> None:
            while self.budget.take():
                await self.one(next(self.prompts))

        await self._finish([asyncio.create_task(worker()) for _ in range(workers)])

    async def open_loop(self, rate: float, rng: random.Random, cap: int | None) -> None:
        await self._finish([asyncio.create_task(self._arrivals(rate, rng, cap))])

    async def _arrivals(self, rate: float, rng: random.Random, cap: int | None) -> None:
        gate = asyncio.Semaphore(cap) if cap else None

        async def gated(messages: list[dict[str, Any]]) -> None:
            assert gate is not None
            async with gate:
                await self.one(messages)

        tasks: list[asyncio.Task[None]] = []
        next_at = time.perf_counter()
        while True:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.budget.take():
                break
            # The prompt is drawn here, in arrival order, not when the task runs.
            messages = next(self.prompts)
            tasks.append(asyncio.create_task(gated(messages) if gate else self.one(messages)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the level's tasks, or cancel them once ``stop`` is set
        (Ctrl-C): requests cut short count as neither completed nor failed."""
        everything = asyncio.gather(*tasks)
        if self.stop is None:
            await everything
            return
        stopper = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({everything, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            everything.cancel()
            raise
        finally:
            stopper.cancel()
        if everything.done():
            everything.result()
            return
        self.budget.aborted = "interrupted: requests in flight were dropped"
        everything.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await everything


async def resolve_model(session: aiohttp.ClientSession, endpoint: Endpoint, model: str | None) -> str:
    """Check the model is served (None: take the server's first), else raise
    ClientError(NOT_FOUND) naming what the server does serve."""
    served = await list_models(session, endpoint)
    if model is None:
        if not served:
            raise ClientError(FailureKind.NOT_FOUND, f"{endpoint.base_url} serves no models")
        return served[0]
    if model not in served:
        raise ClientError(
            FailureKind.NOT_FOUND,
            f"model {model!r} is not served at {endpoint.base_url}; it serves: {', '.join(served) or '(nothing)'}",
        )
    return model


def _levels(config: BenchConfig) -> list[tuple[int | None, float | None]]:
    if config.open_loop:
        assert config.request_rates is not None
        return [(config.max_concurrency, rate) for rate in config.request_rates]
    return [(c, None) for c in config.concurrency]


async def run_bench(
    endpoint: Endpoint,
    model: str | None,
    config: BenchConfig,
    progress: bool = True,
    *,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
    until: Until | None = None,
) -> list[BenchResult]:
    """Run every level of ``config`` against ``endpoint``; one result per level.

    First waits for ``/health`` (up to ``config.health_timeout``: a cold start
    is not measured) and checks that ``model`` is served (``None``: the
    server's first model), raising ClientError if the server cannot be
    reached, refuses the credentials or lacks the model; from
    then on failed requests are only counted, and a level whose last
    ``max_consecutive_failures`` requests all failed (a dead server) stops
    early with ``aborted`` set, keeping the figures gathered so far. Setting
    ``stop`` ends the run the same way: the current level is cut short and
    reported, later levels are skipped. ``until`` (see ``Until``) may end a level
    once its outcome is known, with ``decided`` set to its reason.
    """
    config.validate()
    # Separate streams, so the prompts do not depend on the arrival times drawn.
    rng = random.Random(config.seed)
    prompts = prompt_source(config, random.Random(f"prompts-{config.seed}"))
    results: list[BenchResult] = []
    async with open_session(endpoint, limit=config.pool_size()) as session:
        await wait_for_health(endpoint, config.health_timeout, config.health_interval, session=session)
        model = await resolve_model(session, endpoint, model)
        with _progress(progress, console) as bar:
            for concurrency, rate in _levels(config):
                label = f"{rate:g} req/s" if rate is not None else f"concurrency {concurrency}"
                on_done = _progress_callback(bar, label, config.num_requests)
                level = _Level(session, endpoint, model, config, prompts, on_done, stop, until)
                start = time.perf_counter()
                if rate is not None:
                    await level.open_loop(rate, rng, concurrency)
                else:
                    assert concurrency is not None
                    await level.closed_loop(concurrency)
                result = compute_metrics(
                    level.records,
                    time.perf_counter() - start,
                    model=model,
                    concurrency=concurrency,
                    request_rate=rate,
                )
                result.aborted = level.budget.aborted
                result.decided = level.budget.decided
                results.append(result)
                if stop is not None and stop.is_set():
                    break
    return results


def run_bench_sync(
    endpoint: Endpoint,
    model: str | None,
    config: BenchConfig,
    progress: bool = True,
    *,
    console: Console | None = None,
    until: Until | None = None,
) -> list[BenchResult]:
    """Blocking wrapper around :func:`run_bench` for the CLI.

    The first Ctrl-C stops the run and returns what was measured so far (the
    level cut short has ``aborted`` set); a second one aborts at once with
    KeyboardInterrupt.
    """
    return asyncio.run(_run_bench_stoppable(endpoint, model, config, progress, console, until))


async def _run_bench_stoppable(
    endpoint: Endpoint,
    model: str | None,
    config: BenchConfig,
    progress: bool,
    console: Console | None,
    until: Until | None = None,
) -> list[BenchResult]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_sigint() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C raises KeyboardInterrupt

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # no Unix signals, or not the main thread
        installed = False
    try:
        return await run_bench(endpoint, model, config, progress, console=console, stop=stop, until=until)
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


# --------------------------------------------------------------------------- display


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool, console: Console | None) -> Any:
    if not enabled:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
    )


def _progress_callback(bar: Progress | None, label: str, total: int | None) -> Callable[[RequestRecord], None]:
    """Per-request progress update (cheap: rich redraws on its own timer)."""
    if bar is None:
        return lambda record: None
    task: TaskID = bar.add_task(label, total=total, failed=0)
    failed = 0

    def done(record: RequestRecord) -> None:
        nonlocal failed
        if record.ok:
            bar.advance(task)
        else:
            failed += 1
            bar.update(task, advance=1, failed=failed)

    return done
