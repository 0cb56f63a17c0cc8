"""The search behind ``fleetform tune``: the highest per-container concurrency that meets an SLO.

An SLO is a comma-separated list of terms, each ``METRIC_STAT<=VALUE``:

* ``METRIC`` is ``ttft``, ``tpot``, ``itl`` or ``e2el`` (as ``fleetform bench`` defines them), ``STAT``
  is ``p50``, ``p90`` or ``p99``, and ``VALUE`` a number with ``ms`` or ``s`` (``ttft_p90<=500ms``);
* ``error_rate<=VALUE`` bounds the failed share of a level's requests, as a fraction or with ``%``
  (``error_rate<=1%``). Without such a term no failure at all is allowed (``error_rate<=0``).

The search (closed loop, one level = that many requests in flight):

1. grow geometrically from ``start`` (x ``factor``) until a level fails or ``limit`` is reached; when
   ``start`` itself fails (a re-tune started at the current target, say), shrink (/ ``factor``) until a
   level passes, or 1 fails;
2. bisect between the last passing and the first failing level until they are within
   ``max(1, resolution x last passing)`` of each other; the highest passing level is ``max_concurrency``;
3. measure ``target_concurrency`` = ``floor(headroom x max_concurrency)`` (headroom for the autoscaler to
   start containers before the bound is crossed), unless already measured, for the throughput there.

How long a level runs: a percentile of ``n`` samples rests on the ``n x (1 - p)`` above it, so a level runs
``max(ceil(tail_samples / (1 - p)), rounds x concurrency)`` requests, ``p`` the highest percentile the SLO
names (p90 and 10 tail samples: 100 requests), and every worker completes ``rounds`` requests so no level is
judged by its first, simultaneous wave alone. A level whose figure lies within ``noise`` (relative) of a bound
is run once more with twice the requests, and that larger run decides. A level stops sending requests once it
must fail (``CertainFailure``: enough of its requests already lie beyond a bound and its noise margin that
the percentile does, whatever the rest measure), and is not repeated. A level that stops on consecutive
failures (a dead server) ends the search.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench imports aiohttp: parsing an SLO (argparse's --slo) must not need it
    from renderer.endpoint.bench import BenchConfig, BenchResult, RequestRecord

METRICS = ("ttft", "tpot", "itl", "e2el")
STATS = {"p50": "median", "p90": "p90", "p99": "p99"}
PERCENTILE = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
PERCENT = {"p50": 50, "p90": 90, "p99": 99}  # as statistics.quantiles counts them (exact integers)
SLO_SYNTAX = "METRIC_STAT<=VALUE[,...]: METRIC ttft|tpot|itl|e2el, STAT p50|p90|p99, VALUE in ms or s; error_rate<=1%"

_TERM = re.compile(r"^([a-z0-9_]+)\s*<=\s*(.+)$")
_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|%)?$")


class SloError(ValueError):
    """An SLO text that does not follow the syntax; the message names the bad term."""


@dataclass(frozen=True)
class SloTerm:
    """One bound: ``metric`` (ttft, tpot, itl, e2el or error_rate), ``stat`` (p50/p90/p99; None for
    error_rate) and ``bound`` (milliseconds, or a fraction for error_rate)."""

    metric: str
    stat: str | None
    bound: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{self.stat}" if self.stat else self.metric

    @property
    def unit(self) -> str:
        return "" if self.stat is None else "ms"

    def text(self) -> str:
        return f"{self.name}<={self.bound:g}ms" if self.stat else f"{self.name}<={self.bound * 100:g}%"

    def value(self, result: BenchResult) -> float | None:
        """The level's figure for this term (None: no samples, e.g. TPOT of one-token replies)."""
        if self.stat is None:
            total = result.completed + result.failed
            return result.failed / total if total else None
        return getattr(getattr(result, f"{self.metric}_ms"), STATS[self.stat])

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.text(), "metric": self.metric, "stat": self.stat, "bound": self.bound}


