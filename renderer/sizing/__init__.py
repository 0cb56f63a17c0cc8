"""Sizing: which GPU type and count holds a model's weights plus the KV cache its traffic needs.

`fleetform new` reads a model's `config.json` and weight sizes, weighs every GPU type and count,
and writes a deployment on the cheapest one that fits; `validate` calls `check_fit` to refuse a
deployment vLLM could not even start. The arithmetic, per GPU, with tensor parallel size `tp`:

    budget   = gpu_memory_utilization x GPU memory            (vLLM's share of the card)
    weights  = weight bytes / tp                               (layers are split over the GPUs)
    kv       = tokens x KV bytes per token on one GPU
    overhead = 1 GiB                                           (activations of vLLM's profiling
                                                                run, CUDA graphs, NCCL buffers)
    headroom = budget - weights - kv - overhead                (must not be negative)

KV bytes per token (the whole model, one GPU):

* standard attention (MHA, GQA, MQA): 2 (K and V) x layers x KV heads x head_dim x dtype bytes.
  Llama-3.1-8B in BF16: 2 x 32 x 8 x 128 x 2 = 131072 bytes = 128 KiB a token. Over `tp` GPUs the
  KV heads are split (`kv_heads % tp == 0`) or, when there are fewer heads than GPUs, replicated
  (`tp % kv_heads == 0`): each GPU then holds one head, so the fleet-wide total grows.
* MLA (DeepSeek-V2/V3, `kv_lora_rank` in the config): vLLM caches one compressed latent a layer,
  `kv_lora_rank + qk_rope_head_dim` values, shared by every head, so there is no factor 2 and no
  head count: DeepSeek-V2-Lite in BF16 is (512 + 64) x 27 x 2 = 31104 bytes a token. The latent is
  not split by tensor parallelism: every GPU holds all of it.

Weights come from the checkpoint's files (their sizes on disk, or the safetensors index's
`metadata.total_size`), which already counts every expert of a mixture-of-experts model and the
vision tower of a multimodal one; without them, the parameter count is estimated from the config.
Sliding-window attention, hybrid (Mamba) layers and prefix-cache sharing are not modelled: the
estimate errs on the side of more memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from renderer.diagnostics import Diagnostic, Mark, Severity
from renderer.gpus import GPU_TYPES, GpuType, parse_gpu_type

GIB = 2**30
DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
OVERHEAD_GIB = 1.0  # per GPU, outside weights and KV: activations, CUDA graphs, NCCL buffers
TP_SIZES = (1, 2, 4, 8)  # tensor parallel sizes vLLM runs well; a container's GPU count


class SizingError(Exception):
    """A problem with the model's metadata or the request, as one line for the user."""


# --- the model's shape ------------------------------------------------------------------------------

# Fields a nested `text_config` may leave out because they equal transformers' defaults for its
# `model_type` (llava-hf's Mistral-based configs omit hidden_size, heads and layers, for example):
# `save_pretrained` writes a sub-config as its difference from the class defaults, while a top-level
# config always keeps its model-specific fields, so only nested configs get these.
TEXT_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    },
    "mistral": {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "max_position_embeddings": 4096 * 32,
    },
    "qwen2": {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 22016,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
    },
}

