"""Semantic rules: what the schema cannot say, one small function each, run on a merged deployment.

Each rule takes a `RuleContext` and yields `Diagnostic`s placed where the offending value was
written (the merged tree keeps each node's origin, so a value from fleet.yaml `defaults` is
reported there). Every diagnostic carries a hint that says how to fix it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer import sizing
from renderer.config import vllm_args
from renderer.config.load import Node
from renderer.config.schema import DEPLOYMENT_SCHEMA, load_schema, parse_duration
from renderer.config.spec import CANARY_SUFFIX
from renderer.diagnostics import Diagnostic, Mark, Severity, did_you_mean, format_path
from renderer.diagnostics import Path as FieldPath
from renderer.gpus import GPU_TYPES, gpu_info

SHOWN_CHARS = 80  # longest value echoed in a message


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said, for messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 1] + "…" + size


@dataclass(frozen=True)
class RuleContext:
    """A merged deployment: plain values plus the tree that knows where each came from."""

    tree: Node
    data: dict

    def get(self, *path: str, default: Any = None) -> Any:
        cur: Any = self.data
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return default
            cur = cur[p]
        return cur

    def mark(self, *path: str | int) -> Mark:
        return self.tree.find(tuple(path))[1]

    def error(self, path: tuple, message: str, code: str, hint: str) -> Diagnostic:
        return Diagnostic(self.mark(*path), path, message, code, Severity.ERROR, hint)

    def warning(self, path: tuple, message: str, code: str, hint: str) -> Diagnostic:
        return Diagnostic(self.mark(*path), path, message, code, Severity.WARNING, hint)

    @property
    def vllm_version(self) -> str:
        return self.get("engine", "vllm_version") or "0.26.0"

    @property
    def vllm_options(self) -> vllm_args.VllmOptions | None:
        return vllm_args.load_options(self.vllm_version)


Rule = Callable[[RuleContext], Iterable[Diagnostic]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def check_rules(ctx: RuleContext) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for fn in RULES:
        out.extend(fn(ctx))
    return out


def _gpu_types(ctx: RuleContext) -> list[tuple[tuple, str]]:
    """(path, spec) for the GPU type and each fallback."""
    out = []
    if ctx.get("gpu", "type"):
        out.append((("gpu", "type"), ctx.get("gpu", "type")))
    for i, spec in enumerate(ctx.get("gpu", "fallbacks", default=[]) or []):
        out.append((("gpu", "fallbacks", i), spec))
    return out


def default_utilization(ctx: RuleContext) -> float:
    """`--gpu-memory-utilization` when the deployment leaves it unset: the pinned vLLM's default."""
    options = ctx.vllm_options
    value = options.default("gpu_memory_utilization") if options is not None else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else sizing.DEFAULT_UTILIZATION


# --- names and values --------------------------------------------------------------------------------


def duration_limits(schema: dict) -> tuple[int, int] | None:
    """(lowest, highest) seconds a duration field takes: the `minimum` and `maximum` the schema sets beside
    its `$ref` to the duration (editors check them on integer seconds), or None for an unbounded one."""
    if not str(schema.get("$ref", "")).endswith("/duration") or "maximum" not in schema:
        return None
    return int(schema.get("minimum", 1)), int(schema["maximum"])


def duration_out_of_range(raw: Any, lo: int, hi: int) -> tuple[str, str] | None:
    """(message, hint) for a duration outside lo..hi seconds, or None: one wording for the schema's
    check of integer seconds and this module's check of both forms."""
    seconds = parse_duration(raw)
    if lo <= seconds <= hi:
        return None
    return (
        f"must be between {lo} s and {hi} s, got {shown(raw)} ({seconds} s)",
        f'write a duration from {lo} to {hi} seconds, such as 900 or "15m"',
    )


@rule
def durations_in_range(ctx: RuleContext) -> Iterator[Diagnostic]:
    """The schema's range of each bounded duration, in every section, for strings too (a schema can bound
    only integers)."""
    for section, key, limits in _bounded_durations():
        raw = ctx.get(section, key)
        if raw is None:
            continue
        found = duration_out_of_range(raw, *limits)
        if found:
            yield ctx.error((section, key), found[0], "range", hint=found[1])