def parse_slo(text: str) -> list[SloTerm]:
    """Parse ``ttft_p90<=500ms,tpot_p90<=40ms,error_rate<=1%``; raise SloError naming the bad term."""
    terms: list[SloTerm] = []
    seen: set[str] = set()
    parts = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise SloError(f"an empty SLO; expected {SLO_SYNTAX}")
    for part in parts:
        if not part:
            raise SloError(f"an empty term in {text!r}; expected {SLO_SYNTAX}")
        m = _TERM.match(part)
        if not m:
            raise SloError(f"{part!r}: expected NAME<=VALUE ({SLO_SYNTAX})")
        name, raw = m.group(1), m.group(2).strip()
        num = _NUMBER.match(raw)
        if name == "error_rate":
            if not num or num.group(2) in ("ms", "s"):
                raise SloError(f"{part!r}: error_rate takes a fraction (0.01) or a percentage (1%)")
            bound = float(num.group(1)) / (100 if num.group(2) == "%" else 1)
            if bound > 1:
                raise SloError(f"{part!r}: an error rate is at most 100%")
            term = SloTerm("error_rate", None, bound)
        else:
            metric, _, stat = name.partition("_")
            if metric not in METRICS or stat not in STATS:
                raise SloError(
                    f"{part!r}: unknown term {name!r}; expected METRIC_STAT with METRIC one of "
                    f"{', '.join(METRICS)} and STAT one of {', '.join(STATS)}, or error_rate"
                )
            if not num or num.group(2) not in ("ms", "s"):
                raise SloError(f"{part!r}: give the bound with its unit, e.g. {name}<=500ms or {name}<=0.5s")
            bound = float(num.group(1)) * (1000 if num.group(2) == "s" else 1)
            if bound <= 0:
                raise SloError(f"{part!r}: a latency bound must be above 0")
            term = SloTerm(metric, stat, bound)
        if term.name in seen:
            raise SloError(f"{part!r}: {term.name} is bounded twice")
        seen.add(term.name)
        terms.append(term)
    if not any(t.stat for t in terms):
        raise SloError(f"{text!r} bounds no latency; add e.g. ttft_p90<=500ms ({SLO_SYNTAX})")
    if "error_rate" not in seen:
        terms.append(SloTerm("error_rate", None, 0.0))
    return terms


@dataclass(frozen=True)
class SearchConfig:
    """How to search: see the module docstring."""

    start: int = 1
    factor: float = 2.0
    limit: int = 1024
    resolution: float = 0.1
    headroom: float = 0.8
    tail_samples: int = 10
    rounds: int = 2
    noise: float = 0.1
    max_requests: int | None = None  # per level, a cap on the computed number

    def validate(self) -> None:
        if self.start < 1 or self.limit < self.start:
            raise ValueError("the start level must be >= 1 and at most the limit")
        if self.factor <= 1:
            raise ValueError("the growth factor must be above 1")
        if not 0 < self.headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        if not 0 <= self.resolution < 1 or not 0 <= self.noise < 1:
            raise ValueError("resolution and noise must be in [0, 1)")
        if self.tail_samples < 1 or self.rounds < 1:
            raise ValueError("tail samples and rounds must be >= 1")

    def requests_for(self, concurrency: int, slo: Sequence[SloTerm]) -> int:
        p = max((PERCENTILE[t.stat] for t in slo if t.stat), default=0.5)
        n = max(math.ceil(round(self.tail_samples / (1 - p), 6)), self.rounds * concurrency)
        return min(n, self.max_requests) if self.max_requests else n


@dataclass
class Level:
    """One measured level: its figures, the verdict per term, and why it was repeated."""

    concurrency: int
    result: BenchResult
    values: dict[str, float | None]
    passed: bool
    violations: list[str]
    phase: str  # grow, shrink, bisect, target
    requests: int  # requests issued for this level, repeats included
    repeated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "phase": self.phase,
            "passed": self.passed,
            "violations": self.violations,
            "slo_values": self.values,
            "requests": self.requests,
            "repeated": self.repeated,
            "result": self.result.to_dict(),
        }