# Other names older architectures use for the same fields (GPT-2, Falcon, MPT, ChatGLM).
_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("n_embd", "d_model"),
    "num_attention_heads": ("n_head", "num_heads", "n_heads"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
    "num_key_value_heads": ("num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "intermediate_size": ("ffn_hidden_size", "n_inner"),
    "vocab_size": ("padded_vocab_size",),
    "max_position_embeddings": ("n_positions", "max_seq_len", "seq_length", "max_sequence_length"),
}

_NESTED_TEXT_KEYS = ("text_config", "llm_config", "language_config")


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs from a config: layer count and width, attention layout, experts."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int | None
    torch_dtype: str  # the checkpoint's dtype
    max_position_embeddings: int | None
    quantization: str = "none"  # the checkpoint's format, as the deployment schema names it
    num_experts: int = 0  # routed experts; 0 for a dense model
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0
    first_dense_layers: int = 0  # DeepSeek's first_k_dense_replace
    tie_word_embeddings: bool = False
    kv_lora_rank: int | None = None  # MLA
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    q_lora_rank: int | None = None
    v_head_dim: int | None = None
    multimodal: bool = False

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention(self) -> str:
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == self.num_attention_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    def describe(self) -> str:
        """One line for people: `llama, 32 layers, GQA 32/8 heads x 128`."""
        if self.is_mla:
            attn = f"MLA latent {self.kv_lora_rank}+{self.qk_rope_head_dim}, {self.num_attention_heads} heads"
        else:
            attn = f"{self.attention} {self.num_attention_heads}/{self.num_kv_heads} heads x {self.head_dim}"
        moe = f", MoE {self.num_experts} experts" if self.is_moe else ""
        mm = ", multimodal" if self.multimodal else ""
        return f"{self.model_type}, {self.num_layers} layers, {attn}{moe}{mm}"


def _pick(cfg: Mapping[str, Any], name: str) -> Any:
    for key in (name, *_ALIASES.get(name, ())):
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def _int_field(cfg: Mapping[str, Any], name: str, model_type: str, required: bool = True) -> int | None:
    value = _pick(cfg, name)
    if value is None:
        if required:
            raise SizingError(f"config.json has no `{name}` (model_type {model_type!r}): cannot size this model")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SizingError(f"config.json `{name}` should be a non-negative integer, got {value!r}")
    return value


def _text_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The language model's part of a config: nested for most multimodal models, else the whole."""
    for key in _NESTED_TEXT_KEYS:
        nested = config.get(key)
        if isinstance(nested, Mapping):
            defaults = TEXT_CONFIG_DEFAULTS.get(str(nested.get("model_type", "")), {})
            return {**defaults, **nested}, True
    multimodal = any(isinstance(config.get(k), Mapping) for k in ("vision_config", "audio_config"))
    return dict(config), multimodal


def checkpoint_quantization(config: Mapping[str, Any]) -> str:
    """The checkpoint's weight format in the deployment schema's words, from `quantization_config`.

    compressed-tensors checkpoints with 8-bit float weights are FP8 (RedHatAI's `-FP8` models), so
    they get FP8's hardware rule; other compressed-tensors schemes (W4A16, W8A8-int) stay as they are.
    """
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping):
        text = config.get("text_config")
        qc = text.get("quantization_config") if isinstance(text, Mapping) else None
    if not isinstance(qc, Mapping):
        return "none"
    method = str(qc.get("quant_method", "")).lower().replace("_", "-")
    if method in ("fp8", "fbgemm-fp8"):
        return "fp8"
    if method in ("awq", "awq-marlin"):
        return "awq"
    if method in ("gptq", "gptq-marlin"):
        return "gptq"
    if method == "bitsandbytes":
        return "bitsandbytes"
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, Mapping)]
        if weights and all(w.get("type") == "float" and w.get("num_bits") == 8 for w in weights):
            return "fp8"
        return "compressed-tensors"
    raise SizingError(
        f"checkpoint quantization {method!r} is not one fleetform supports "
        "(none, fp8, awq, gptq, compressed-tensors, bitsandbytes)"
    )