@functools.cache
def _bounded_durations() -> tuple[tuple[str, str, tuple[int, int]], ...]:
    """(section, field, limits) of every bounded duration field of a deployment's sections."""
    schema = load_schema(DEPLOYMENT_SCHEMA)
    out = []
    for section, ref in schema["properties"].items():
        target = schema["$defs"].get(str(ref.get("$ref", "")).rsplit("/", 1)[-1], {})
        for key, prop in target.get("properties", {}).items():
            limits = duration_limits(prop)
            if limits is not None:
                out.append((section, key, limits))
    return tuple(out)


def shadowed_module(name: str, extra: Iterable[str] = ()) -> str | None:
    """What a module file named `name` would hide when Modal imports it, or None.

    `modal deploy build/NAME.py` puts `build/` first on the import path, here and in the container:
    a module named like one of the standard library (`secrets`, `json`), like anything importable
    here (modal and its dependencies), or like a package of the image (`extra`: vllm...) is
    imported instead of it.
    """
    if not name.isidentifier():
        return None
    if name in sys.stdlib_module_names:
        return "a module of Python's standard library"
    if name in set(extra):
        return "a package installed in the image"
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = True
    return "a module installed beside fleetform (the app imports modal and its dependencies)" if found else None


def _image_packages(ctx: RuleContext) -> list[str]:
    if not ctx.get("image", "pip"):
        return ["vllm", "torch"]
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    names = ["vllm", "torch"]
    for item in ctx.get("image", "pip", default=[]) or []:
        try:
            names.append(canonicalize_name(Requirement(item).name).replace("-", "_"))
        except InvalidRequirement:
            continue
    return names


@rule
def name_is_not_a_module(ctx: RuleContext) -> Iterator[Diagnostic]:
    name = ctx.get("name")
    what = shadowed_module(name, _image_packages(ctx)) if isinstance(name, str) and name.isidentifier() else None
    if what:
        yield ctx.error(
            ("name",),
            f"name {name!r} is also {what}: build/{name}.py would shadow it when Modal imports the app",
            "module-name",
            hint=f"pick another name, such as {name}-llm or {name}-1",
        )


# Packages whose version `engine.vllm_version` decides: vLLM pins its torch exactly.
VLLM_OWNED_PACKAGES = ("vllm", "torch", "torchvision", "torchaudio")


@rule
def pip_does_not_pin_vllm(ctx: RuleContext) -> Iterator[Diagnostic]:
    pip = ctx.get("image", "pip", default=[]) or []
    if not pip:
        return
    # packaging costs 17 ms of imports, paid only by a deployment that lists pip packages
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    for i, item in enumerate(pip):
        try:
            req = Requirement(item)
        except InvalidRequirement as exc:
            yield ctx.error(
                ("image", "pip", i),
                f"{shown(item)} is not a requirement pip can read: {str(exc).splitlines()[0]}",
                "pip-requirement",
                hint='write NAME==VERSION, such as "flashinfer-python==0.2.5"',
            )
            continue
        name = canonicalize_name(req.name)
        if name in VLLM_OWNED_PACKAGES:
            yield ctx.error(
                ("image", "pip", i),
                f"{shown(item)} installs {name} again: the image already has "
                f"vllm=={ctx.vllm_version} and the torch it pins",
                "pip-vllm",
                hint="set engine.vllm_version to change vLLM, and leave torch to the vLLM release",
            )


# --- hardware --------------------------------------------------------------------------------------------


@rule
def gpu_count_allowed(ctx: RuleContext) -> Iterator[Diagnostic]:
    count = ctx.get("gpu", "count", default=1)
    for _path, spec in _gpu_types(ctx):
        info = gpu_info(spec)
        if count > info.max_count:
            yield ctx.error(
                ("gpu", "count"),
                f"{info.name} allows at most {info.max_count} GPUs a container, got {count}",
                "gpu-count",
                hint=f"use a larger GPU type, or at most {info.max_count} {info.name}",
            )


