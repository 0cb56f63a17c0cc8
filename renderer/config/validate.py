"""Stage 2: is the input right? JSON Schema first, then semantic rules, one function each.

Nothing here raises on bad input: every check returns `Diagnostic`s that point at the file, line
and column where the offending value was written, even when it came from `fleet.yaml` defaults
(the merged tree keeps each node's origin).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from renderer.diagnostics import Diagnostic, Mark, Path as FieldPath, Severity, did_you_mean, format_path
from renderer.gpus import GPU_TYPES, gpu_info, parse_gpu_type
from renderer.config.load import Document, Node

# --- the schemas ---------------------------------------------------------------------------------

DEPLOYMENT_SCHEMA = "deployment.schema.json"
FLEET_SCHEMA = "fleet.schema.json"


def schema_dir() -> Path:
    """The schema files: shipped inside the wheel, or the repository's `schema/` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_schema"
    return packaged if packaged.is_dir() else package.parent / "schema"


@functools.cache
def load_schema(name: str) -> dict:
    with open(schema_dir() / name, encoding="utf-8") as fh:
        return json.load(fh)


@functools.cache
def _validator(name: str, fragment: str = "") -> Any:
    """A compiled Draft 2020-12 validator for a schema, or for one of its `$defs` (by pointer)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (n, Resource.from_contents(load_schema(n))) for n in (DEPLOYMENT_SCHEMA, FLEET_SCHEMA)
    )
    schema = ({"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{name}#{fragment}"}
              if fragment else load_schema(name))
    return Draft202012Validator(schema, registry=registry)


def _resolve_ref(ref: str, base: str) -> tuple[str, dict]:
    file, _, pointer = ref.partition("#")
    file = file or base
    node: Any = load_schema(file)
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        node = node[part]
    return file, node


def subschema_at(name: str, path: FieldPath) -> dict | None:
    """The schema that governs the value at `path` (following $ref), or None if none does."""
    file, node = name, load_schema(name)
    for part in (*path, None):
        while "$ref" in node:
            file, target = _resolve_ref(node["$ref"], file)
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        if part is None:
            return node
        if isinstance(part, int):
            node = node.get("items")
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
        if node is None:
            return None
    return node


# --- schema diagnostics ----------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__.replace('str', 'string').replace('int', 'integer')} {value!r}"


def _expected(schema: dict) -> str | None:
    """A short phrase for what a schema accepts, from the schema's own words."""
    if "patternErrorMessage" in schema:
        return schema["patternErrorMessage"]
    for branch in schema.get("anyOf", []):
        if "patternErrorMessage" in branch:
            return branch["patternErrorMessage"]
    return None


_SECTION_OF: dict[str, str] = {}


def _section_of(key: str) -> str | None:
    """Which section a field name belongs to (`scaledown_window` -> `scaling`), for misplaced keys."""
    if not _SECTION_OF:
        defs = load_schema(DEPLOYMENT_SCHEMA)["$defs"]
        for section in ("model", "gpu", "scaling", "engine", "image", "cache", "auth"):
            for prop in defs[section]["properties"]:
                _SECTION_OF.setdefault(prop, section)
    return _SECTION_OF.get(key)