def shape_from_config(config: Any) -> ModelShape:
    """A `config.json` (already parsed) -> the `ModelShape` sizing works with. Raises SizingError."""
    if not isinstance(config, Mapping):
        raise SizingError(f"config.json should hold a JSON object, got {type(config).__name__}")
    text, multimodal = _text_config(config)
    model_type = str(text.get("model_type") or config.get("model_type") or "unknown")
    hidden = _int_field(text, "hidden_size", model_type)
    heads = _int_field(text, "num_attention_heads", model_type)
    layers = _int_field(text, "num_hidden_layers", model_type)
    assert hidden is not None and heads is not None and layers is not None
    if heads == 0 or layers == 0:
        raise SizingError(f"config.json says {heads} attention heads and {layers} layers: cannot size this model")
    kv_heads = _int_field(text, "num_key_value_heads", model_type, required=False)
    if kv_heads is None:
        kv_heads = 1 if text.get("multi_query") else heads
    head_dim = _int_field(text, "head_dim", model_type, required=False) or hidden // heads
    kv_lora = _int_field(text, "kv_lora_rank", model_type, required=False)
    rope = _int_field(text, "qk_rope_head_dim", model_type, required=kv_lora is not None)
    experts = (
        _pick(text, "num_local_experts")
        or _pick(text, "num_experts")
        or _pick(text, "n_routed_experts")
        or _pick(text, "moe_num_experts")
        or 0
    )
    inter = _int_field(text, "intermediate_size", model_type, required=False)
    moe_inter = _int_field(text, "moe_intermediate_size", model_type, required=False) or (inter if experts else None)
    shared = _int_field(text, "shared_expert_intermediate_size", model_type, required=False)
    if shared is None:
        shared = (text.get("n_shared_experts") or 0) * (moe_inter or 0)
    dtype = str(
        config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype") or text.get("dtype") or "bfloat16"
    )
    return ModelShape(
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=_int_field(text, "vocab_size", model_type, required=False) or 0,
        intermediate_size=inter,
        torch_dtype=dtype,
        max_position_embeddings=_int_field(text, "max_position_embeddings", model_type, required=False),
        quantization=checkpoint_quantization(config),
        num_experts=int(experts),
        moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=int(shared),
        first_dense_layers=int(text.get("first_k_dense_replace") or 0) if experts else 0,
        tie_word_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope if kv_lora is not None else None,
        qk_nope_head_dim=_int_field(text, "qk_nope_head_dim", model_type, required=False),
        q_lora_rank=_int_field(text, "q_lora_rank", model_type, required=False),
        v_head_dim=_int_field(text, "v_head_dim", model_type, required=False),
        multimodal=multimodal,
    )


# --- bytes ----------------------------------------------------------------------------------------------


def dtype_bytes(dtype: str | None) -> int:
    """Bytes of one element: 4 for float32, 1 for the fp8 types, else 2 (bf16, fp16, vLLM's `auto`)."""
    if dtype in ("float32", "fp32"):
        return 4
    if dtype and dtype.startswith("fp8"):
        return 1
    return 2


def kv_dtype_bytes(kv_cache_dtype: str | None, dtype: str | None) -> int:
    """Bytes of one KV cache element: `--kv-cache-dtype` if set, else the model's activation dtype.

    vLLM's `auto` dtype runs a float32 checkpoint in 16 bits, so only an explicit float32 costs 4.
    """
    if kv_cache_dtype and kv_cache_dtype != "auto":
        return dtype_bytes(kv_cache_dtype)
    return 4 if dtype == "float32" else 2


def kv_bytes_per_token(shape: ModelShape, element_bytes: int = 2) -> int:
    """KV cache bytes one token takes in the whole model, on one GPU (see the module docstring)."""
    if shape.is_mla:
        assert shape.kv_lora_rank is not None and shape.qk_rope_head_dim is not None
        return (shape.kv_lora_rank + shape.qk_rope_head_dim) * shape.num_layers * element_bytes
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * element_bytes


def kv_bytes_per_token_per_gpu(shape: ModelShape, element_bytes: int, tp: int) -> float:
    """KV bytes a token takes on each of `tp` GPUs: heads split, replicated when fewer than GPUs;
    an MLA latent is replicated whole."""
    if shape.is_mla:
        return kv_bytes_per_token(shape, element_bytes)
    heads_per_gpu = shape.num_kv_heads / tp if shape.num_kv_heads >= tp else 1
    return 2 * shape.num_layers * heads_per_gpu * shape.head_dim * element_bytes