@dataclass
class GpuCost:
    gpu: str
    count: int
    usd_per_hour: float  # one container
    usd_per_million_output_tokens: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TuneAnswer:
    """What the search found. ``max_concurrency`` None: not even ``start`` met the SLO."""

    slo: list[SloTerm]
    config: SearchConfig
    levels: list[Level]
    max_concurrency: int | None = None
    target_concurrency: int | None = None
    capped: bool = False  # the limit passed: the true maximum may be higher
    stopped: str | None = None  # why the search ended early
    costs: list[GpuCost] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(level.requests for level in self.levels)

    def at(self, concurrency: int | None) -> Level | None:
        found = [lv for lv in self.levels if lv.concurrency == concurrency]
        return found[-1] if found else None

    @property
    def output_throughput(self) -> float | None:
        """Output tokens/s of one container at ``target_concurrency``."""
        level = self.at(self.target_concurrency)
        return level.result.output_throughput if level else None

    def price(self, gpus: Sequence[tuple[str, int, float]]) -> None:
        """Cost per million output tokens at the target, for each (GPU, count, $/hour of one GPU)."""
        tps = self.output_throughput
        self.costs = [
            GpuCost(
                gpu,
                count,
                round(usd * count, 4),
                round(usd * count / (tps * 3600) * 1e6, 4) if tps else None,
            )
            for gpu, count, usd in gpus
        ]

    def to_dict(self) -> dict[str, Any]:
        target = self.at(self.target_concurrency)
        return {
            "slo": [t.to_dict() for t in self.slo],
            "search": dataclasses.asdict(self.config),
            "max_concurrency": self.max_concurrency,
            "target_concurrency": self.target_concurrency,
            "capped": self.capped,
            "stopped": self.stopped,
            "requests": self.requests,
            "at_target": None
            if target is None
            else {
                "output_throughput": target.result.output_throughput,
                "request_throughput": target.result.request_throughput,
                "total_token_throughput": target.result.total_token_throughput,
            },
            "costs": [c.to_dict() for c in self.costs],
            "levels": [lv.to_dict() for lv in self.levels],
        }


def judge(result: BenchResult, slo: Sequence[SloTerm]) -> tuple[dict[str, float | None], list[str]]:
    """Each term's value, and the violated terms as text (a term without samples is violated)."""
    values: dict[str, float | None] = {}
    violations: list[str] = []
    for term in slo:
        value = term.value(result)
        values[term.name] = value
        if value is None:
            violations.append(f"{term.name}: no samples")
        elif value > term.bound:
            shown = f"{value:.1f} ms" if term.stat else f"{value * 100:.1f}%"
            violations.append(f"{term.name} {shown} > {_bound(term)}")
    return values, violations


def _bound(term: SloTerm) -> str:
    return f"{term.bound:g} ms" if term.stat else f"{term.bound * 100:g}%"


def near_bound(values: dict[str, float | None], slo: Sequence[SloTerm], noise: float) -> bool:
    """A latency figure within ``noise`` (relative) of its bound, on either side."""
    for term in slo:
        value = values.get(term.name)
        if term.stat and value is not None and abs(value - term.bound) <= noise * term.bound:
            return True
    return False


class CertainFailure:
    """``bench``'s ``until`` rule for a level of ``requests`` requests: a reason once the level must fail.

    Of ``N`` samples sorted, the percentile ``i`` (``Stats.of``: linear interpolation, as
    ``statistics.quantiles`` inclusive) lies at or above sample ``j = i x (N - 1) // 100``; so once
    ``N - j`` samples exceed a value, the percentile does, whatever the other samples measure. That count
    grows with ``N``, so the count for the level's ``requests`` holds for a level with fewer samples (failed
    requests, or in flight when it stopped) too. The value is the bound plus ``noise`` of it: a figure that
    certain is beyond the margin that would repeat the level. ``error_rate`` decides once more than
    ``bound x requests`` requests failed. ``itl`` terms pool token gaps, whose number is not known in
    advance, and never decide.
    """

    def __init__(self, slo: Sequence[SloTerm], requests: int, noise: float) -> None:
        self.requests, self.noise = requests, noise
        self.terms = [t for t in slo if t.stat is None or t.metric != "itl"]
        self.needed = {
            t.name: requests - PERCENT[t.stat] * (requests - 1) // 100 for t in self.terms if t.stat is not None
        }
        self.limit = {t.name: t.bound * (1 + noise) for t in self.terms}
        self.above = dict.fromkeys(self.limit, 0)
        self.seen = 0

    def __call__(self, records: Sequence[RequestRecord]) -> str | None:
        from renderer.endpoint.bench import tpot_of

        for record in records[self.seen :]:
            res = record.result
            for term in self.terms:
                if term.stat is None:
                    self.above[term.name] += not record.ok
                    continue
                if not record.ok or res is None:
                    continue
                seconds = {"ttft": res.ttft, "e2el": res.latency, "tpot": tpot_of(res)}[term.metric]
                self.above[term.name] += seconds is not None and seconds * 1000 > self.limit[term.name]
        self.seen = len(records)
        for term in self.terms:
            count = self.above[term.name]
            if term.stat is None:
                if count > term.bound * self.requests:
                    return f"{count} of its {self.requests} requests failed, more than {_bound(term)} allows"
            elif count >= self.needed[term.name]:
                return (
                    f"{count} of its {self.requests} requests had {term.metric} above {self.limit[term.name]:.4g} ms "
                    f"({_bound(term)} and {self.noise:.0%} noise), so its {term.stat} is too"
                )
        return None


