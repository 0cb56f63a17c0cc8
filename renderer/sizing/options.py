"""Which GPU types and counts can run a model, what each leaves free, and the fit rule `validate` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from renderer.diagnostics import Diagnostic, Mark, Severity
from renderer.gpus import GPU_TYPES, GpuType, parse_gpu_type
from renderer.sizing.common import DEFAULT_UTILIZATION, GIB, OVERHEAD_GIB, TP_SIZES
from renderer.sizing.memory import kv_bytes_per_token_per_gpu, kv_dtype_bytes, loaded_weight_bytes
from renderer.sizing.shape import ModelShape

# --- the options ---------------------------------------------------------------------------------------


def tp_problem(shape: ModelShape, tp: int) -> str | None:
    """Why vLLM cannot split this model over `tp` GPUs, or None."""
    if shape.num_attention_heads % tp:
        return f"tensor parallel {tp} does not divide {shape.num_attention_heads} attention heads"
    if not shape.is_mla and shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        return f"{shape.num_kv_heads} KV heads can be neither split nor replicated over {tp} GPUs"
    inter = shape.moe_intermediate_size if shape.is_moe else shape.intermediate_size
    if inter and inter % tp:
        return f"tensor parallel {tp} does not divide the MLP width {inter}"
    return None


BF16_SINCE = (8, 0)  # compute capability of the first GPUs with bfloat16 (Ampere); vLLM refuses it below
FP8_SINCE = (8, 9)  # FP8 W8A8 kernels: Ada or newer
INT4_SINCE = (7, 5)  # AWQ, GPTQ and compressed-tensors kernels: Turing or newer


def running_dtype(dtype: str | None, checkpoint_dtype: str | None) -> str | None:
    """The dtype vLLM computes in: `dtype` if set (other than `auto`), else the checkpoint's."""
    chosen = dtype if dtype not in (None, "auto") else checkpoint_dtype
    return chosen.removeprefix("torch.") if chosen else None


def dtype_problem(gpu: GpuType, dtype: str | None) -> str | None:
    """Why this GPU type cannot compute in `dtype`, or None."""
    if dtype in ("bfloat16", "bf16") and gpu.compute_capability < BF16_SINCE:
        cc = ".".join(map(str, gpu.compute_capability))
        return f"bfloat16 needs compute capability 8.0 or newer; {gpu.name} has {cc}"
    return None


def hardware_problem(gpu: GpuType, quantization: str, dtype: str | None = None) -> str | None:
    """Why this GPU type cannot run the weight format (or compute in `dtype`), or None."""
    cc = ".".join(map(str, gpu.compute_capability))
    if quantization == "fp8" and gpu.compute_capability < FP8_SINCE:
        return f"FP8 needs compute capability 8.9 or newer; {gpu.name} has {cc}"
    if quantization in ("awq", "gptq", "compressed-tensors") and gpu.compute_capability < INT4_SINCE:
        return f"{quantization} needs Turing (compute capability 7.5) or newer; {gpu.name} has {cc}"
    return dtype_problem(gpu, dtype)


@dataclass(frozen=True)
class Option:
    """One GPU type and count, and how the model would sit on it (GiB per container)."""

    gpu: str
    count: int
    weights_gib: float
    kv_gib: float
    overhead_gib: float
    budget_gib: float
    usd_per_hour: float
    excluded: str | None = None  # why it cannot run the model at all (parallelism, hardware)

    @property
    def headroom_gib(self) -> float:
        return self.budget_gib - self.weights_gib - self.kv_gib - self.overhead_gib

    @property
    def fits(self) -> bool:
        return self.excluded is None and self.headroom_gib >= 0

    @property
    def label(self) -> str:
        return f"{self.count} x {self.gpu}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "count": self.count,
            "tensor_parallel_size": self.count,
            "weights_gib": round(self.weights_gib, 2),
            "kv_gib": round(self.kv_gib, 2),
            "overhead_gib": round(self.overhead_gib, 2),
            "budget_gib": round(self.budget_gib, 2),
            "headroom_gib": round(self.headroom_gib, 2),
            "usd_per_hour": round(self.usd_per_hour, 4),
            "fits": self.fits,
            "excluded": self.excluded,
        }