@rule
def tensor_parallel_divides_count(ctx: RuleContext) -> Iterator[Diagnostic]:
    count = ctx.get("gpu", "count", default=1)
    tp = ctx.get("gpu", "tensor_parallel_size")
    if tp is None:
        return
    if tp > count or count % tp:
        yield ctx.error(
            ("gpu", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} must divide the GPU count {count}",
            "tensor-parallel",
            hint=f"choose one of {', '.join(str(d) for d in range(1, count + 1) if count % d == 0)}",
        )
    elif tp < count:
        yield ctx.warning(
            ("gpu", "tensor_parallel_size"),
            f"tensor_parallel_size {tp} uses {tp} of {count} GPUs; the rest stay idle",
            "tensor-parallel",
            hint="set gpu.count to the tensor parallel size, or add data parallelism in engine.extra_args",
        )


@rule
def weight_format_runs_on_gpu(ctx: RuleContext) -> Iterator[Diagnostic]:
    """FP8 needs Ada or newer, 4-bit formats Turing or newer (one table with the sizing advisor)."""
    quant = ctx.get("model", "quantization", default="none")
    for path, spec in _gpu_types(ctx):
        problem = sizing.hardware_problem(gpu_info(spec), quant)
        if problem:
            capable = [g.name for g in GPU_TYPES.values() if sizing.hardware_problem(g, quant) is None]
            yield ctx.error(
                path,
                problem,
                "fp8-hardware" if quant == "fp8" else "quantization-hardware",
                hint=f"{'FP8' if quant == 'fp8' else quant} runs on " + ", ".join(capable),
            )


def _checkpoint_dtype(ctx: RuleContext) -> str | None:
    """The cached checkpoint's `torch_dtype`, when its config.json is in the local cache (else None)."""
    model_id, revision = ctx.get("model", "id"), ctx.get("model", "revision")
    if not (model_id and revision) or not _cached_snapshot(model_id, revision):
        return None
    try:
        found = sizing.metadata_from_cache(model_id, revision)
    except (sizing.SizingError, OSError, ValueError):
        return None
    return found.shape.torch_dtype if found is not None else None


@rule
def dtype_runs_on_gpu(ctx: RuleContext) -> Iterator[Diagnostic]:
    """vLLM refuses bfloat16 below compute capability 8.0 (T4), whether asked for or the checkpoint's."""
    paths = [(p, s) for p, s in _gpu_types(ctx) if gpu_info(s).compute_capability < sizing.BF16_SINCE]
    if not paths:
        return
    dtype = ctx.get("model", "dtype")
    running = sizing.running_dtype(dtype, _checkpoint_dtype(ctx) if dtype in (None, "auto") else None)
    for path, spec in paths:
        problem = sizing.dtype_problem(gpu_info(spec), running)
        if problem:
            source = "model.dtype" if dtype not in (None, "auto") else "the checkpoint's dtype (config.json)"
            yield ctx.error(
                path,
                f"{problem} ({source} is bfloat16): vLLM would refuse to start",
                "dtype-hardware",
                hint="set model.dtype: float16, or use a GPU of compute capability 8.0 or newer "
                "(A10, L4, A100 and later)",
            )


@rule
def quantize_on_load_methods(ctx: RuleContext) -> Iterator[Diagnostic]:
    method = ctx.get("model", "quantization", default="none")
    if ctx.get("model", "quantize_on_load") and method not in ("fp8", "bitsandbytes"):
        yield ctx.error(
            ("model", "quantize_on_load"),
            f"vLLM quantizes on load only to fp8 or bitsandbytes, not {method!r}",
            "quantize-on-load",
            hint="drop quantize_on_load: a pre-quantized checkpoint's method is read from its config",
        )


@rule
def weights_fit(ctx: RuleContext) -> Iterator[Diagnostic]:
    params = ctx.get("model", "parameters_b")
    if params is None or not ctx.get("gpu", "type"):
        return
    quant = ctx.get("model", "quantization", default="none")
    need = sizing.parameter_weight_bytes(params * 1e9, quant, ctx.get("model", "dtype"))
    util = ctx.get("engine", "gpu_memory_utilization") or default_utilization(ctx)
    count = ctx.get("gpu", "count", default=1)
    for path, spec in _gpu_types(ctx):
        info = gpu_info(spec)
        have = info.memory_gib * sizing.GIB * count * util
        if need > have:
            yield ctx.warning(
                path,
                f"{params:g}B parameters ({quant}) need about {need / sizing.GIB:.0f} GiB of "
                f"weights; {count} x {info.name} at {util:g} utilization hold "
                f"{have / sizing.GIB:.0f} GiB",
                "weights-fit",
                hint="more or larger GPUs, or a quantized checkpoint",
            )


