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

The modules, each building on the ones before it:

    common     units, vLLM's default memory share, `SizingError`
    shape      `ModelShape`, read from config.json
    memory     bytes a parameter, KV cache bytes a token, weight bytes once loaded
    options    each GPU type and count weighed for a model; `check_fit`, the rule `validate` runs
    metadata   config.json and weight sizes from a folder, the local cache or the Hub
    advisor    `fleetform new`'s choice: the cheapest option that fits

This package imports nothing from `renderer.config`: it is below it.
"""

from __future__ import annotations

from renderer.sizing.advisor import derive_name, size_model
from renderer.sizing.common import DEFAULT_UTILIZATION, GIB, OVERHEAD_GIB, SizingError
from renderer.sizing.memory import (
    bytes_per_parameter,
    estimated_weight_bytes,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    kv_dtype_bytes,
    parameter_count,
    parameter_weight_bytes,
)
from renderer.sizing.metadata import (
    ModelMetadata,
    load_metadata,
    metadata_from_cache,
    metadata_from_dir,
    metadata_offline,
)
from renderer.sizing.options import (
    BF16_SINCE,
    cheapest,
    check_fit,
    dtype_problem,
    evaluate,
    hardware_problem,
    rank_options,
    running_dtype,
    tp_problem,
    weighed,
)
from renderer.sizing.shape import ModelShape, shape_from_config

__all__ = [
    "BF16_SINCE",
    "DEFAULT_UTILIZATION",
    "GIB",
    "ModelMetadata",
    "ModelShape",
    "OVERHEAD_GIB",
    "SizingError",
    "bytes_per_parameter",
    "cheapest",
    "check_fit",
    "derive_name",
    "dtype_problem",
    "estimated_weight_bytes",
    "evaluate",
    "hardware_problem",
    "kv_bytes_per_token",
    "kv_bytes_per_token_per_gpu",
    "kv_dtype_bytes",
    "load_metadata",
    "metadata_from_cache",
    "metadata_from_dir",
    "metadata_offline",
    "parameter_count",
    "parameter_weight_bytes",
    "rank_options",
    "running_dtype",
    "shape_from_config",
    "size_model",
    "tp_problem",
    "weighed",
]