def parameter_count(shape: ModelShape) -> int:
    """Parameters of the language model estimated from its shape (norms and biases left out).

    Used when the checkpoint's file sizes are unknown, and for `parameters_b`. Every expert counts:
    all of them sit in GPU memory, however few a token visits. A multimodal model's vision tower
    is not counted here (file sizes do count it).
    """
    h, heads = shape.hidden_size, shape.num_attention_heads
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    if shape.is_mla:
        nope = shape.qk_nope_head_dim or shape.head_dim
        rope = shape.qk_rope_head_dim or 0
        v = shape.v_head_dim or shape.head_dim
        lora = shape.kv_lora_rank or 0
        q = (
            (h * shape.q_lora_rank + shape.q_lora_rank * heads * (nope + rope))
            if shape.q_lora_rank
            else h * heads * (nope + rope)
        )
        attention = q + h * (lora + rope) + lora * heads * (nope + v) + heads * v * h
    else:
        q_width, kv_width = heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        attention = 2 * h * q_width + 2 * h * kv_width
    dense_mlp = 3 * h * (shape.intermediate_size or 4 * h)
    if shape.is_moe:
        experts = shape.num_experts * 3 * h * (shape.moe_intermediate_size or 0)
        moe_mlp = experts + 3 * h * shape.shared_expert_intermediate_size + h * shape.num_experts
        dense_layers = min(shape.first_dense_layers, shape.num_layers)
        mlp = dense_layers * dense_mlp + (shape.num_layers - dense_layers) * moe_mlp
    else:
        mlp = shape.num_layers * dense_mlp
    return embeddings + shape.num_layers * attention + mlp


# Bytes per parameter once loaded; 4-bit formats carry ~12% more for scales and zero points.
BYTES_PER_PARAM = {
    "none": 2.0,
    "fp8": 1.0,
    "compressed-tensors": 1.0,
    "awq": 0.5625,
    "gptq": 0.5625,
    "bitsandbytes": 0.5625,
}


def bytes_per_parameter(quantization: str, dtype: str | None) -> float:
    """Bytes one parameter takes once loaded: by weight format; 4 for an unquantized float32 model."""
    if quantization == "none" and dtype in ("float32", "fp32"):
        return 4.0
    return BYTES_PER_PARAM[quantization]


def parameter_weight_bytes(parameters: float, quantization: str, dtype: str | None) -> float:
    """Approximate bytes of weights once loaded, from a parameter count (a checkpoint quantized on
    load counts as quantized)."""
    return parameters * bytes_per_parameter(quantization, dtype)


def estimated_weight_bytes(shape: ModelShape, quantization: str) -> int:
    """Weight bytes from the parameter count, for when the checkpoint's files are not at hand."""
    return int(parameter_weight_bytes(parameter_count(shape), quantization, shape.torch_dtype))


def loaded_weight_bytes(
    file_bytes: int,
    shape: ModelShape,
    *,
    quantize_on_load: bool = False,
    quantization: str = "none",
    dtype: str | None = None,
) -> int:
    """GPU bytes of the weights once vLLM has loaded a checkpoint of `file_bytes`.

    Files are what loads, except: quantizing a 16-bit checkpoint on load shrinks its linear layers
    (embeddings and the LM head stay 16-bit); a float32 checkpoint runs in 16 bits unless `dtype`
    asks for float32; a 16-bit one asked to run in float32 doubles.
    """
    if quantize_on_load and quantization in ("fp8", "bitsandbytes"):
        embed = 2 * shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
        embed = min(embed, file_bytes)
        ratio = 0.5 if quantization == "fp8" else 0.5625 / 2
        return int(embed + (file_bytes - embed) * ratio)
    if shape.quantization == "none":
        stored = dtype_bytes(shape.torch_dtype)
        running = 4 if dtype == "float32" else 2
        return int(file_bytes * running / stored)
    return file_bytes


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