def _schema_error_diags(err: Any, root: Node, schema_name: str, base_path: FieldPath) -> Iterator[Diagnostic]:
    path: FieldPath = (*base_path, *err.absolute_path)
    node, mark = root.find(tuple(err.absolute_path))
    v = err.validator
    schema = err.schema if isinstance(err.schema, dict) else {}
    code = f"schema-{v}"

    if v == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        for key in sorted(set(err.instance) - allowed, key=lambda k: (node.key_marks or {}).get(k, mark).line):
            kmark = (node.key_marks or {}).get(key, mark)
            hint = did_you_mean(key, allowed)
            section = _section_of(key)
            if hint is None and section and (not path or path[-1] != section):
                hint = f"`{key}` belongs under `{section}`"
            if hint is None and allowed:
                hint = "allowed here: " + ", ".join(sorted(allowed))
            yield Diagnostic(kmark, (*path, key), f"unknown field {key!r}", "schema-unknown-field", hint=hint)
        return
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        sub = subschema_at(schema_name, (*path, missing)) if schema_name else None
        what = (sub or {}).get("description", "")
        hint = f"{missing}: {what.split('. ')[0].rstrip('.')}" if what else None
        yield Diagnostic(mark, path, f"missing required field {missing!r}", "schema-required", hint=hint)
        return
    if v == "enum":
        choices = [str(c) for c in err.validator_value]
        got = err.instance
        hint = did_you_mean(str(got), choices) if isinstance(got, str) else None
        shown = ", ".join(choices) if len(choices) <= 12 else ", ".join(c for c in choices if not c.endswith("!"))
        yield Diagnostic(mark, path, f"expected one of {shown}; got {_describe(got)}", code, hint=hint)
        return
    if v == "propertyNames":
        bad = err.instance
        kmark = (node.key_marks or {}).get(bad, mark) if isinstance(bad, str) else mark
        expected = _expected(err.validator_value) or "a valid name"
        yield Diagnostic(kmark, (*path, bad), f"invalid key {bad!r}: expected {expected}", code)
        return
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        yield Diagnostic(mark, path, f"expected {want}, got {_describe(err.instance)}", code)
        return
    if v in ("pattern", "anyOf", "oneOf"):
        expected = _expected(schema) or _expected(err.validator_value if isinstance(err.validator_value, dict) else {})
        if v != "pattern" and expected is None:
            kinds = sorted({b.get("type", "?") for b in err.validator_value if isinstance(b, dict)})
            expected = " or ".join(kinds)
        yield Diagnostic(mark, path, f"expected {expected or 'a value matching ' + repr(err.validator_value)}, "
                                     f"got {_describe(err.instance)}", code)
        return
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        yield Diagnostic(mark, path, f"must be {op} {err.validator_value}, got {err.instance!r}", code)
        return
    if v == "uniqueItems":
        seen, dups = set(), []
        for item in err.instance:
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                dups.append(item)
            seen.add(key)
        yield Diagnostic(mark, path, f"items must be unique; repeated: {', '.join(map(repr, dups))}", code)
        return
    yield Diagnostic(mark, path, err.message, code)


def check_schema(doc: Document, schema_name: str = DEPLOYMENT_SCHEMA) -> list[Diagnostic]:
    """Every schema error of a document (not just the first), each placed at its line and column."""
    return check_tree(doc.root, schema_name)


def check_tree(root: Node, schema_name: str) -> list[Diagnostic]:
    """Every schema error of a tree (a file, or a merged deployment whose nodes keep their origins)."""
    validator = _validator(schema_name)
    out: list[Diagnostic] = []
    for err in validator.iter_errors(root.plain()):
        out.extend(_schema_error_diags(err, root, schema_name, ()))
    return sorted(out, key=Diagnostic.sort_key)


