"""Sizing: config shapes, KV bytes a token, the fit arithmetic (worked out by hand below), and
`fleetform new` end to end from a folder and from a fake Hugging Face cache. Offline throughout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from renderer import sizing
from renderer.config.load import load_fleet
from renderer.config.resolve import resolve
from renderer.diagnostics import Severity
from renderer.gpus import GPU_TYPES
from renderer.sizing import (
    GIB,
    ModelMetadata,
    SizingError,
    check_fit,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    parameter_count,
    rank_options,
    shape_from_config,
    size_model,
)

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "configs"
REVISION = "0e9e39f249a16976918f6564b8830bc894c89659"
KIB = 1024

# The four safetensors files of meta-llama/Llama-3.1-8B-Instruct, in bytes.
LLAMA_8B_FILES = [4_976_698_672, 4_999_802_720, 4_915_916_176, 1_168_138_808]
LLAMA_8B_BYTES = sum(LLAMA_8B_FILES)  # 16_060_556_376 = 14.96 GiB


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def shape(name: str) -> sizing.ModelShape:
    return shape_from_config(config(name))


def metadata(name: str, weights: int | None) -> ModelMetadata:
    cfg = config(name)
    return ModelMetadata(cfg, shape_from_config(cfg), weights, "test", "test")


# --- shapes -----------------------------------------------------------------------------------------


def test_dense_gqa_llama_8b():
    s = shape("llama-3.1-8b")
    assert (s.num_layers, s.num_attention_heads, s.num_kv_heads, s.head_dim) == (32, 32, 8, 128)
    assert s.attention == "GQA" and not s.is_moe and s.quantization == "none"
    assert s.max_position_embeddings == 131072


def test_head_dim_absent_is_hidden_over_heads():
    s = shape("qwen2.5-7b")  # no head_dim: 3584 / 28 = 128
    assert s.head_dim == 128 and s.num_kv_heads == 4


def test_explicit_head_dim_wins_over_hidden_over_heads():
    s = shape("mistral-small-3.1-24b")  # head_dim 128, while 5120 / 32 would be 160
    assert s.head_dim == 128


def test_nested_text_config_with_defaults_left_out():
    # llava-hf's text_config names only what differs from MistralConfig's defaults.
    s = shape("llava-v1.6-mistral-7b")
    assert s.multimodal and s.model_type == "mistral"
    assert (s.hidden_size, s.num_attention_heads, s.num_layers, s.num_kv_heads) == (4096, 32, 32, 8)
    assert s.torch_dtype == "float16"  # the checkpoint's (top-level) dtype


def test_flat_multimodal_config():
    s = shape("qwen2-vl-7b")
    assert s.multimodal and (s.num_layers, s.num_kv_heads, s.head_dim) == (28, 4, 128)


def test_moe_counts_every_expert():
    mixtral, qwen_moe = shape("mixtral-8x7b"), shape("qwen1.5-moe-a2.7b")
    assert mixtral.num_experts == 8 and mixtral.moe_intermediate_size == 14336
    assert qwen_moe.num_experts == 60 and qwen_moe.shared_expert_intermediate_size == 5632
    # Published totals: 46.7B and 14.3B parameters, although a token visits only ~12.9B and ~2.7B.
    assert parameter_count(mixtral) == pytest.approx(46.7e9, rel=0.01)
    assert parameter_count(qwen_moe) == pytest.approx(14.3e9, rel=0.01)


def test_mla_shape():
    s = shape("deepseek-v2-lite")
    assert s.is_mla and s.attention == "MLA" and (s.kv_lora_rank, s.qk_rope_head_dim) == (512, 64)
    assert s.num_experts == 64 and s.first_dense_layers == 1


@pytest.mark.parametrize(
    "name, billions",
    [
        ("llama-3.1-8b", 8.03),
        ("llama-3.1-70b", 70.6),
        ("qwen2.5-7b", 7.62),
        ("deepseek-v2-lite", 15.7),
        ("deepseek-v3", 671),
        ("llava-v1.6-mistral-7b", 7.24),
        ("mistral-small-3.1-24b", 23.6),
    ],
)
def test_parameter_estimate_matches_published_counts(name, billions):
    assert parameter_count(shape(name)) / 1e9 == pytest.approx(billions, rel=0.01)


def test_llama_8b_parameters_exactly():
    # embeddings + LM head: 2 x 128256 x 4096 = 1_050_673_152
    # a layer: q 4096x4096 + k,v 4096x1024 each + o 4096x4096 = 41_943_040; MLP 3 x 4096 x 14336 = 176_160_768
    assert parameter_count(shape("llama-3.1-8b")) == 1_050_673_152 + 32 * (41_943_040 + 176_160_768)


@pytest.mark.parametrize(
    "name, quant",
    [
        ("llama-3.1-8b", "none"),
        ("llama-3.1-8b-instruct-fp8", "fp8"),
        ("qwen2.5-7b-instruct-awq", "awq"),
        ("deepseek-v3", "fp8"),
    ],
)
def test_checkpoint_quantization(name, quant):
    assert shape(name).quantization == quant


def test_compressed_tensors_int4_stays_compressed_tensors():
    cfg = config("llama-3.1-8b")
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}},
    }
    assert shape_from_config(cfg).quantization == "compressed-tensors"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("num_attention_heads"), "config.json has no `num_attention_heads` (model_type 'llama')"),
        (lambda c: c.update(num_hidden_layers="32"), "`num_hidden_layers` should be a non-negative integer"),
        (lambda c: c.update(quantization_config={"quant_method": "mxfp4"}), "quantization 'mxfp4' is not one"),
    ],
)
def test_bad_configs_are_one_line_errors(mutate, message):
    cfg = config("llama-3.1-8b")
    mutate(cfg)
    with pytest.raises(SizingError) as err:
        shape_from_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- KV bytes a token ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama-3.1-8b", 2 * 32 * 8 * 128 * 2),  # 131072 = 128 KiB
        ("llama-3.1-70b", 2 * 80 * 8 * 128 * 2),  # 327680 = 320 KiB
        ("mixtral-8x7b", 2 * 32 * 8 * 128 * 2),  # experts add weights, not KV
        ("qwen2.5-7b", 2 * 28 * 4 * 128 * 2),  # 57344 = 56 KiB
        ("qwen1.5-moe-a2.7b", 2 * 24 * 16 * 128 * 2),  # MHA: 196608 = 192 KiB
        ("qwen2-vl-7b", 2 * 28 * 4 * 128 * 2),
        ("llava-v1.6-mistral-7b", 2 * 32 * 8 * 128 * 2),
        ("mistral-small-3.1-24b", 2 * 40 * 8 * 128 * 2),  # 163840 = 160 KiB
        # MLA: one latent of kv_lora_rank + qk_rope_head_dim a layer, no factor 2, no heads.
        ("deepseek-v2-lite", (512 + 64) * 27 * 2),  # 31104 bytes
        ("deepseek-v3", (512 + 64) * 61 * 2),  # 70272 bytes
    ],
)
def test_kv_bytes_per_token_bf16(name, expected):
    assert kv_bytes_per_token(shape(name), 2) == expected


def test_llama_8b_is_128_kib_a_token_and_64_in_fp8():
    s = shape("llama-3.1-8b")
    assert kv_bytes_per_token(s, 2) == 128 * KIB
    assert kv_bytes_per_token(s, sizing.kv_dtype_bytes("fp8", None)) == 64 * KIB


def test_mla_is_far_smaller_than_per_head_kv():
    s = shape("deepseek-v2-lite")
    per_head = 2 * 27 * 16 * 128 * 2  # what the standard formula would say: 221184
    assert per_head / kv_bytes_per_token(s, 2) == pytest.approx(7.11, abs=0.01)


def test_kv_heads_split_over_gpus():
    s = shape("llama-3.1-70b")  # 8 KV heads over 8 GPUs: one each, nothing replicated
    assert kv_bytes_per_token_per_gpu(s, 2, 8) == 2 * 80 * 1 * 128 * 2
    assert kv_bytes_per_token_per_gpu(s, 2, 8) * 8 == kv_bytes_per_token(s, 2)


def test_kv_heads_replicated_when_fewer_than_gpus():
    cfg = config("llama-3.1-8b")
    cfg["num_key_value_heads"] = 2
    s = shape_from_config(cfg)
    # 2 KV heads over 4 GPUs: each GPU keeps one head, so the container stores 4 heads' worth.
    assert kv_bytes_per_token_per_gpu(s, 2, 4) == 2 * 32 * 1 * 128 * 2
    assert kv_bytes_per_token_per_gpu(s, 2, 4) * 4 == 2 * kv_bytes_per_token(s, 2)


def test_mla_latent_is_replicated_on_every_gpu():
    s = shape("deepseek-v2-lite")
    assert kv_bytes_per_token_per_gpu(s, 2, 2) == 31104


# --- tensor parallelism and hardware -------------------------------------------------------------------


def test_tensor_parallel_must_divide_heads():
    s = shape("qwen2.5-7b")  # 28 heads: 1, 2 and 4 divide it, 8 does not
    assert [tp for tp in (1, 2, 4, 8) if sizing.tp_problem(s, tp) is None] == [1, 2, 4]
    assert sizing.tp_problem(s, 8) == "tensor parallel 8 does not divide 28 attention heads"


def test_kv_heads_neither_split_nor_replicated():
    cfg = config("llama-3.1-8b")
    cfg.update(num_attention_heads=24, num_key_value_heads=6, hidden_size=3072, intermediate_size=8192)
    s = shape_from_config(cfg)
    assert sizing.tp_problem(s, 4) == "6 KV heads can be neither split nor replicated over 4 GPUs"
    assert sizing.tp_problem(s, 2) is None


def test_fp8_excludes_gpus_older_than_ada():
    s = shape("llama-3.1-8b-instruct-fp8")
    opts = rank_options(s, 9 * GIB, 8192, quantization="fp8")
    excluded = {o.gpu for o in opts if o.excluded and "FP8" in o.excluded}
    assert excluded == {"T4", "A10", "A100-40GB", "A100-80GB"}
    assert all(GPU_TYPES[o.gpu].compute_capability >= (8, 9) for o in opts if o.fits)


def test_a10_never_gets_eight():
    opts = rank_options(shape("llama-3.1-8b"), LLAMA_8B_BYTES, 8192)
    assert {o.count for o in opts if o.gpu == "A10"} == {1, 2, 4}


# --- the fit arithmetic, by hand -------------------------------------------------------------------------


def test_llama_8b_on_one_l4_by_hand():
    s = shape("llama-3.1-8b")
    o = sizing.evaluate(s, LLAMA_8B_BYTES, 8192, GPU_TYPES["L4"], 1)
    # budget 0.9 x 24 = 21.6 GiB; weights 16_060_556_376 B = 14.957 GiB; KV 8192 x 128 KiB = 1 GiB;
    # overhead 1 GiB; headroom 21.6 - 14.957 - 1 - 1 = 4.643 GiB.
    assert o.budget_gib == pytest.approx(21.6)
    assert o.weights_gib == pytest.approx(14.957, abs=1e-3)
    assert o.kv_gib == 1.0
    assert o.headroom_gib == pytest.approx(4.643, abs=1e-3)
    assert o.fits and o.usd_per_hour == pytest.approx(0.7992)


def test_llama_8b_full_context_picks_two_l4():
    m = metadata("llama-3.1-8b", LLAMA_8B_BYTES)
    s = size_model("meta-llama/Llama-3.1-8B-Instruct", REVISION, m)  # max_model_len: the model's 131072
    # KV: 131072 tokens x 128 KiB = 16 GiB. One L4 (21.6 GiB) cannot; 2 x T4 ($1.18) hold 28.8 GiB but
    # need 14.957 + 16 + 2 = 32.96; 2 x L4 ($1.60) hold 43.2: headroom 43.2 - 14.957 - 16 - 2 = 10.243;
    # the next, 1 x L40S, costs $1.95.
    chosen = s.chosen
    assert (chosen.gpu, chosen.count) == ("L4", 2)
    assert chosen.kv_gib == 16.0
    assert chosen.headroom_gib == pytest.approx(10.243, abs=1e-3)
    assert chosen.usd_per_hour == pytest.approx(1.5984)
    fitting = [o for o in s.options if o.fits]
    assert (fitting[1].gpu, fitting[1].count, round(fitting[1].usd_per_hour, 2)) == ("L40S", 1, 1.95)
    t4 = next(o for o in s.options if (o.gpu, o.count) == ("T4", 2))
    assert not t4.fits and t4.headroom_gib == pytest.approx(28.8 - 14.957 - 16 - 2, abs=1e-3)


def test_concurrency_multiplies_tokens():
    m = metadata("llama-3.1-8b", LLAMA_8B_BYTES)
    s = size_model("meta-llama/Llama-3.1-8B-Instruct", REVISION, m, max_model_len=8192, concurrency=16)
    assert s.tokens == 131072 and s.chosen.kv_gib == 16.0  # 16 x 8192 tokens x 128 KiB


def test_llama_70b_bf16_picks_two_a100_80gb():
    weights = int(70.55e9 * 2)  # 141.1 GB of BF16 weights = 131.4 GiB
    s = size_model(
        "meta-llama/Llama-3.1-70B-Instruct", REVISION, metadata("llama-3.1-70b", weights), max_model_len=8192
    )
    # KV 8192 x 320 KiB = 2.5 GiB. 2 x A100-80GB: budget 144, 144 - 131.4 - 2.5 - 2 = 8.1 GiB, $5.00/h;
    # 1 x B200 ($6.25), 2 x RTX-PRO-6000 ($6.06), 8 x L4 ($6.39) also fit but cost more; 1 x H200 holds
    # only 126.9 GiB.
    c = s.chosen
    assert (c.gpu, c.count) == ("A100-80GB", 2)
    assert c.kv_gib == 2.5 and c.headroom_gib == pytest.approx(8.1, abs=0.05)
    assert c.usd_per_hour == pytest.approx(4.9968)
    h200 = next(o for o in s.options if (o.gpu, o.count) == ("H200", 1))
    assert not h200.fits


def test_mixtral_weights_count_every_expert():
    s = size_model("mistralai/Mixtral-8x7B-v0.1", REVISION, metadata("mixtral-8x7b", None), max_model_len=4096)
    assert s.weights_estimated
    assert s.weights_bytes / GIB == pytest.approx(46.7e9 * 2 / GIB, rel=0.01)  # 87 GiB, not 12.9B active
    assert s.chosen.weights_gib > 80  # no single 80 GB card


def test_deepseek_v2_lite_full_context_kv_is_small():
    s = size_model("deepseek-ai/DeepSeek-V2-Lite", REVISION, metadata("deepseek-v2-lite", 31_400_000_000))
    # 163840 tokens x 31104 bytes = 4.746 GiB of latent cache (the per-head formula would say 33.75 GiB).
    assert s.kv_bytes_per_token == 31104
    assert s.chosen.kv_gib / s.chosen.count == pytest.approx(163840 * 31104 / GIB, abs=1e-3)


def test_deepseek_v3_fp8_needs_eight_h200():
    s = size_model("deepseek-ai/DeepSeek-V3", REVISION, metadata("deepseek-v3", None))
    # ~671B parameters at 1 byte = 624.9 GiB. 8 x H100 hold 576 GiB; 8 x H200 hold 1015.2 GiB.
    assert s.quantization == "fp8"
    assert (s.chosen.gpu, s.chosen.count) == ("H200", 8)


def test_quantize_on_load_halves_linear_layers():
    m = metadata("llama-3.1-8b", LLAMA_8B_BYTES)
    s = size_model("meta-llama/Llama-3.1-8B-Instruct", REVISION, m, quantization="fp8", max_model_len=8192)
    embed = 2 * 128256 * 4096 * 2  # embeddings + LM head stay BF16: 2_101_346_304 bytes
    assert s.quantize_on_load and s.quantization == "fp8"
    assert s.weights_bytes == embed + (LLAMA_8B_BYTES - embed) // 2
    assert GPU_TYPES[s.chosen.gpu].supports_fp8


@pytest.mark.parametrize(
    "requested, message",
    [
        ("awq", "this checkpoint is not quantized"),
        ("none", None),
    ],
)
def test_quantization_request_against_checkpoint(requested, message):
    m = metadata("llama-3.1-8b", LLAMA_8B_BYTES)
    if message is None:
        assert size_model("a/b", REVISION, m, quantization=requested, max_model_len=4096).quantization == "none"
    else:
        with pytest.raises(SizingError, match=message):
            size_model("a/b", REVISION, m, quantization=requested)


def test_max_model_len_above_the_model_limit():
    with pytest.raises(SizingError, match="exceeds the model's limit of 32768"):
        size_model("a/b", REVISION, metadata("qwen2.5-7b", None), max_model_len=65536)


def test_prices_override_the_ranking():
    m = metadata("llama-3.1-8b", LLAMA_8B_BYTES)
    s = size_model("a/b", REVISION, m, max_model_len=8192, prices={"H100": 0.1})
    assert (s.chosen.gpu, s.chosen.count) == ("H100", 1)


# --- check_fit (the validate rule) ----------------------------------------------------------------------


def deployment(gpu: dict, model: dict | None = None, engine: dict | None = None) -> dict:
    return {
        "name": "x",
        "model": {"id": "a/b", "revision": REVISION, **(model or {})},
        "gpu": gpu,
        "engine": engine or {},
    }


def test_check_fit_accepts_the_example_fleet(example_fleet):
    by_name = {d.name: d for d in example_fleet.deployments}
    d = by_name["qwen2-5-7b-instruct"]  # L40S at 0.92, 32768 tokens: 14.2 + 1.75 GiB of 44.2
    assert check_fit(d, shape("qwen2.5-7b"), 15_231_233_024) is None
    d = by_name["qwen2-5-7b-awq"]  # L4, falling back to A10, 8192 tokens
    assert check_fit(d, shape("qwen2.5-7b-instruct-awq"), 5_580_000_000) is None


def test_check_fit_kv_for_one_sequence():
    diag = check_fit(deployment({"type": "L4"}), shape("llama-3.1-8b"), LLAMA_8B_BYTES)
    # No max_model_len: vLLM takes the model's 131072 tokens = 16 GiB of KV; 14.96 + 16 > 21.6 - 1.
    # Free for KV: 20.6 GiB - 16_060_556_376 B = 6_058_525_198 B = 46222 tokens -> 45 x 1024 = 46080.
    assert diag is not None and diag.severity is Severity.ERROR and diag.code == "model-fit"
    assert diag.path == ("gpu", "type")
    assert "15.0 GiB of weights + 16.0 GiB of KV cache for one 131072-token sequence do not fit 1 x L4" in diag.message
    assert "set model.max_model_len to at most 46080" in diag.hint
    assert "2 x L4 ($1.60/h) is the cheapest that fits" in diag.hint


def test_check_fit_points_at_max_model_len_when_set():
    diag = check_fit(deployment({"type": "L4"}, {"max_model_len": 100000}), shape("llama-3.1-8b"), LLAMA_8B_BYTES)
    assert diag.path == ("model", "max_model_len")
    assert (
        check_fit(deployment({"type": "L4"}, {"max_model_len": 32768}), shape("llama-3.1-8b"), LLAMA_8B_BYTES) is None
    )


def test_check_fit_weights_alone():
    diag = check_fit(deployment({"type": "H100"}, {"max_model_len": 4096}), shape("llama-3.1-70b"), int(141.1e9))
    assert diag.path == ("gpu", "type")
    assert diag.message.startswith("131.4 GiB of weights do not fit 1 x H100 at 0.9 utilization")


def test_check_fit_checks_fallbacks_and_kv_dtype():
    d = deployment({"type": "L40S", "fallbacks": ["L4"]}, {"max_model_len": 65536})
    # L40S fits; the L4 fallback cannot hold 14.96 GiB + 8 GiB of KV.
    diag = check_fit(d, shape("llama-3.1-8b"), LLAMA_8B_BYTES)
    assert diag is not None and diag.path == ("model", "max_model_len")
    assert "1 x L4" in diag.message
    d["engine"] = {"kv_cache_dtype": "fp8"}  # 64 KiB a token: 4 GiB fits the L4 too
    assert check_fit(d, shape("llama-3.1-8b"), LLAMA_8B_BYTES) is None


def test_check_fit_tensor_parallel():
    diag = check_fit(deployment({"type": "L4", "count": 8}), shape("qwen2.5-7b"), 15_231_233_024)
    assert diag.path == ("gpu", "tensor_parallel_size")
    assert "does not divide 28 attention heads" in diag.message
    assert diag.hint == "tensor parallel sizes that work with 8 GPU(s): 1, 2, 4"


def test_check_fit_uses_the_given_mark():
    from renderer.diagnostics import Mark

    marks = []
    diag = check_fit(
        deployment({"type": "L4"}),
        shape("llama-3.1-8b"),
        LLAMA_8B_BYTES,
        mark=lambda *path: marks.append(path) or Mark("f.yaml", 7, 3),
    )
    assert marks == [("gpu", "type")] and str(diag.mark) == "f.yaml:7:3"


# --- reading metadata -------------------------------------------------------------------------------------


def model_dir(tmp: Path, name: str = "llama-3.1-8b", files: list[int] = LLAMA_8B_FILES) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / f"{name}.json", tmp / "config.json")
    for i, size in enumerate(files, 1):
        with open(tmp / f"model-{i:05d}-of-{len(files):05d}.safetensors", "wb") as fh:
            fh.truncate(size)  # sparse: known size, no disk used
    return tmp


def test_weights_from_safetensors_sizes(tmp_path):
    m = sizing.metadata_from_dir(model_dir(tmp_path))
    assert m.weights_bytes == LLAMA_8B_BYTES and m.weights_source == "4 safetensors file(s) on disk"


def test_weights_from_index_total_size(tmp_path):
    folder = model_dir(tmp_path, files=[])
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 16060522496}, "weight_map": {}})
    )
    m = sizing.metadata_from_dir(folder)
    assert m.weights_bytes == 16060522496 and "total_size" in m.weights_source


def test_fake_hugging_face_cache(tmp_path):
    snapshot = tmp_path / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / REVISION
    model_dir(snapshot, files=[1000, 2000])
    m = sizing.load_metadata("meta-llama/Llama-3.1-8B-Instruct", REVISION, cache_dir=tmp_path, allow_network=False)
    assert m.config_source == "Hugging Face cache" and m.weights_bytes == 3000
    assert sizing.metadata_offline("meta-llama/Llama-3.1-8B-Instruct", REVISION, tmp_path).weights_bytes == 3000
    assert sizing.metadata_offline("meta-llama/Llama-3.1-8B-Instruct", "1" * 40, tmp_path) is None
    with pytest.raises(SizingError, match="not in the local Hugging Face cache"):
        sizing.load_metadata("meta-llama/Llama-3.1-8B-Instruct", "1" * 40, cache_dir=tmp_path, allow_network=False)


# --- `fleetform new` ----------------------------------------------------------------------------------------


def new(tmp_path: Path, **kw) -> int:
    from renderer.cli.new import run_new

    opts = {"model_id": "meta-llama/Llama-3.1-8B-Instruct", "revision": REVISION, "out": str(tmp_path / "out"), **kw}
    with open(tmp_path / "console.txt", "w") as fh:
        return run_new(SimpleNamespace(**opts), Console(width=160, file=fh))


def test_new_from_dir_writes_a_valid_deployment(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    assert new(tmp_path, from_dir=str(folder), max_model_len=8192, concurrency=16) == 0
    path = tmp_path / "out" / "llama-3-1-8b-instruct.yaml"
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schema/deployment.schema.json\n")
    assert str(tmp_path) not in text  # no machine paths in the file
    resolved = resolve(load_fleet([str(path)]))
    assert resolved.ok, resolved.diagnostics
    d = resolved.deployments[0]
    # 16 x 8192 tokens = 16 GiB of KV: the same 2 x L4 as the full 131072-token context.
    assert (d.gpu.type, d.gpu.count, d.model.max_model_len) == ("L4", 2, 8192)
    assert d.scaling.target_concurrency == 16 and d.model.parameters_b == 8
    table = (tmp_path / "console.txt").read_text()
    assert "2 x L4" in table and "chosen" in table and "1 x L40S" in table


def test_new_json(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    assert new(tmp_path, from_dir=str(folder), max_model_len=8192, format="json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_bytes_per_token"] == 131072
    assert out["chosen"] == {
        "gpu": "L4",
        "count": 1,
        "tensor_parallel_size": 1,
        "weights_gib": 14.96,
        "kv_gib": 1.0,
        "overhead_gib": 1.0,
        "budget_gib": 21.6,
        "headroom_gib": 4.64,
        "usd_per_hour": 0.7992,
        "fits": True,
        "excluded": None,
    }
    assert out["weights_source"] == "4 safetensors file(s) on disk"
    assert {(o["gpu"], o["count"]) for o in out["options"]} >= {("A10", 4), ("B200", 8)}


def test_new_refuses_to_overwrite(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    assert new(tmp_path, from_dir=str(folder), max_model_len=8192) == 0
    assert new(tmp_path, from_dir=str(folder), max_model_len=8192) == 1
    assert "already exists: pass --force" in capsys.readouterr().err
    assert new(tmp_path, from_dir=str(folder), max_model_len=8192, force=True) == 0


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unreadable_config_is_one_line(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    (folder / "config.json").write_text('{"hidden_size": 4096,')
    assert new(tmp_path, from_dir=str(folder)) == 1
    assert one_line_error(capsys).startswith("error: config.json is not valid JSON: Expecting property name")


def test_missing_config_is_one_line(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    (folder / "config.json").unlink()
    assert new(tmp_path, from_dir=str(folder)) == 1
    assert one_line_error(capsys) == "error: config.json: not found in model\n"


def test_config_without_fields_is_one_line(tmp_path, capsys):
    folder = model_dir(tmp_path / "model")
    (folder / "config.json").write_text('{"model_type": "mystery"}')
    assert new(tmp_path, from_dir=str(folder)) == 1
    assert "config.json has no `hidden_size` (model_type 'mystery')" in one_line_error(capsys)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"revision": "main"}, "pin a full 40-character commit hash"),
        ({"model_id": "not a repo"}, "is not a Hugging Face repository id"),
        ({"name": "Bad_Name"}, "--name 'Bad_Name'"),
    ],
)
def test_new_usage_errors(tmp_path, capsys, kw, message):
    assert new(tmp_path, **kw) == 2
    assert message in one_line_error(capsys)


def test_new_offline_without_cache(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert new(tmp_path) == 1
    assert "not in the local Hugging Face cache and the Hub is offline: pass --from-dir DIR" in one_line_error(capsys)


def test_new_nothing_fits(tmp_path, capsys):
    folder = model_dir(tmp_path / "model", "deepseek-v3", files=[2_000_000_000_000])  # 2 TB of weights
    assert new(tmp_path, model_id="deepseek-ai/DeepSeek-V3", from_dir=str(folder)) == 1
    assert "no GPU type and count holds 1862.6 GiB of weights" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# --- one memory model and one hardware table, shared with validate's rules ------------------------------------


def test_bytes_per_parameter_is_one_table():
    assert sizing.bytes_per_parameter("none", "bfloat16") == 2.0
    assert sizing.bytes_per_parameter("none", "float32") == 4.0
    assert sizing.bytes_per_parameter("fp8", "float32") == 1.0  # a quantized format keeps its size
    assert sizing.bytes_per_parameter("awq", None) == 0.5625
    s = shape("llama-3.1-8b")
    assert sizing.estimated_weight_bytes(s, "awq") == int(sizing.parameter_count(s) * 0.5625)


def test_running_dtype_and_bf16_hardware():
    assert sizing.running_dtype(None, "bfloat16") == "bfloat16"
    assert sizing.running_dtype("auto", "torch.bfloat16") == "bfloat16"
    assert sizing.running_dtype("float16", "bfloat16") == "float16"
    t4, a10 = GPU_TYPES["T4"], GPU_TYPES["A10"]
    assert sizing.dtype_problem(t4, "bfloat16") == "bfloat16 needs compute capability 8.0 or newer; T4 has 7.5"
    assert sizing.dtype_problem(t4, "float16") is None and sizing.dtype_problem(a10, "bfloat16") is None
    assert sizing.hardware_problem(t4, "none", "bfloat16") == sizing.dtype_problem(t4, "bfloat16")
    assert sizing.hardware_problem(GPU_TYPES["A100-80GB"], "fp8").startswith("FP8 needs compute capability 8.9")


def test_size_model_never_picks_t4_for_a_bf16_checkpoint():
    """A small bf16 model whose cheapest fit by memory alone would be a T4."""
    meta = metadata("llama-3.1-8b", 2 * 2**30)
    s = sizing.size_model("meta-llama/Llama-3.1-8B-Instruct", REVISION, meta, max_model_len=2048)
    by_memory = sizing.rank_options(meta.shape, s.weights_bytes, s.tokens, utilization=s.utilization)
    assert sizing.cheapest(by_memory).gpu == "T4"  # what it would have chosen before
    assert s.chosen.gpu != "T4"
    assert all(o.excluded and "bfloat16" in o.excluded for o in s.options if o.gpu == "T4")
