"""What staging saves, and whether it happened: part of every `fleetform plan`.

Offline (every plan): an estimate of what a deployment's first cold start would spend on its GPUs
downloading the weights, were they not staged: weight bytes (from `model.parameters_b` and the
weight format, `sizing.parameter_weight_bytes`) / `DOWNLOAD_BYTES_PER_SECOND`, during which all of
the container's GPUs are billed at the dearest type that may run it (the plan's own price).

Live (with Modal credentials): per deployment, whether its Volume holds the staging marker of its
model's revision and of each adapter's (`Backend.staged`), i.e. whether `fleetform stage` (or a
`deploy`) downloaded and verified them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderer.config import spec
from renderer.plan.cost import gpu_hourly
from renderer.sizing import parameter_weight_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from renderer.codegen.render import RenderedApp
    from renderer.modal_api import Backend

# The download rate the estimate assumes: 100 MB/s (800 Mbit/s) from the Hugging Face Hub into a
# Modal container. An assumption, not a measurement: a low figure for one container on a cloud
# network (hf-xet's parallel downloads often go faster), so the estimate is what a slow download
# costs; a rate twice as fast halves it. docs/deploying.md says where it comes from.
DOWNLOAD_BYTES_PER_SECOND = 100 * 10**6
DOWNLOAD_RATE_NOTE = (
    "assumed 100 MB/s from the Hugging Face Hub into one container (a low figure; not measured: see docs/deploying.md)"
)


def download_bytes(d: spec.Deployment) -> float | None:
    """Bytes of the checkpoint a container downloads, from the parameter count: a checkpoint quantized
    on load is downloaded in 16 bits. None without `model.parameters_b`."""
    m = d.model
    if m.parameters_b is None:
        return None
    fmt = "none" if m.quantize_on_load else m.quantization
    return parameter_weight_bytes(m.parameters_b * 1e9, fmt, m.dtype)


@dataclass(frozen=True)
class ColdStartDownload:
    """One deployment's first cold start without staging: the download its GPUs wait for."""

    name: str
    weight_bytes: int | None  # None: no model.parameters_b, no estimate
    gpus: int
    priced_gpu: str
    download_seconds: float | None = None
    gpu_minutes: float | None = None
    usd: float | None = None

    @classmethod
    def of(cls, d: spec.Deployment, prices: dict[str, float]) -> ColdStartDownload:
        from renderer.plan.cost import priced_gpu

        size = download_bytes(d)
        gpu = priced_gpu(d.gpu, prices)
        if size is None:
            return cls(d.name, None, d.gpu.count, gpu)
        seconds = size / DOWNLOAD_BYTES_PER_SECOND
        return cls(
            d.name,
            int(size),
            d.gpu.count,
            gpu,
            round(seconds, 1),
            round(seconds / 60 * d.gpu.count, 2),
            round(seconds / 3600 * gpu_hourly(d, prices), 4),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cold_start_downloads(deployments: Sequence[spec.Deployment], prices: dict[str, float]) -> list[ColdStartDownload]:
    return [ColdStartDownload.of(d, prices) for d in deployments]


def cold_starts_to_dict(rows: Sequence[ColdStartDownload]) -> dict[str, Any]:
    return {
        "download_bytes_per_second": DOWNLOAD_BYTES_PER_SECOND,
        "assumption": DOWNLOAD_RATE_NOTE,
        "deployments": [r.to_dict() for r in rows],
    }


def render_cold_starts(rows: Sequence[ColdStartDownload], console: Console) -> None:
    """One line per deployment: what its first cold start would spend downloading on its GPUs."""
    from rich.text import Text

    if not rows:
        return
    console.print(Text("First cold start without staged weights (`fleetform stage` avoids it):"))
    for r in rows:
        if r.weight_bytes is None:
            line = f"  {r.name}: no estimate (set model.parameters_b)"
        else:
            assert r.download_seconds is not None and r.usd is not None
            line = (
                f"  {r.name}: {r.weight_bytes / 1e9:.1f} GB, about {r.download_seconds / 60:.1f} min on "
                f"{r.gpus} x {r.priced_gpu} = {r.gpu_minutes:g} GPU-minutes, ${r.usd:.2f}"
            )
        console.print(Text(line))
    console.print(Text(f"Download rate {DOWNLOAD_RATE_NOTE}."), style="dim")


# --- live: staged or not -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedState:
    name: str
    modal_env: str | None
    volume: str
    repos: tuple[str, ...]  # "repository@revision", the model first
    staged: bool | None  # None: Modal could not tell (`error`)
    missing: tuple[str, ...] = ()  # the repositories not staged
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modal_env": self.modal_env,
            "volume": self.volume,
            "repos": list(self.repos),
            "staged": self.staged,
            "missing": list(self.missing),
            "error": self.error,
        }


def staged_states(apps: Sequence[RenderedApp], backend: Backend) -> list[StagedState]:
    """Per deployment, whether its weights are staged on its Volume (one listing per repository)."""
    from renderer.modal_api import BackendError

    out = []
    for app in apps:
        d = app.deployment
        repos = ((d.model.id, d.model.revision), *((a.id, a.revision) for a in d.model.lora_adapters))
        names = tuple(f"{r}@{v}" for r, v in repos)
        try:
            found = backend.staged(d.cache.huggingface_volume, d.modal_env, repos)
        except BackendError as exc:
            out.append(StagedState(d.name, d.modal_env, d.cache.huggingface_volume, names, None, error=str(exc)))
            continue
        missing = tuple(f"{r}@{v}" for r, v in repos if not found.get((r, v)))
        out.append(StagedState(d.name, d.modal_env, d.cache.huggingface_volume, names, not missing, missing))
    return out


def render_staged(states: Sequence[StagedState], console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Staged weights")
    for col in ("Deployment", "Volume", "Model", "Staged"):
        table.add_column(col)
    for s in states:
        model = s.repos[0].rsplit("@", 1)
        shown = f"{model[0]}@{model[1][:7]}" + (f" +{len(s.repos) - 1} adapter(s)" if len(s.repos) > 1 else "")
        if s.staged is None:
            state = f"[yellow]unknown[/yellow]: {escape(s.error or '')}"
        elif s.staged:
            state = "[green]staged[/green]"
        else:
            state = "[red]not staged[/red]" + (
                f" ({escape(', '.join(m.rsplit('@', 1)[0] for m in s.missing))})" if len(s.repos) > 1 else ""
            )
        table.add_row(s.name, escape(s.volume), escape(shown), state)
    console.print(table)