# --- reading the model's metadata ---------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors",)
LEGACY_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelMetadata:
    """A model's shape and weight size, and where each came from (for the user to judge)."""

    config: dict
    shape: ModelShape
    weights_bytes: int | None  # size of the checkpoint's weights; None: unknown
    config_source: str  # "--from-dir", "Hugging Face cache", "Hugging Face Hub"
    weights_source: str


def read_config(path: Path) -> dict:
    """Parse a config.json; every failure is one line naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SizingError(f"{path.name}: not found in {path.parent.name or '.'}") from None
    except OSError as exc:
        raise SizingError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SizingError(f"{path.name} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SizingError(f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise SizingError(f"{path.name} should hold a JSON object, got {type(data).__name__}")
    return data


def _index_total(path: Path) -> int | None:
    try:
        total = json.loads(path.read_text(encoding="utf-8"))["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def weights_in_dir(folder: Path) -> tuple[int, str] | None:
    """(bytes, how) of the weights in a checkpoint folder: the safetensors files' sizes on disk,
    else the safetensors index's `metadata.total_size`, else legacy PyTorch files; None if none."""

    def sizes(suffixes: tuple[str, ...]) -> list[int]:
        out = []
        for p in sorted(folder.iterdir()):
            if p.name.endswith(suffixes) and not p.name.startswith(("training_args", "optimizer")):
                try:
                    out.append(p.stat().st_size)
                except OSError:  # a dangling cache symlink: that file was never downloaded
                    return []
        return out

    if not folder.is_dir():
        return None
    found = sizes(WEIGHT_SUFFIXES)
    index = _index_total(folder / INDEX_FILE)
    if found and (index is None or sum(found) >= index):
        return sum(found), f"{len(found)} safetensors file(s) on disk"
    if index is not None:
        return index, f"{INDEX_FILE} metadata.total_size"
    legacy = sizes(LEGACY_WEIGHT_SUFFIXES)
    if legacy:
        return sum(legacy), f"{len(legacy)} PyTorch weight file(s) on disk"
    return None


def metadata_from_dir(folder: str | Path) -> ModelMetadata:
    folder = Path(folder)
    if not folder.is_dir():
        raise SizingError(f"--from-dir {folder}: not a directory")
    config = read_config(folder / "config.json")
    shape = shape_from_config(config)
    weights = weights_in_dir(folder)
    return ModelMetadata(
        config, shape, weights[0] if weights else None, "--from-dir", weights[1] if weights else "not found"
    )


