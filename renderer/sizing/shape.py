"""A model's shape, read from its config.json: layers, heads, KV heads, head size, MLA, experts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from renderer.sizing.common import SizingError

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