def _hf_hub_cache() -> Path:
    """The local Hugging Face cache folder: `huggingface_hub`'s own answer when it is installed, else
    the same documented rule (HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub,
    else ~/.cache/huggingface/hub), so the lean install (no `huggingface_hub`) still finds a cache."""
    if importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    cache_home = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(env.get("HF_HOME") or os.path.join(cache_home, "huggingface")).expanduser() / "hub"


def _cached_snapshot(model_id: str, revision: str) -> bool:
    """Whether the local Hugging Face cache holds this commit of the model (its snapshot folder).

    A look at the cache's documented layout (`models--ORG--NAME/snapshots/COMMIT`) before anything
    else: reading the cache through `huggingface_hub` costs about 0.2 s of imports, which `validate`
    pays only for a model that is actually there. The schema pins `revision` to a full commit, so
    the folder is named by it exactly.
    """
    repo = "models--" + model_id.replace("/", "--")
    try:
        return (_hf_hub_cache() / repo / "snapshots" / revision).is_dir()
    except OSError:
        return False


@rule
def model_fits(ctx: RuleContext) -> Iterator[Diagnostic]:
    """vLLM refuses to start when weights plus one full-length sequence's KV cache exceed a GPU's
    budget; with the model's config.json and weight files in the local cache, say so now."""
    model_id, revision = ctx.get("model", "id"), ctx.get("model", "revision")
    if not (model_id and revision and ctx.get("gpu", "type")) or not _cached_snapshot(model_id, revision):
        return
    if importlib.util.find_spec("huggingface_hub") is None:
        # The lean install: the model is cached but cannot be read without huggingface_hub. Say so
        # once per deployment rather than pass silently; with nothing cached this rule is silent anyway.
        yield ctx.warning(
            ("model", "revision"),
            "cannot check that the model fits its GPUs: reading the Hugging Face cache needs huggingface_hub",
            "model-fit",
            hint="pip install 'fleetform[hub]' to check it",
        )
        return
    problems: list[str] = []
    meta = sizing.metadata_offline(model_id, revision, problems=problems)
    for problem in problems:  # a broken cache: no fit check, and say why
        yield ctx.warning(
            ("model", "revision"),
            f"cannot check that the model fits its GPUs: {problem}",
            "model-fit",
            hint="fix or delete that cache entry (huggingface-cli delete-cache)",
        )
    if meta:
        d = sizing.check_fit(
            ctx.data, meta.shape, meta.weights_bytes, mark=ctx.mark, default_utilization=default_utilization(ctx)
        )
        if d:
            yield d


# --- scaling ----------------------------------------------------------------------------------------------


@rule
def containers_ordered(ctx: RuleContext) -> Iterator[Diagnostic]:
    lo, hi = ctx.get("scaling", "min_containers"), ctx.get("scaling", "max_containers")
    if lo is not None and hi is not None and lo > hi:
        yield ctx.error(
            ("scaling", "min_containers"),
            f"min_containers {lo} is above max_containers {hi}",
            "containers",
            hint=f"raise max_containers to at least {lo}, or lower min_containers",
        )


@rule
def concurrency_ordered(ctx: RuleContext) -> Iterator[Diagnostic]:
    target, cap = ctx.get("scaling", "target_concurrency"), ctx.get("scaling", "max_concurrency")
    if target is not None and cap is not None and target > cap:
        yield ctx.error(
            ("scaling", "target_concurrency"),
            f"target_concurrency {target} is above max_concurrency {cap}",
            "concurrency",
            hint="the autoscaler could never reach its target; lower it or raise max_concurrency",
        )