def metadata_from_cache(model_id: str, revision: str, cache_dir: str | Path | None = None) -> ModelMetadata | None:
    """The model at this commit from the local Hugging Face cache, or None if it is not there.

    A cached snapshot folder holds links to every file downloaded for that commit, so its
    safetensors sizes are the weights' sizes once the weights were fetched; a cache holding only
    config.json and the index still gives the index's total.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir, revision=revision)
    except (OSError, ValueError) as exc:  # a cache folder that is a file, unreadable, or garbled
        where = getattr(exc, "filename", None) or cache_dir or constants.HF_HUB_CACHE
        why = getattr(exc, "strerror", None) or exc
        raise SizingError(f"cannot read the Hugging Face cache at {where}: {why}") from None
    if not isinstance(found, str):
        return None
    path = Path(found)
    try:
        config = read_config(path)
        shape = shape_from_config(config)
    except SizingError as exc:
        raise SizingError(f"{exc} (the Hugging Face cache's {path})") from None
    weights = weights_in_dir(path.parent)
    return ModelMetadata(
        config,
        shape,
        weights[0] if weights else None,
        "Hugging Face cache",
        weights[1] if weights else "not in the cache",
    )


def _hub_unreachable(endpoint: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to the Hub fails (None: it connects, or a proxy is in the way and decides).

    huggingface_hub retries a failed connection five times with back-off (20-odd seconds of
    "Retrying" lines); one quick probe first makes an offline `new` fail at once.
    """
    import socket
    from urllib.parse import urlsplit

    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = urlsplit(endpoint)
    try:
        socket.create_connection(
            (url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def metadata_from_hub(model_id: str, revision: str) -> ModelMetadata:
    """config.json and file sizes from the Hugging Face Hub (network; a token for gated models)."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    why = _hub_unreachable(constants.ENDPOINT)
    if why:
        raise SizingError(
            f"{model_id}@{revision[:12]}: cannot reach the Hub at {constants.ENDPOINT} ({why}): "
            "pass --from-dir DIR to size it offline"
        )
    try:
        path = hf_hub_download(model_id, "config.json", revision=revision)
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
    except OfflineModeIsEnabled:
        raise SizingError(
            f"{model_id}@{revision[:12]} is not in the local Hugging Face cache and the Hub is "
            "offline (HF_HUB_OFFLINE): pass --from-dir DIR"
        ) from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SizingError(f"{model_id}@{revision[:12]}: the Hub refused: {first}") from None
    except (OSError, ValueError) as exc:
        raise SizingError(
            f"{model_id}@{revision[:12]}: cannot reach the Hub ({type(exc).__name__}): "
            "pass --from-dir DIR to size it offline"
        ) from None
    config = read_config(Path(path))
    shape = shape_from_config(config)
    files = [(s.rfilename, s.size) for s in (info.siblings or []) if s.size]
    st = [size for name, size in files if name.endswith(WEIGHT_SUFFIXES)]
    legacy = [size for name, size in files if name.endswith(LEGACY_WEIGHT_SUFFIXES)]
    chosen, how = (st, "safetensors") if st else (legacy, "PyTorch")
    return ModelMetadata(
        config,
        shape,
        sum(chosen) if chosen else None,
        "Hugging Face Hub",
        f"{len(chosen)} {how} file(s) listed on the Hub" if chosen else "not listed on the Hub",
    )


def load_metadata(
    model_id: str,
    revision: str,
    *,
    from_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_network: bool = True,
) -> ModelMetadata:
    """From `from_dir` if given; else the local cache; else the Hub (unless offline). Raises SizingError."""
    if from_dir is not None:
        return metadata_from_dir(from_dir)
    cached = metadata_from_cache(model_id, revision, cache_dir)
    if cached is not None and (cached.weights_bytes is not None or not allow_network):
        return cached
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not allow_network or offline:
        if cached is not None:
            return cached
        raise SizingError(
            f"{model_id}@{revision[:12]} is not in the local Hugging Face cache and the Hub is "
            "offline: pass --from-dir DIR"
        )
    return metadata_from_hub(model_id, revision)


def metadata_offline(
    model_id: str, revision: str, cache_dir: str | Path | None = None, problems: list[str] | None = None
) -> ModelMetadata | None:
    """What `validate` can know without a network: the cached model with its weight size, or None.

    Never raises: a model missing from the cache means the fit is simply not checked; a cache or
    cached config.json sizing cannot read means the same, and its message (naming the file) is
    appended to `problems` so the caller can warn.
    """
    try:
        found = metadata_from_cache(model_id, revision, cache_dir)
    except SizingError as exc:
        if problems is not None:
            problems.append(str(exc))
        return None
    return found if found is not None and found.weights_bytes is not None else None


# --- `fleetform new` ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """Everything `fleetform new` decided, for the table, the JSON and the YAML."""

    model_id: str
    revision: str
    name: str
    metadata: ModelMetadata
    quantization: str
    quantize_on_load: bool
    weights_bytes: int  # loaded
    weights_estimated: bool
    max_model_len: int
    concurrency: int
    utilization: float
    kv_bytes_per_token: int
    options: list[Option] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.max_model_len * self.concurrency

    @property
    def chosen(self) -> Option | None:
        return cheapest(self.options)

    def to_dict(self) -> dict[str, Any]:
        shape = asdict(self.metadata.shape)
        return {
            "model": self.model_id,
            "revision": self.revision,
            "name": self.name,
            "shape": {
                **shape,
                "attention": self.metadata.shape.attention,
                "parameters_b": round(parameter_count(self.metadata.shape) / 1e9, 2),
            },
            "quantization": self.quantization,
            "quantize_on_load": self.quantize_on_load,
            "weights_gib": round(self.weights_bytes / GIB, 2),
            "weights_source": "estimated from config.json" if self.weights_estimated else self.metadata.weights_source,
            "config_source": self.metadata.config_source,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "max_model_len": self.max_model_len,
            "concurrency": self.concurrency,
            "tokens": self.tokens,
            "gpu_memory_utilization": self.utilization,
            "overhead_gib_per_gpu": OVERHEAD_GIB,
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "options": [o.to_dict() for o in self.options],
        }


def derive_name(model_id: str) -> str:
    """A deployment name from a repository id: `meta-llama/Llama-3.1-8B` -> `llama-3-1-8b`."""
    base = re.sub(r"[^a-z0-9]+", "-", model_id.split("/")[-1].lower()).strip("-")
    if not base or not base[0].isalpha():
        base = "m-" + base
    return base[:40].rstrip("-")


def choose_quantization(checkpoint: str, requested: str | None) -> tuple[str, bool]:
    """(quantization, quantize_on_load) for `--quantization` against the checkpoint's own format."""
    if requested is None or requested == checkpoint:
        return checkpoint, False
    if checkpoint == "none" and requested in ("fp8", "bitsandbytes"):
        return requested, True
    if checkpoint == "none":
        raise SizingError(
            f"--quantization {requested}: this checkpoint is not quantized, and vLLM quantizes on load "
            f"only to fp8 or bitsandbytes; pick a {requested.upper()} checkpoint instead"
        )
    raise SizingError(f"--quantization {requested}: this checkpoint is already {checkpoint}")


def size_model(
    model_id: str,
    revision: str,
    metadata: ModelMetadata,
    *,
    max_model_len: int | None = None,
    concurrency: int = 1,
    quantization: str | None = None,
    name: str | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    prices: Mapping[str, float] | None = None,
) -> Sizing:
    """Weigh every option for this model and traffic. Raises SizingError for impossible requests."""
    shape = metadata.shape
    quant, on_load = choose_quantization(shape.quantization, quantization)
    limit = shape.max_position_embeddings
    if max_model_len is None:
        if limit is None:
            raise SizingError("config.json gives no max_position_embeddings: pass --max-model-len N")
        max_model_len = limit
    elif limit is not None and max_model_len > limit:
        raise SizingError(f"--max-model-len {max_model_len} exceeds the model's limit of {limit} tokens")
    if max_model_len < 16 or concurrency < 1:
        raise SizingError("--max-model-len must be at least 16 and --concurrency at least 1")
    if metadata.weights_bytes is not None:
        weights = loaded_weight_bytes(metadata.weights_bytes, shape, quantize_on_load=on_load, quantization=quant)
        estimated = False
    else:
        weights, estimated = estimated_weight_bytes(shape, quant), True
    element = kv_dtype_bytes(None, None)
    options = rank_options(
        shape,
        weights,
        max_model_len * concurrency,
        quantization=quant,
        kv_element_bytes=element,
        utilization=utilization,
        prices=prices,
        dtype=running_dtype(None, shape.torch_dtype),
    )
    return Sizing(
        model_id,
        revision,
        name or derive_name(model_id),
        metadata,
        quant,
        on_load,
        weights,
        estimated,
        max_model_len,
        concurrency,
        utilization,
        kv_bytes_per_token(shape, element),
        options,
    )
