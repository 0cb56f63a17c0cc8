"""`fleetform new`'s sizing: the cheapest GPU type and count that hold a model and its traffic."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from renderer.sizing.common import DEFAULT_UTILIZATION, GIB, OVERHEAD_GIB, SizingError
from renderer.sizing.memory import (
    estimated_weight_bytes,
    kv_bytes_per_token,
    kv_dtype_bytes,
    loaded_weight_bytes,
    parameter_count,
)
from renderer.sizing.metadata import ModelMetadata
from renderer.sizing.options import Option, cheapest, rank_options, running_dtype

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