@rule
def batched_tokens_cover_seqs(ctx: RuleContext) -> Iterator[Diagnostic]:
    """vLLM refuses to start when one step cannot hold a token of every sequence it batches."""
    seqs, tokens = ctx.get("engine", "max_num_seqs"), ctx.get("engine", "max_num_batched_tokens")
    if seqs is not None and tokens is not None and tokens < seqs:
        yield ctx.error(
            ("engine", "max_num_batched_tokens"),
            f"max_num_batched_tokens {tokens} is below max_num_seqs {seqs}: vLLM refuses to start",
            "batched-tokens",
            hint=f"raise max_num_batched_tokens to at least {seqs}, or lower max_num_seqs",
        )


# --- endpoint safety --------------------------------------------------------------------------------------


@rule
def auth_explicit(ctx: RuleContext) -> Iterator[Diagnostic]:
    if ctx.get("auth", "mode") == "none":
        yield ctx.warning(
            ("auth", "mode"),
            "endpoint is open to anyone on the internet (auth.mode: none)",
            "unauthenticated",
            hint="use `proxy` (the default) or `api_key` unless this is intended",
        )


SLEEP_MODE_SINCE = (0, 8, 0)  # vLLM release whose server exposes /sleep and /wake_up in dev mode


@rule
def snapshot_supported(ctx: RuleContext) -> Iterator[Diagnostic]:
    if ctx.get("engine", "cold_start") != "snapshot":
        return
    version = ctx.vllm_version
    if tuple(int(p) for p in version.split(".")[:3]) < SLEEP_MODE_SINCE:
        yield ctx.error(
            ("engine", "cold_start"),
            f"cold_start snapshot needs vLLM sleep mode, which vLLM {version} does not serve",
            "snapshot-vllm",
            hint="use engine.vllm_version 0.8.0 or newer",
        )
    yield ctx.warning(
        ("engine", "cold_start"),
        "GPU memory snapshots are an alpha Modal feature",
        "snapshot-alpha",
        hint="watch the first deploy's restore times; `cold_start: standard` is the safe fallback",
    )


# Variables of the vLLM process that fleetform, a Secret, the image or the runtime sets: engine.env
# may not set them (tests/test_rules.py proves this covers every place fleetform sets one).
OWNED_ENV: dict[str, str] = {
    "VLLM_API_KEY": "the API key comes from auth.api_key_secret's Secret; an empty value here switches "
    "vLLM's key check off",
    "VLLM_SERVER_DEV_MODE": "it opens /sleep, /wake_up and /collective_rpc; fleetform sets it, guarded, only "
    "for cold_start: snapshot",
    "FLEETFORM_ADMIN_TOKEN": "the runtime's per-container token for the sleep/wake guard",
    "HF_TOKEN": "a token belongs in a Modal Secret listed under `secrets`",
    "HUGGING_FACE_HUB_TOKEN": "a token belongs in a Modal Secret listed under `secrets`",
    "HF_XET_HIGH_PERFORMANCE": "the image sets it for fast downloads",
    "HF_HOME": "the Hugging Face cache Volume is mounted where the default points",
    "HF_HUB_CACHE": "the Hugging Face cache Volume is mounted where the default points",
    "VLLM_CACHE_ROOT": "the vLLM cache Volume is mounted where the default points",
    "PYTHONPATH": "the runtime sets it for the sleep/wake guard (a value here would be dropped in snapshot mode)",
    "PYTHONHOME": "it would replace the image's Python",
    "LD_PRELOAD": "it injects code into vLLM and every process it starts",
    "LD_LIBRARY_PATH": "it replaces the CUDA libraries the image's torch and vLLM were built against",
}


@rule
def env_not_owned(ctx: RuleContext) -> Iterator[Diagnostic]:
    for key in ctx.get("engine", "env", default={}) or {}:
        owner = OWNED_ENV.get(key) or OWNED_ENV.get(key.upper())
        if owner:
            yield ctx.error(
                ("engine", "env", key),
                f"{key} may not be set in engine.env: {owner}",
                "env-owned",
                hint=f"remove {key} from engine.env",
            )


def _is_value(token: str) -> bool:
    """A token that is an option's value, not an option: not `-...`, or a negative number."""
    if not token.startswith("-") or token == "-":
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ArgProblem:
    index: int
    message: str
    hint: str


