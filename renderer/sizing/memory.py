"""The memory model: bytes a parameter takes, KV cache bytes a token, weights once loaded."""

from __future__ import annotations

from renderer.sizing.shape import ModelShape

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