def evaluate(
    shape: ModelShape,
    weights_bytes: float,
    tokens: int,
    gpu: GpuType,
    count: int,
    *,
    tp: int | None = None,
    kv_element_bytes: int = 2,
    utilization: float = DEFAULT_UTILIZATION,
    quantization: str = "none",
    usd_per_hour: float | None = None,
    dtype: str | None = None,
) -> Option:
    """How `tokens` tokens of KV cache and the weights sit on `count` x `gpu` (tensor parallel `tp`),
    computing in `dtype` (None: not checked against the hardware)."""
    tp = tp or count
    excluded = hardware_problem(gpu, quantization, dtype) or tp_problem(shape, tp)
    if count > gpu.max_count:
        excluded = f"{gpu.name} allows at most {gpu.max_count} GPUs a container"
    per_gpu_weights = weights_bytes / tp
    per_gpu_kv = tokens * kv_bytes_per_token_per_gpu(shape, kv_element_bytes, tp)
    price = gpu.usd_per_hour if usd_per_hour is None else usd_per_hour
    return Option(
        gpu=gpu.name,
        count=count,
        weights_gib=per_gpu_weights * count / GIB,
        kv_gib=per_gpu_kv * count / GIB,
        overhead_gib=OVERHEAD_GIB * count,
        budget_gib=utilization * gpu.memory_gib * count,
        usd_per_hour=price * count,
        excluded=excluded,
    )


def rank_options(
    shape: ModelShape,
    weights_bytes: float,
    tokens: int,
    *,
    quantization: str = "none",
    kv_element_bytes: int = 2,
    utilization: float = DEFAULT_UTILIZATION,
    prices: Mapping[str, float] | None = None,
    gpu_types: Iterable[GpuType] | None = None,
    dtype: str | None = None,
) -> list[Option]:
    """Every GPU type x count (1, 2, 4, 8, within each type's limit), cheapest fitting first; a GPU
    that cannot compute in `dtype` (bfloat16 below compute capability 8.0) is excluded.

    Order: options that fit by price, then GPU count, then most headroom; then those that do not
    fit; then those that cannot run the model at all.
    """
    out = []
    for gpu in gpu_types or GPU_TYPES.values():
        for count in TP_SIZES:
            if count > gpu.max_count:
                continue
            price = (prices or {}).get(gpu.name)
            out.append(
                evaluate(
                    shape,
                    weights_bytes,
                    tokens,
                    gpu,
                    count,
                    kv_element_bytes=kv_element_bytes,
                    utilization=utilization,
                    quantization=quantization,
                    usd_per_hour=price,
                    dtype=dtype,
                )
            )
    return sorted(out, key=lambda o: (o.excluded is not None, not o.fits, o.usd_per_hour, o.count, -o.headroom_gib))


def cheapest(options: Iterable[Option]) -> Option | None:
    return next((o for o in options if o.fits), None)


def weighed(options: list[Option]) -> list[Option]:
    """The rows worth showing: for each GPU type, the smallest count that fits, else its largest
    count that can run the model at all; in ranking order."""
    by_type: dict[str, Option] = {}
    for o in sorted(options, key=lambda o: o.count):
        best = by_type.get(o.gpu)
        if best is not None and best.fits:
            continue
        if o.fits or o.excluded is None or best is None:
            by_type[o.gpu] = o
    keep = set(map(id, by_type.values()))
    return [o for o in options if id(o) in keep]


# --- the fit rule for `validate` --------------------------------------------------------------------------


@dataclass(frozen=True)
class _FitInputs:
    source: str
    gpu_paths: tuple[tuple[tuple, str], ...]  # (field path, "H100!") for the type and each fallback
    count: int
    tp: int
    quantization: str
    quantize_on_load: bool
    dtype: str | None
    max_model_len: int | None
    utilization: float
    kv_cache_dtype: str | None


def _fit_inputs(deployment: Any, default_utilization: float = DEFAULT_UTILIZATION) -> _FitInputs:
    """The fields check_fit reads, from a resolved `spec.Deployment` or a merged plain mapping."""
    if isinstance(deployment, Mapping):
        model, gpu, engine = (deployment.get(k) or {} for k in ("model", "gpu", "engine"))
        specs = [(("gpu", "type"), gpu["type"])]
        specs += [(("gpu", "fallbacks", i), s) for i, s in enumerate(gpu.get("fallbacks") or [])]
        count = gpu.get("count", 1)
        return _FitInputs(
            str(deployment.get("name", "deployment")),
            tuple(specs),
            count,
            gpu.get("tensor_parallel_size") or count,
            model.get("quantization", "none"),
            bool(model.get("quantize_on_load")),
            model.get("dtype"),
            model.get("max_model_len"),
            engine.get("gpu_memory_utilization") or default_utilization,
            engine.get("kv_cache_dtype"),
        )
    d = deployment
    specs = [(("gpu", "type"), d.gpu.type)] + [(("gpu", "fallbacks", i), s) for i, s in enumerate(d.gpu.fallbacks)]
    return _FitInputs(
        d.source,
        tuple(specs),
        d.gpu.count,
        d.gpu.tensor_parallel_size,
        d.model.quantization,
        d.model.quantize_on_load,
        d.model.dtype,
        d.model.max_model_len,
        d.engine.gpu_memory_utilization or default_utilization,
        d.engine.kv_cache_dtype,
    )


