"""What fleetform knows about Modal's GPU types: memory, compute capability, count limit, price.

The schema's `gpu.type` enum lists the same names; `tests/test_schema.py` proves the two agree.
Prices are Modal's per-second list prices for on-demand, preemptible GPUs in the default region;
region and non-preemptible multipliers are not applied. Override them in `deployments/fleet.yaml`
(`prices:`) when your contract differs.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2026-05"
PRICES_SOURCE = "Modal list prices (modal.com/pricing), per-second rate x 3600"


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_gib: float  # usable device memory per GPU
    compute_capability: tuple[int, int]
    max_count: int  # GPUs per container
    usd_per_hour: float  # one GPU, list price

    @property
    def supports_fp8(self) -> bool:
        """FP8 W8A8 kernels need Ada (8.9) or newer."""
        return self.compute_capability >= (8, 9)


def _per_hour(usd_per_second: float) -> float:
    return round(usd_per_second * 3600, 4)


GPU_TYPES: dict[str, GpuType] = {
    g.name: g
    for g in (
        GpuType("T4", 16, (7, 5), 8, _per_hour(0.000164)),
        GpuType("L4", 24, (8, 9), 8, _per_hour(0.000222)),
        GpuType("A10", 24, (8, 6), 4, _per_hour(0.000306)),
        GpuType("L40S", 48, (8, 9), 8, _per_hour(0.000542)),
        GpuType("A100-40GB", 40, (8, 0), 8, _per_hour(0.000583)),
        GpuType("A100-80GB", 80, (8, 0), 8, _per_hour(0.000694)),
        GpuType("RTX-PRO-6000", 96, (12, 0), 8, _per_hour(0.000842)),
        GpuType("H100", 80, (9, 0), 8, _per_hour(0.001097)),
        GpuType("H200", 141, (9, 0), 8, _per_hour(0.001261)),
        GpuType("B200", 180, (10, 0), 8, _per_hour(0.001736)),
    )
}


def parse_gpu_type(spec: str) -> tuple[str, bool]:
    """Split `"H100!"` into `("H100", True)`: the `!` forbids Modal's automatic upgrade."""
    if spec.endswith("!"):
        return spec[:-1], True
    return spec, False


def gpu_info(spec: str) -> GpuType:
    return GPU_TYPES[parse_gpu_type(spec)[0]]
