"""Stage 5 (offline): what the rendered fleet would run, and what it would cost.

A container is priced at the dearest GPU type that may run it: its `gpu.type` or any of its
`gpu.fallbacks` (Modal picks whichever has capacity), times `gpu.count`. So the figures are what
the fleet may cost, never less. An unset `max_containers` is unbounded: no ceiling (`None`).

The live view (create / update / unchanged / orphan against what Modal runs) is `plan.live`;
this module needs no credentials and no network.
"""

from __future__ import annotations

from dataclasses import dataclass

from renderer.codegen.render import RenderedApp
from renderer.config import spec
from renderer.gpus import GPU_TYPES, PRICES_AS_OF, PRICES_SOURCE, parse_gpu_type


@dataclass(frozen=True)
class PlanRow:
    name: str
    source: str
    model: str  # id@short revision
    gpu: str  # "H100 x 2 (+H200)"
    containers: str  # "0-4", "0-unbounded"
    concurrency: str  # "32 target / 64 max"
    content_hash: str
    usd_per_hour_min: float
    usd_per_hour_max: float | None  # None: no max_containers, no ceiling
    modal_env: str | None  # the Modal environment it deploys to
    auth: str
    priced_gpu: str | None  # the GPU type its cost assumes, the dearest that may run it; None: the gateway
    usd_per_container_hour: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


UNBOUNDED = "unbounded"  # how an unset max_containers reads, in the plan and in the docs


def containers_text(lo: int, hi: int | None) -> str:
    """`0-4`, or `0-unbounded` without a max_containers."""
    return f"{lo}-{UNBOUNDED if hi is None else hi}"


def gpu_price(name: str, prices: dict[str, float]) -> float:
    """$/hour of one GPU of this type: fleet.yaml's `prices`, else the list price."""
    name = parse_gpu_type(name)[0]
    return prices.get(name, GPU_TYPES[name].usd_per_hour)


def priced_gpu(gpu: spec.Gpu, prices: dict[str, float]) -> str:
    """The dearest GPU type that may run a container: the type or one of its fallbacks (first on a tie)."""
    names = [parse_gpu_type(t)[0] for t in (gpu.type, *gpu.fallbacks)]
    return max(names, key=lambda n: gpu_price(n, prices))


def gpu_hourly(d: spec.Deployment, prices: dict[str, float]) -> float:
    """$/hour of one container: its GPUs at the dearest type that may run (CPU and memory not counted)."""
    return gpu_price(priced_gpu(d.gpu, prices), prices) * d.gpu.count


@dataclass(frozen=True)
class Cost:
    """What one deployment costs per hour at its minimum and maximum scale."""

    priced_gpu: str
    usd_per_container_hour: float
    usd_per_hour_min: float
    usd_per_hour_max: float | None  # None: unbounded (no max_containers)

    @classmethod
    def of(cls, d: spec.Deployment, prices: dict[str, float]) -> Cost:
        per = gpu_hourly(d, prices)
        s = d.scaling
        return cls(
            priced_gpu(d.gpu, prices),
            round(per, 4),
            round(per * s.min_containers, 4),
            None if s.max_containers is None else round(per * s.max_containers, 4),
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def plan_row(app: RenderedApp, prices: dict[str, float]) -> PlanRow:
    d = app.deployment
    cost = Cost.of(d, prices)
    s = d.scaling
    gpu = f"{d.gpu.type} x {d.gpu.count}" + (f" (+{', '.join(d.gpu.fallbacks)})" if d.gpu.fallbacks else "")
    conc = f"{s.target_concurrency:g} target" + (f" / {s.max_concurrency} max" if s.max_concurrency else "")
    return PlanRow(
        name=d.name,
        source=d.source,
        model=f"{d.model.id}@{d.model.revision[:7]}",
        gpu=gpu,
        containers=containers_text(s.min_containers, s.max_containers),
        concurrency=conc,
        content_hash=app.short_hash,
        usd_per_hour_min=cost.usd_per_hour_min,
        usd_per_hour_max=cost.usd_per_hour_max,
        modal_env=d.modal_env,
        auth=d.auth.mode,
        priced_gpu=cost.priced_gpu,
        usd_per_container_hour=cost.usd_per_container_hour,
    )


@dataclass(frozen=True)
class EnvironmentTotals:
    """What one environment of the fleet costs: GPUs kept warm, and GPUs at full scale."""

    fleet_env: str | None  # None: no --env (fleet defaults and the files alone)
    deployments: int
    idle_usd_per_day: float  # min_containers around the clock
    ceiling_usd_per_hour: float | None  # every deployment at max_containers; None: some have no max

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def environment_totals(fleet_env: str | None, deployments, prices: dict[str, float]) -> EnvironmentTotals:
    idle = sum(gpu_hourly(d, prices) * d.scaling.min_containers for d in deployments) * 24
    ceiling = (
        None
        if any(d.scaling.max_containers is None for d in deployments)
        else sum(gpu_hourly(d, prices) * d.scaling.max_containers for d in deployments)
    )
    return EnvironmentTotals(
        fleet_env, len(deployments), round(idle, 2), None if ceiling is None else round(ceiling, 2)
    )


@dataclass(frozen=True)
class Plan:
    rows: tuple[PlanRow, ...]
    fleet_env: str | None
    prices_overridden: tuple[str, ...]
    by_fleet_env: tuple[EnvironmentTotals, ...] = ()

    @property
    def idle_usd_per_day(self) -> float:
        return round(sum(r.usd_per_hour_min for r in self.rows) * 24, 2)

    @property
    def ceiling_usd_per_hour(self) -> float | None:
        if any(r.usd_per_hour_max is None for r in self.rows):
            return None
        return round(sum(r.usd_per_hour_max or 0 for r in self.rows), 2)

    def to_dict(self) -> dict:
        return {
            "fleet_env": self.fleet_env,
            "deployments": [r.to_dict() for r in self.rows],
            "totals": {"idle_usd_per_day": self.idle_usd_per_day, "ceiling_usd_per_hour": self.ceiling_usd_per_hour},
            "by_fleet_env": [t.to_dict() for t in self.by_fleet_env],
            "prices": {"as_of": PRICES_AS_OF, "source": PRICES_SOURCE, "overridden": list(self.prices_overridden)},
        }


def gateway_row(gateway, source: str | None, modal_env: str | None) -> PlanRow:
    """The fleet's gateway (a `RenderedGateway`) as a row. It runs on CPUs only and the plan
    counts GPU time only, so its cost is $0 at any scale."""
    g = gateway.config
    return PlanRow(
        name=gateway.name,
        source=source or "",
        model=f"gateway: {len(gateway.routes)} model name(s)",
        gpu="CPU only",
        containers=containers_text(g.min_containers, g.max_containers),
        concurrency=f"{g.target_concurrency} target / {g.max_concurrency} max",
        content_hash=gateway.short_hash,
        usd_per_hour_min=0.0,
        usd_per_hour_max=0.0,
        modal_env=modal_env,
        auth="api_key",
        priced_gpu=None,
        usd_per_container_hour=0.0,
    )


def make_plan(
    apps: list[RenderedApp],
    prices: dict[str, float],
    fleet_env: str | None,
    *,
    gateway=None,
    gateway_source: str | None = None,
    gateway_modal_env: str | None = None,
) -> Plan:
    rows = [plan_row(a, prices) for a in apps]
    if gateway is not None:
        rows.append(gateway_row(gateway, gateway_source, gateway_modal_env))
    return Plan(tuple(rows), fleet_env, tuple(sorted(prices)))