def max_tokens_that_fit(option: Option, shape: ModelShape, kv_element_bytes: int, tp: int) -> int:
    """Most tokens of KV cache the option's headroom (before any KV) could hold."""
    free = (option.budget_gib - option.weights_gib - option.overhead_gib) / option.count * GIB
    per_token = kv_bytes_per_token_per_gpu(shape, kv_element_bytes, tp)
    return max(0, int(free // per_token))


def check_fit(
    deployment: Any,
    shape: ModelShape,
    weights_bytes: int,
    *,
    mark: Callable[..., Mark] | None = None,
    prices: Mapping[str, float] | None = None,
    default_utilization: float = DEFAULT_UTILIZATION,
) -> Diagnostic | None:
    """An error when vLLM could not start this deployment: its weights plus the KV cache of one
    `max_model_len`-token sequence (vLLM's own start-up check) do not fit a GPU's budget.

    `deployment` is a resolved `spec.Deployment` or the merged plain mapping a validation rule
    sees; `weights_bytes` is the checkpoint's size on disk (quantizing on load and dtype changes
    are applied here); `mark(*path)` places the diagnostic (a rule passes `ctx.mark`), else it
    points at the top of the deployment's file. The type and each fallback are checked; the first
    that fails is reported. Concurrency is not checked: vLLM queues what its KV cache cannot hold.
    `default_utilization` is the pinned vLLM's `--gpu-memory-utilization` default, for a deployment
    that leaves it unset.
    """
    f = _fit_inputs(deployment, default_utilization)
    where = mark or (lambda *path: Mark(f.source, 1, 1))
    loaded = loaded_weight_bytes(
        weights_bytes, shape, quantize_on_load=f.quantize_on_load, quantization=f.quantization, dtype=f.dtype
    )
    element = kv_dtype_bytes(f.kv_cache_dtype, f.dtype)
    tokens = f.max_model_len or shape.max_position_embeddings or 0
    problem = tp_problem(shape, f.tp)
    if problem:
        sizes = [str(t) for t in TP_SIZES if t <= f.count and f.count % t == 0 and not tp_problem(shape, t)]
        return Diagnostic(
            where("gpu", "tensor_parallel_size"),
            ("gpu", "tensor_parallel_size"),
            f"{problem}: vLLM cannot split this {shape.model_type} model over {f.tp} GPUs",
            "model-fit",
            Severity.ERROR,
            hint=f"tensor parallel sizes that work with {f.count} GPU(s): {', '.join(sizes) or 'none'}",
        )
    for path, spec in f.gpu_paths:
        gpu = GPU_TYPES[parse_gpu_type(spec)[0]]
        option = evaluate(
            shape, loaded, tokens, gpu, f.count, tp=f.tp, kv_element_bytes=element, utilization=f.utilization
        )
        if option.fits:
            continue
        better = cheapest(
            rank_options(
                shape,
                loaded,
                tokens,
                quantization=f.quantization,
                kv_element_bytes=element,
                utilization=f.utilization,
                prices=prices,
                dtype=running_dtype(f.dtype, shape.torch_dtype),
            )
        )
        suggest = (
            f"{better.label} (${better.usd_per_hour:.2f}/h) is the cheapest that fits"
            if better
            else "no single container fits it; quantize the checkpoint or shorten the context"
        )
        budget = option.budget_gib - option.overhead_gib
        if option.weights_gib > budget:
            return Diagnostic(
                where(*path),
                path,
                f"{option.weights_gib:.1f} GiB of weights do not fit {option.label} at "
                f"{f.utilization:g} utilization ({budget:.1f} GiB after {option.overhead_gib:g} GiB "
                f"of overhead)",
                "model-fit",
                Severity.ERROR,
                hint=suggest,
            )
        fit_len = max_tokens_that_fit(option, shape, element, f.tp)
        at = ("model", "max_model_len") if f.max_model_len else path
        shorter = (
            f"set model.max_model_len to at most {fit_len // 1024 * 1024 or fit_len}, or " if fit_len >= 16 else ""
        )
        return Diagnostic(
            where(*at),
            at,
            f"{option.weights_gib:.1f} GiB of weights + {option.kv_gib:.1f} GiB of KV cache for one "
            f"{tokens}-token sequence do not fit {option.label} at {f.utilization:g} utilization "
            f"({budget:.1f} GiB after overhead): vLLM would refuse to start",
            "model-fit",
            Severity.ERROR,
            hint=shorter + suggest,
        )
    return None