def extra_arg_problems(args: list[str], options: vllm_args.VllmOptions) -> list[ArgProblem]:
    """What vLLM's parser would do with `args` that fleetform cannot allow: unknown options,
    abbreviations (argparse expands unique prefixes), short aliases it cannot tell apart, and every
    spelling of an option fleetform manages. Spelled as vLLM reads them: `_` as `-`, `--flag=value`."""
    managed = vllm_args.managed_flags(options)
    out: list[ArgProblem] = []
    takes_value: bool | None = False
    pending: vllm_args.VllmOption | None = None  # the option the next value belongs to, for its choices
    for i, token in enumerate(args):
        if _is_value(token):
            if pending is not None and pending.choices is not None and token not in pending.choices:
                out.append(
                    ArgProblem(
                        i,
                        f"{pending.long_name} {shown(token)} is not one of vLLM's choices",
                        "choose one of " + ", ".join(pending.choices),
                    )
                )
            pending = None
            if takes_value is False:
                where = "at the start" if i == 0 else f"after {args[i - 1]}, which takes no value"
                out.append(
                    ArgProblem(
                        i,
                        f"{shown(token)} is a value with no option before it ({where})",
                        "put the option this value belongs to before it, or remove it",
                    )
                )
            takes_value = None if takes_value is None else False  # one value taken; `+` options take more
            continue
        if token == "--":
            out.append(ArgProblem(i, "`--` would end vLLM's options", "remove it"))
            takes_value = False
            continue
        pending = None
        written, eq, value = token.partition("=")
        flag = "--" + written[2:].replace("_", "-") if written.startswith("--") else written
        if not written.startswith("--") and flag not in options.by_flag and flag[:2] in options.by_flag:
            flag, eq = flag[:2], "="  # `-qfp8`: a one-letter option with its value attached
        shown_flag = written if len(written) <= SHOWN_CHARS and written.isprintable() else shown(written)
        if flag in managed:
            m = managed[flag]
            same = "" if written == flag else f" (vLLM reads it as {flag})"
            out.append(ArgProblem(i, f"{shown_flag} is managed by fleetform{same}", m.hint))
            takes_value = None
            continue
        option = options.by_flag.get(flag)
        if option is None:
            longer = sorted(f for f in options.by_flag if f.startswith(flag) and len(flag) > 2)
            if len(longer) == 1 and longer[0] in managed:
                m = managed[longer[0]]
                out.append(ArgProblem(i, f"{shown_flag} abbreviates {longer[0]}, which fleetform manages", m.hint))
            elif len(longer) == 1:
                out.append(
                    ArgProblem(
                        i, f"{shown_flag} abbreviates {longer[0]}: vLLM would expand it", f"write {longer[0]} in full"
                    )
                )
            elif longer:
                out.append(
                    ArgProblem(
                        i,
                        f"{shown_flag} abbreviates {len(longer)} options ({', '.join(longer[:4])}"
                        f"{', ...' if len(longer) > 4 else ''})",
                        "write the option in full",
                    )
                )
            else:
                close = did_you_mean(flag, [f for f in options.by_flag if f.startswith("--")])
                out.append(
                    ArgProblem(
                        i,
                        f"{shown_flag} is not an option of vLLM {options.version}'s `vllm serve`",
                        close or "see `vllm serve --help` for the pinned release",
                    )
                )
            takes_value = None
            continue
        if not flag.startswith("--") and not options.complete:
            out.append(
                ArgProblem(
                    i,
                    f"{shown_flag} is a short alias fleetform cannot check",
                    "write the option's long name (`vllm serve --help` lists it)",
                )
            )
            takes_value = None
            continue
        if eq and option.takes_value is False:
            out.append(
                ArgProblem(
                    i, f"{option.long_name} takes no value, got {shown(value)}", f"write {option.long_name} alone"
                )
            )
        elif eq and option.choices is not None and value not in option.choices:
            out.append(
                ArgProblem(
                    i,
                    f"{option.long_name} {shown(value)} is not one of vLLM's choices",
                    "choose one of " + ", ".join(option.choices),
                )
            )
        takes_value = False if eq else option.values
        pending = option if takes_value else None
    return out