# A function that measures one level: (concurrency, requests, until) -> BenchResult, where `until` is the
# level's CertainFailure, to hand `run_bench` (a stand-in that returns whole levels may ignore it).
Measure = Callable[[int, int, CertainFailure], "BenchResult"]


def search(
    measure: Measure,
    slo: Sequence[SloTerm],
    config: SearchConfig,
    on_level: Callable[[Level], None] = lambda level: None,
) -> TuneAnswer:
    """Run the search with ``measure``; ``on_level`` hears of each level as it is judged."""
    config.validate()
    answer = TuneAnswer(list(slo), config, [])

    def run(concurrency: int, phase: str) -> Level:
        n = config.requests_for(concurrency, slo)
        result = measure(concurrency, n, CertainFailure(slo, n, config.noise))
        values, violations = judge(result, slo)
        requests, repeated = result.completed + result.failed, False
        if result.aborted is None and result.decided is None and near_bound(values, slo, config.noise):
            result = measure(concurrency, 2 * n, CertainFailure(slo, 2 * n, config.noise))
            values, violations = judge(result, slo)
            requests += result.completed + result.failed
            repeated = True
        level = Level(concurrency, result, values, not violations, violations, phase, requests, repeated)
        answer.levels.append(level)
        on_level(level)
        if result.aborted is not None:
            answer.stopped = f"concurrency {concurrency}: {result.aborted}"
        return level

    lo: int | None = None
    hi: int | None = None
    c = config.start
    while True:
        level = run(c, "grow")
        if answer.stopped:
            return answer
        if not level.passed:
            hi = c
            break
        lo = c
        if c >= config.limit:
            answer.capped = True
            break
        c = min(config.limit, max(c + 1, math.floor(c * config.factor)))

    def narrow(c: int, phase: str) -> bool:
        """Measure ``c``: the new lowest failing or highest passing level; False once the search stopped."""
        nonlocal lo, hi
        if run(c, phase).passed:
            lo = c
        else:
            hi = c
        return not answer.stopped

    while lo is None and c > 1:  # the start level failed: look below it
        c = max(1, min(c - 1, math.ceil(c / config.factor)))
        if not narrow(c, "shrink"):
            return answer
    if lo is None:
        return answer
    while hi is not None and hi - lo > max(1, math.floor(config.resolution * lo)):
        if not narrow((lo + hi) // 2, "bisect"):
            return answer
    answer.max_concurrency = lo
    answer.target_concurrency = max(1, math.floor(config.headroom * lo))
    if answer.at(answer.target_concurrency) is None:
        level = run(answer.target_concurrency, "target")
        if not level.passed and not answer.stopped:
            answer.stopped = (
                f"target concurrency {answer.target_concurrency} failed the SLO on its own run "
                f"({'; '.join(level.violations)}): the server is noisier than the SLO allows"
            )
    return answer


# --- the engine grid (`tune --local --engine KEY=V1,V2`) -------------------------------------------------------

# The engine fields `--engine` varies: each a `vllm serve` flag that moves the concurrency a container sustains.
ENGINE_KEYS = ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype")
ENGINE_SYNTAX = "KEY=V1[,V2...] with KEY one of " + ", ".join(ENGINE_KEYS)


class EngineTermError(ValueError):
    """An `--engine` term that does not follow the syntax (`usage`), or names no tunable key."""

    def __init__(self, message: str, usage: bool = True):
        super().__init__(message)
        self.usage = usage


def engine_grid(terms: Sequence[str]) -> list[dict[str, str]]:
    """`["max_num_seqs=64,128", "kv_cache_dtype=auto,fp8"]` -> every combination, the first key varying
    slowest: [{max_num_seqs: "64", kv_cache_dtype: "auto"}, ...]. Values stay text: the config stage
    types and checks them as the YAML's own. A term may hold several space-separated terms."""
    from renderer.diagnostics import did_you_mean

    axes: dict[str, list[str]] = {}
    for term in (part for text in terms for part in text.split()):
        key, eq, values = term.partition("=")
        key = key.strip()
        if not eq or not key:
            raise EngineTermError(f"--engine {term!r}: expected {ENGINE_SYNTAX}")
        if key not in ENGINE_KEYS:
            hint = did_you_mean(key, ENGINE_KEYS)
            raise EngineTermError(
                f"--engine {term}: {key!r} is not an engine setting tune varies"
                + (f"; {hint}" if hint else "")
                + f" (one of {', '.join(ENGINE_KEYS)})",
                usage=False,
            )
        if key in axes:
            raise EngineTermError(f"--engine {term}: {key} is given twice; put its values in one term")
        parts = [v.strip() for v in values.split(",")]
        if not all(parts):
            raise EngineTermError(f"--engine {term!r}: an empty value; expected {ENGINE_SYNTAX}")
        if len(set(parts)) < len(parts):
            raise EngineTermError(f"--engine {term}: a value is given twice")
        axes[key] = parts
    combos: list[dict[str, str]] = [{}]
    for key, parts in axes.items():
        combos = [{**c, key: v} for c in combos for v in parts]
    return combos


@dataclass
class SettingRun:
    """One engine setting of the grid: the values (as resolved), the command line it ran, how its vLLM
    started, and the search's answer (None: it did not start, or the search could not run)."""

    values: dict[str, Any]
    argv: list[str]
    log: str | None = None  # vLLM's own output
    model: str | None = None  # the served name the load went to
    boot_s: float | None = None
    error: str | None = None  # why it failed: vLLM did not start, or the endpoint misbehaved
    answer: TuneAnswer | None = None

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "(as the deployment says)"

    @property
    def failed(self) -> bool:
        """It did not start, or its search could not finish (a dead server): the grid is incomplete."""
        return self.error is not None or self.answer is None or self.answer.stopped is not None

    @property
    def output_tokens_per_usd(self) -> float | None:
        """Output tokens one container makes per dollar of its GPUs at the target (the first GPU type
        priced), when it met the SLO; None otherwise."""
        a = self.answer
        if self.failed or a is None or a.max_concurrency is None or not a.costs:
            return None
        tps, usd = a.output_throughput, a.costs[0].usd_per_hour
        return round(tps * 3600 / usd, 1) if tps and usd else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "argv": self.argv,
            "log": self.log,
            "model": self.model,
            "boot_s": None if self.boot_s is None else round(self.boot_s, 2),
            "error": self.error,
            "failed": self.failed,
            "output_tokens_per_usd": self.output_tokens_per_usd,
            "answer": None if self.answer is None else self.answer.to_dict(),
        }


@dataclass
class EngineGrid:
    """Every setting's run, and the best: the highest output tokens per GPU-dollar among those that met
    the SLO (a tie goes to the higher max_concurrency, then to the setting run first)."""

    keys: list[str]
    runs: list[SettingRun]
    log_dir: str | None = None

    @property
    def best(self) -> SettingRun | None:
        scored = [r for r in self.runs if r.output_tokens_per_usd is not None]
        if not scored:
            return None
        return max(scored, key=lambda r: (r.output_tokens_per_usd, r.answer.max_concurrency, -self.runs.index(r)))

    @property
    def failed(self) -> list[SettingRun]:
        return [r for r in self.runs if r.failed]

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "keys": self.keys,
            "log_dir": self.log_dir,
            "best": None if best is None else self.runs.index(best),
            "settings": [r.to_dict() for r in self.runs],
        }


def level_config(base: BenchConfig, concurrency: int, requests: int) -> BenchConfig:
    """``base`` (the workload) with one closed-loop level of ``requests`` requests."""
    return dataclasses.replace(
        base, concurrency=(concurrency,), request_rates=None, num_requests=requests, duration=None
    )