# --- units -------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: int | str) -> int:
    """Seconds in `900`, `"15m"`, `"1h30m"` or `"90s"`. The schema has already checked the form."""
    if isinstance(value, int):
        return value
    m = _DURATION.match(value)
    if not m or not value:
        raise ValueError(f"not a duration: {value!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


# --- semantic rules ----------------------------------------------------------------------------------


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

    def error(self, path: tuple, message: str, code: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic(self.mark(*path), path, message, code, Severity.ERROR, hint)

    def warning(self, path: tuple, message: str, code: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic(self.mark(*path), path, message, code, Severity.WARNING, hint)


Rule = Callable[[RuleContext], Iterable[Diagnostic]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _gpu_types(ctx: RuleContext) -> list[tuple[tuple, str]]:
    """(path, spec) for the GPU type and each fallback."""
    out = []
    if ctx.get("gpu", "type"):
        out.append((("gpu", "type"), ctx.get("gpu", "type")))
    for i, spec in enumerate(ctx.get("gpu", "fallbacks", default=[]) or []):
        out.append((("gpu", "fallbacks", i), spec))
    return out


@rule
def durations_in_range(ctx: RuleContext) -> Iterator[Diagnostic]:
    limits = {"scaledown_window": (2, 3600), "startup_timeout": (1, 86400)}
    for key, (lo, hi) in limits.items():
        raw = ctx.get("scaling", key)
        if raw is None:
            continue
        seconds = parse_duration(raw)
        if not lo <= seconds <= hi:
            yield ctx.error(("scaling", key), f"must be between {lo} s and {hi} s, got {raw!r} ({seconds} s)",
                            "range")


@rule
def gpu_count_allowed(ctx: RuleContext) -> Iterator[Diagnostic]:
    count = ctx.get("gpu", "count", default=1)
    for path, spec in _gpu_types(ctx):
        info = gpu_info(spec)
        if count > info.max_count:
            yield ctx.error(("gpu", "count"), f"{info.name} allows at most {info.max_count} GPUs a container, "
                                              f"got {count}", "gpu-count",
                            hint=f"use a larger GPU type, or at most {info.max_count} {info.name}")


@rule
def tensor_parallel_divides_count(ctx: RuleContext) -> Iterator[Diagnostic]:
    count = ctx.get("gpu", "count", default=1)
    tp = ctx.get("gpu", "tensor_parallel_size")
    if tp is None:
        return
    if tp > count or count % tp:
        yield ctx.error(("gpu", "tensor_parallel_size"),
                        f"tensor_parallel_size {tp} must divide the GPU count {count}", "tensor-parallel",
                        hint=f"choose one of {', '.join(str(d) for d in range(1, count + 1) if count % d == 0)}")
    elif tp < count:
        yield ctx.warning(("gpu", "tensor_parallel_size"),
                          f"tensor_parallel_size {tp} uses {tp} of {count} GPUs; the rest stay idle", "tensor-parallel",
                          hint="set gpu.count to the tensor parallel size, or add data parallelism in engine.extra_args")


@rule
def fp8_needs_ada_or_newer(ctx: RuleContext) -> Iterator[Diagnostic]:
    if ctx.get("model", "quantization") != "fp8":
        return
    capable = [g.name for g in GPU_TYPES.values() if g.supports_fp8]
    for path, spec in _gpu_types(ctx):
        info = gpu_info(spec)
        if not info.supports_fp8:
            cc = ".".join(map(str, info.compute_capability))
            yield ctx.error(path, f"FP8 weights need compute capability 8.9 or newer; {info.name} has {cc}",
                            "fp8-hardware", hint="FP8 runs on " + ", ".join(capable))


@rule
def quantize_on_load_methods(ctx: RuleContext) -> Iterator[Diagnostic]:
    method = ctx.get("model", "quantization", default="none")
    if ctx.get("model", "quantize_on_load") and method not in ("fp8", "bitsandbytes"):
        yield ctx.error(("model", "quantize_on_load"),
                        f"vLLM quantizes on load only to fp8 or bitsandbytes, not {method!r}", "quantize-on-load",
                        hint="drop quantize_on_load: a pre-quantized checkpoint's method is read from its config")


@rule
def containers_ordered(ctx: RuleContext) -> Iterator[Diagnostic]:
    lo, hi = ctx.get("scaling", "min_containers"), ctx.get("scaling", "max_containers")
    if lo is not None and hi is not None and lo > hi:
        yield ctx.error(("scaling", "min_containers"), f"min_containers {lo} is above max_containers {hi}",
                        "containers", hint=f"raise max_containers to at least {lo}, or lower min_containers")


@rule
def concurrency_ordered(ctx: RuleContext) -> Iterator[Diagnostic]:
    target, cap = ctx.get("scaling", "target_concurrency"), ctx.get("scaling", "max_concurrency")
    if target is not None and cap is not None and target > cap:
        yield ctx.error(("scaling", "target_concurrency"),
                        f"target_concurrency {target} is above max_concurrency {cap}", "concurrency",
                        hint="the autoscaler could never reach its target; lower it or raise max_concurrency")


_TOKEN_PATTERNS = (
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "a Hugging Face token"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"), "an API key (sk-...)"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
)
_SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


@rule
def no_literal_credentials(ctx: RuleContext) -> Iterator[Diagnostic]:
    hint = "put it in a Modal Secret (`modal secret create NAME VAR=...`) and list the Secret's name under `secrets`"
    flagged: set[tuple] = set()
    for path, node in ctx.tree.walk():
        if isinstance(node.value, str):
            for pattern, what in _TOKEN_PATTERNS:
                if pattern.search(node.value):
                    flagged.add(path)
                    yield Diagnostic(node.mark, path, f"looks like {what}: credentials never belong in YAML",
                                     "literal-credential", hint=hint)
                    break
    env = ctx.get("engine", "env", default={}) or {}
    for key, value in env.items():
        if _SECRET_NAME.search(key) and value not in ("", None) and ("engine", "env", key) not in flagged:
            yield ctx.error(("engine", "env", key), f"{key} looks like a credential, set as a literal value",
                            "literal-credential", hint=hint)
    args = ctx.get("engine", "extra_args", default=[]) or []
    for i, arg in enumerate(args):
        if arg.split("=")[0] in ("--api-key", "--hf-token"):
            yield ctx.error(("engine", "extra_args", i), f"{arg.split('=')[0]} on the command line exposes a secret",
                            "literal-credential",
                            hint="use auth.mode: api_key with auth.api_key_secret (vLLM reads VLLM_API_KEY)")


@rule
def auth_explicit(ctx: RuleContext) -> Iterator[Diagnostic]:
    if ctx.get("auth", "mode") == "none":
        yield ctx.warning(("auth", "mode"), "endpoint is open to anyone on the internet (auth.mode: none)",
                          "unauthenticated", hint="use `proxy` (the default) or `api_key` unless this is intended")


# Flags that fleetform writes itself from other fields: setting them again in extra_args would
# contradict the YAML (or crash vLLM on a duplicate).
MANAGED_FLAGS = {
    "--model": "model.id", "--revision": "model.revision", "--served-model-name": "model.served_model_names",
    "--host": "(fleetform)", "--port": "engine.port", "--tensor-parallel-size": "gpu.tensor_parallel_size",
    "-tp": "gpu.tensor_parallel_size", "--enforce-eager": "engine.fast_boot", "--no-enforce-eager": "engine.fast_boot",
    "--dtype": "model.dtype", "--max-model-len": "model.max_model_len", "--quantization": "model.quantization",
    "-q": "model.quantization", "--tokenizer": "model.tokenizer", "--chat-template": "model.chat_template",
    "--gpu-memory-utilization": "engine.gpu_memory_utilization", "--max-num-seqs": "engine.max_num_seqs",
    "--enable-prefix-caching": "engine.enable_prefix_caching",
    "--no-enable-prefix-caching": "engine.enable_prefix_caching", "--kv-cache-dtype": "engine.kv_cache_dtype",
    "--uvicorn-log-level": "(fleetform)", "--enable-sleep-mode": "engine.cold_start",
    "--middleware": "(fleetform)", "--enable-lora": "model.lora_adapters", "--lora-modules": "model.lora_adapters",
    "--max-lora-rank": "model.max_lora_rank",
}


SLEEP_MODE_SINCE = (0, 8, 0)  # vLLM release whose server exposes /sleep and /wake_up in dev mode


@rule
def snapshot_supported(ctx: RuleContext) -> Iterator[Diagnostic]:
    if ctx.get("engine", "cold_start") != "snapshot":
        return
    version = ctx.get("engine", "vllm_version", default="0.26.0")
    if tuple(int(p) for p in version.split(".")[:3]) < SLEEP_MODE_SINCE:
        yield ctx.error(("engine", "cold_start"), f"cold_start snapshot needs vLLM sleep mode, which vLLM {version} "
                                                  "does not serve", "snapshot-vllm",
                        hint="use engine.vllm_version 0.8.0 or newer")
    yield ctx.warning(("engine", "cold_start"), "GPU memory snapshots are an alpha Modal feature", "snapshot-alpha",
                      hint="watch the first deploy's restore times; `cold_start: standard` is the safe fallback")


@rule
def extra_args_checked(ctx: RuleContext) -> Iterator[Diagnostic]:
    args = ctx.get("engine", "extra_args", default=[]) or []
    for i, arg in enumerate(args):
        flag = arg.split("=")[0]
        if flag in MANAGED_FLAGS:
            field = MANAGED_FLAGS[flag]
            hint = f"set {field} instead" if not field.startswith("(") else "fleetform sets it; remove it"
            yield ctx.error(("engine", "extra_args", i), f"{flag} is managed by fleetform", "extra-args", hint=hint)
    if args:
        yield ctx.warning(("engine", "extra_args"),
                          f"{len(args)} extra vLLM argument(s) passed through unchecked", "extra-args",
                          hint="fleetform cannot tell whether the pinned vLLM accepts them; `fleetform serve --local` "
                               "or a deploy's smoke test will")


_BYTES_PER_PARAM = {"none": 2.0, "fp8": 1.0, "compressed-tensors": 1.0, "awq": 0.5625, "gptq": 0.5625,
                    "bitsandbytes": 0.5625}


def weight_bytes(parameters_b: float, quantization: str, dtype: str | None) -> float:
    """Approximate bytes of weights once loaded (a checkpoint quantized on load counts as quantized).

    4-bit formats carry about 12% more for scales and zero points.
    """
    if quantization == "none":
        per = 4.0 if dtype == "float32" else 2.0
    else:
        per = _BYTES_PER_PARAM[quantization]
    return parameters_b * 1e9 * per


@rule
def weights_fit(ctx: RuleContext) -> Iterator[Diagnostic]:
    params = ctx.get("model", "parameters_b")
    if params is None or not ctx.get("gpu", "type"):
        return
    quant = ctx.get("model", "quantization", default="none")
    need = weight_bytes(params, quant, ctx.get("model", "dtype"))
    util = ctx.get("engine", "gpu_memory_utilization") or 0.9
    count = ctx.get("gpu", "count", default=1)
    for path, spec in _gpu_types(ctx):
        info = gpu_info(spec)
        have = info.memory_gib * 2**30 * count * util
        if need > have:
            yield ctx.warning(path, f"{params:g}B parameters ({quant}) need about {need / 2**30:.0f} GiB of weights; "
                                    f"{count} x {info.name} at {util:g} utilization hold {have / 2**30:.0f} GiB",
                              "weights-fit", hint="more or larger GPUs, or a quantized checkpoint")


def _cached_snapshot(model_id: str, revision: str) -> bool:
    """Whether the local Hugging Face cache holds this commit of the model (its snapshot folder).

    A look at the cache's documented layout (`models--ORG--NAME/snapshots/COMMIT`) before anything
    else: reading the cache through `huggingface_hub` costs about 0.2 s of imports, which `validate`
    pays only for a model that is actually there. The schema pins `revision` to a full commit, so
    the folder is named by it exactly.
    """
    from huggingface_hub import constants

    repo = "models--" + model_id.replace("/", "--")
    return (Path(constants.HF_HUB_CACHE) / repo / "snapshots" / revision).is_dir()


@rule
def model_fits(ctx: RuleContext) -> Iterator[Diagnostic]:
    """vLLM refuses to start when weights plus one full-length sequence's KV cache exceed a GPU's
    budget; with the model's config.json and weight files in the local cache, say so now."""
    model_id, revision = ctx.get("model", "id"), ctx.get("model", "revision")
    if not (model_id and revision and ctx.get("gpu", "type")) or not _cached_snapshot(model_id, revision):
        return
    from renderer.sizing import check_fit, metadata_offline

    problems: list[str] = []
    meta = metadata_offline(model_id, revision, problems=problems)
    for problem in problems:  # a broken cache: no fit check, and say why
        yield ctx.warning(("model", "revision"), f"cannot check that the model fits its GPUs: {problem}",
                          "model-fit", hint="fix or delete that cache entry (huggingface-cli delete-cache)")
    if meta:
        d = check_fit(ctx.data, meta.shape, meta.weights_bytes, mark=ctx.mark)
        if d:
            yield d


def check_rules(ctx: RuleContext) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for fn in RULES:
        out.extend(fn(ctx))
    return out


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
            out.append(Diagnostic(c.mark, c.path, f"{what} {c.value!r} is already used", code,
                                  hint=f"first used at {prev.mark} ({format_path(prev.path)})"))
        else:
            first[c.value] = c
    return out


def undeclared_environments(root: Node, declared: list[str]) -> list[Diagnostic]:
    """A deployment's `environments.NAME` overlay for an environment fleet.yaml does not declare."""
    node = root.value.get("environments") if isinstance(root.value, dict) else None
    if node is None or not isinstance(node.value, dict):
        return []
    out = []
    for env in node.value:
        hint = did_you_mean(env, declared) or (
            f"fleet.yaml declares: {', '.join(declared)}" if declared else "declare it under `environments` in fleet.yaml")
        out.append(Diagnostic((node.key_marks or {}).get(env, node.mark), ("environments", env),
                              f"unknown environment {env!r}", "unknown-environment", hint=hint))
    return [d for d in out if d.path[1] not in declared]