@rule
def extra_args_checked(ctx: RuleContext) -> Iterator[Diagnostic]:
    args = ctx.get("engine", "extra_args", default=[]) or []
    if not args:
        return
    options = ctx.vllm_options
    if options is None:
        known = ", ".join(vllm_args.shipped_versions())
        yield ctx.warning(
            ("engine", "extra_args"),
            f"fleetform ships no option list for vLLM {ctx.vllm_version}: {len(args)} extra argument(s) "
            "passed through unchecked",
            "extra-args-unchecked",
            hint=f"fleetform checks extra_args for vLLM {known}; `fleetform serve --local` or a "
            "deploy's smoke test will try these",
        )
        return
    for p in extra_arg_problems(list(args), options):
        yield ctx.error(("engine", "extra_args", p.index), p.message, "extra-args", hint=p.hint)


@rule
def values_vllm_accepts(ctx: RuleContext) -> Iterator[Diagnostic]:
    """A value fleetform passes (dtype, kv_cache_dtype, quantization) must be among vLLM's choices."""
    options = ctx.vllm_options
    if options is None:
        return
    for row in vllm_args.ARGS:
        value = row.value(ctx.data) if row.value else None
        option = options.by_flag.get(row.flags[0])
        if value is None or option is None or option.choices is None or str(value) in option.choices:
            continue
        path = tuple(row.field.split(".")) if row.field else ("engine",)
        yield ctx.error(
            path,
            f"vLLM {options.version} does not accept {row.flags[0]} {shown(value)}",
            "vllm-choice",
            hint="choose one of " + ", ".join(option.choices),
        )


# --- fleet-wide rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A name that must be unique across the fleet, and where it was claimed."""

    value: str
    mark: Mark
    path: FieldPath


def unique_across_fleet(claims: list[Claim], what: str, code: str) -> list[Diagnostic]:
    first: dict[str, Claim] = {}
    out = []
    for c in claims:
        if c.value in first:
            prev = first[c.value]
            out.append(
                Diagnostic(
                    c.mark,
                    c.path,
                    f"{what} {c.value!r} is already used",
                    code,
                    hint=f"first used at {prev.mark} ({format_path(prev.path)})",
                )
            )
        else:
            first[c.value] = c
    return out


def canary_names(names: list[Claim]) -> list[Diagnostic]:
    """A deployment named as another one's canary app (`NAME-canary`): a canary rollout of that one
    would deploy over it."""
    taken = {c.value for c in names}
    return [
        Diagnostic(
            c.mark,
            c.path,
            f"deployment name {c.value!r} is the canary app name of deployment {c.value[: -len(CANARY_SUFFIX)]!r}",
            "canary-name",
            hint=f"a canary rollout runs the new version as app NAME{CANARY_SUFFIX}: rename this deployment",
        )
        for c in names
        if c.value.endswith(CANARY_SUFFIX) and c.value[: -len(CANARY_SUFFIX)] in taken
    ]


def canary_without_gateway(strategies: list[Claim]) -> list[Diagnostic]:
    """`rollout.strategy: canary` in a fleet without the gateway: nothing could split the traffic."""
    return [
        Diagnostic(
            c.mark,
            c.path,
            "a canary rollout needs the fleet's gateway: Modal's own URL has no traffic split",
            "canary-needs-gateway",
            hint="set gateway.enabled: true in fleet.yaml, or rollout.strategy: direct",
        )
        for c in strategies
        if c.value == "canary"
    ]


def undeclared_environments(root: Node, declared: list[str]) -> list[Diagnostic]:
    """A deployment's `environments.NAME` overlay for an environment fleet.yaml does not declare."""
    node = root.value.get("environments") if isinstance(root.value, dict) else None
    if node is None or not isinstance(node.value, dict):
        return []
    out = []
    for env in node.value:
        hint = did_you_mean(env, declared) or (
            f"fleet.yaml declares: {', '.join(declared)}"
            if declared
            else "declare it under `environments` in fleet.yaml"
        )
        out.append(
            Diagnostic(
                (node.key_marks or {}).get(env, node.mark),
                ("environments", env),
                f"unknown environment {shown(env)}",
                "unknown-environment",
                hint=hint,
            )
        )
    return [d for d in out if d.path[1] not in declared]
