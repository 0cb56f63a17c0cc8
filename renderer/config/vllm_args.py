"""The vLLM command line: ONE table yields both the argv a deployment implies and the set of flags
fleetform manages, checked against the pinned vLLM's own option list.

`ARGS` is the table: each row names every flag it may put on the command line, the deployment field
that sets it (None: fleetform itself), and how it builds its `spec.Arg`. `build_vllm_args` walks the
table; `managed_flags` is every spelling vLLM accepts for the options the table writes, plus the
options that would break fleetform if `engine.extra_args` set them (`BREAKING`).

vLLM's option lists ship in `vllm/` beside this module, one file per release, read from vLLM's own
`serve` parser: `serve-options-VERSION.json` (dest, flags, whether it takes a value, choices, the
default) or, older, `serve-options-VERSION.txt` (option strings only).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer.config import spec

OPTIONS_DIR = Path(__file__).resolve().parent / "vllm"

# The sleep/wake guard the runtime writes for vLLM to load. The runtime (codegen/runtime.py) is
# copied verbatim into every rendered module and uses the standard library only, so it cannot
# import this; tests/test_vllm_flags.py proves the two names agree.
GUARD_MIDDLEWARE = "fleetform_guard.DevRouteGuard"


# --- vLLM's own option list --------------------------------------------------------------------------


@dataclass(frozen=True)
class VllmOption:
    """One option of `vllm serve`'s parser: every string that sets it (`--x`, `--no-x`, `-x`)."""

    dest: str
    flags: tuple[str, ...]
    takes_value: bool | None = None  # None: not recorded (a flags-only list)
    choices: tuple[str, ...] | None = None
    default: Any = None
    nargs: int | str | None = None  # argparse's: None (one value), "?", "*", "+" or a count

    @property
    def values(self) -> bool | None:
        """Whether the next token is this option's value: True, False, or None for "maybe, or several"."""
        if self.takes_value is False:
            return False
        return None if self.takes_value is None or self.nargs is not None else True

    @property
    def long_name(self) -> str:
        longs = [f for f in self.flags if f.startswith("--") and not f.startswith("--no-")]
        return (longs or [f for f in self.flags if f.startswith("--")] or list(self.flags))[0]


@dataclass(frozen=True)
class VllmOptions:
    version: str
    options: tuple[VllmOption, ...]
    complete: bool  # dests, values, choices and defaults recorded (not a flags-only list)

    @functools.cached_property
    def by_flag(self) -> dict[str, VllmOption]:
        return {f: o for o in self.options for f in o.flags}

    @functools.cached_property
    def by_dest(self) -> dict[str, VllmOption]:
        return {o.dest: o for o in self.options}

    def default(self, dest: str) -> Any:
        option = self.by_dest.get(dest)
        return option.default if option is not None else None


def _from_json(version: str, data: dict) -> VllmOptions:
    options = []
    for o in data["options"]:
        choices = o.get("choices")
        options.append(
            VllmOption(
                o["dest"],
                tuple(o["flags"]),
                o.get("takes_value"),
                tuple(map(str, choices)) if choices is not None else None,
                o.get("default"),
                o.get("nargs"),
            )
        )
    return VllmOptions(version, tuple(options), True)


def _from_flags(version: str, lines: Iterable[str]) -> VllmOptions:
    """A flags-only list: `--x` and `--no-x` are one option; a short alias stands alone."""
    flags = [f.strip() for f in lines if f.strip() and not f.startswith("#")]
    groups: dict[str, list[str]] = {}
    for flag in flags:
        name = flag[2:] if flag.startswith("--") else flag
        if name.startswith("no-") and "--" + name[3:] in flags:
            name = name[3:]
        groups.setdefault(name, []).append(flag)
    return VllmOptions(
        version, tuple(VllmOption(k.replace("-", "_").lstrip("_"), tuple(v)) for k, v in groups.items()), False
    )


@functools.cache
def load_options(version: str) -> VllmOptions | None:
    """vLLM `version`'s `serve` options as shipped with fleetform, or None for a release with no list."""
    dump = OPTIONS_DIR / f"serve-options-{version}.json"
    if dump.is_file():
        return _from_json(version, json.loads(dump.read_text(encoding="utf-8")))
    flags = OPTIONS_DIR / f"serve-options-{version}.txt"
    if flags.is_file():
        return _from_flags(version, flags.read_text(encoding="utf-8").splitlines())
    return None


def shipped_versions() -> list[str]:
    names = [p.name for p in OPTIONS_DIR.glob("serve-options-*.*") if p.suffix in (".json", ".txt")]
    return sorted({n[len("serve-options-") :].rsplit(".", 1)[0] for n in names})


# --- the table -----------------------------------------------------------------------------------------

Build = Callable[[spec.Model, spec.Gpu, spec.Engine], Iterable[spec.Arg]]


@dataclass(frozen=True)
class Row:
    """Flags fleetform writes, the field they come from, and how they are built."""

    flags: tuple[str, ...]  # every flag this row may write
    field: str | None  # the deployment field that sets them; None: fleetform itself
    why: str  # for a flag fleetform sets itself: why extra_args may not
    build: Build
    # the value of the merged deployment this row passes, for a check against vLLM's choices
    value: Callable[[dict], Any] | None = None


def _num(value: float | int) -> str:
    return repr(value)


def _get(data: dict, *path: str) -> Any:
    for p in path:
        data = data.get(p) if isinstance(data, dict) else None
    return data


A = spec.Arg

ARGS: tuple[Row, ...] = (
    Row(
        ("--model",),
        "model.id",
        "",
        lambda m, g, e: [
            A((m.id,), "the model, fetched from the Hugging Face Hub into the cache Volume", ("MODEL_ID",))
        ],
    ),
    Row(
        ("--revision",),
        "model.revision",
        "",
        lambda m, g, e: [
            A(
                ("--revision", m.revision),
                "pinned weights: avoid nasty surprises when the repository changes",
                (None, "MODEL_REVISION"),
            )
        ],
    ),
    Row(
        ("--served-model-name",),
        "model.served_model_names",
        "",
        lambda m, g, e: [
            A(
                ("--served-model-name", *m.served_model_names),
                "names clients put in the request's `model` field",
                (None, *("SERVED_MODEL_NAMES",) * len(m.served_model_names)),
            )
        ],
    ),
    Row(
        ("--host",),
        None,
        "the server must listen where Modal's proxy reaches it",
        lambda m, g, e: [A(("--host", "0.0.0.0"), "listen on every interface, so Modal's proxy can reach the server")],
    ),
    Row(
        ("--port",),
        "engine.port",
        "",
        lambda m, g, e: [A(("--port", str(e.port)), "the port the app exposes", (None, "VLLM_PORT"))],
    ),
    Row(
        ("--uvicorn-log-level",),
        None,
        "the app's logs depend on it",
        lambda m, g, e: [A(("--uvicorn-log-level", "info"), "one log line per request")],
    ),
    Row(
        ("--enforce-eager", "--no-enforce-eager"),
        "engine.fast_boot",
        "",
        lambda m, g, e: [
            A(("--enforce-eager",), "fast_boot: no torch.compile or CUDA graphs; boots sooner, serves slower")
            if e.fast_boot
            else A(("--no-enforce-eager",), "torch.compile and CUDA graphs: slower boot, about 2x the throughput")
        ],
    ),
    Row(
        ("--tensor-parallel-size",),
        "gpu.tensor_parallel_size",
        "",
        lambda m, g, e: [
            A(("--tensor-parallel-size", str(g.tensor_parallel_size)), "split each layer over this many GPUs")
        ],
    ),
    Row(
        ("--dtype",),
        "model.dtype",
        "",
        lambda m, g, e: (
            [A(("--dtype", m.dtype), "activation and unquantized weight dtype")] if m.dtype is not None else []
        ),
        value=lambda d: _get(d, "model", "dtype"),
    ),
    Row(
        ("--max-model-len",),
        "model.max_model_len",
        "",
        lambda m, g, e: (
            [A(("--max-model-len", str(m.max_model_len)), "longest context; bounds KV cache per request")]
            if m.max_model_len is not None
            else []
        ),
    ),
    Row(
        ("--quantization",),
        "model.quantization",
        "",
        lambda m, g, e: (
            [A(("--quantization", m.quantization), "quantize the 16-bit checkpoint while loading")]
            if m.quantize_on_load
            else []
        ),
        value=lambda d: _get(d, "model", "quantization") if _get(d, "model", "quantize_on_load") else None,
    ),
    Row(
        ("--tokenizer",),
        "model.tokenizer",
        "",
        lambda m, g, e: (
            [A(("--tokenizer", m.tokenizer), "tokenizer from another repository")] if m.tokenizer is not None else []
        ),
    ),
    Row(
        ("--chat-template",),
        "model.chat_template",
        "",
        lambda m, g, e: (
            [A(("--chat-template", m.chat_template), "chat template instead of the tokenizer's")]
            if m.chat_template is not None
            else []
        ),
    ),
    Row(
        ("--gpu-memory-utilization",),
        "engine.gpu_memory_utilization",
        "",
        lambda m, g, e: (
            [
                A(
                    ("--gpu-memory-utilization", _num(e.gpu_memory_utilization)),
                    "share of GPU memory for weights and KV cache",
                )
            ]
            if e.gpu_memory_utilization is not None
            else []
        ),
    ),
    Row(
        ("--max-num-seqs",),
        "engine.max_num_seqs",
        "",
        lambda m, g, e: (
            [A(("--max-num-seqs", str(e.max_num_seqs)), "most sequences batched at once")]
            if e.max_num_seqs is not None
            else []
        ),
    ),
    Row(
        ("--max-num-batched-tokens",),
        "engine.max_num_batched_tokens",
        "",
        lambda m, g, e: (
            [A(("--max-num-batched-tokens", str(e.max_num_batched_tokens)), "most tokens scheduled in one step")]
            if e.max_num_batched_tokens is not None
            else []
        ),
    ),
    Row(
        ("--enable-prefix-caching", "--no-enable-prefix-caching"),
        "engine.enable_prefix_caching",
        "",
        lambda m, g, e: (
            [
                A(
                    ("--enable-prefix-caching" if e.enable_prefix_caching else "--no-enable-prefix-caching",),
                    "reuse KV cache across requests that share a prefix",
                )
            ]
            if e.enable_prefix_caching is not None
            else []
        ),
    ),
    Row(
        ("--kv-cache-dtype",),
        "engine.kv_cache_dtype",
        "",
        lambda m, g, e: (
            [A(("--kv-cache-dtype", e.kv_cache_dtype), "KV cache element type")] if e.kv_cache_dtype is not None else []
        ),
        value=lambda d: _get(d, "engine", "kv_cache_dtype"),
    ),
    Row(
        ("--enable-lora", "--lora-modules"),
        "model.lora_adapters",
        "",
        lambda m, g, e: (
            [
                A(("--enable-lora",), "serve LoRA adapters on top of the base model"),
                A(
                    ("--lora-modules", *(f"{a.name}={a.path}" for a in m.lora_adapters)),
                    "adapter name=folder; fetched at their pinned revisions before vLLM starts",
                ),
            ]
            if m.lora_adapters
            else []
        ),
    ),
    Row(
        ("--max-lora-rank",),
        "model.max_lora_rank",
        "",
        lambda m, g, e: (
            [A(("--max-lora-rank", str(m.max_lora_rank)), "largest adapter rank to load")]
            if m.lora_adapters and m.max_lora_rank is not None
            else []
        ),
    ),
    Row(
        ("--enable-sleep-mode",),
        "engine.cold_start",
        "",
        lambda m, g, e: (
            [A(("--enable-sleep-mode",), "cold_start snapshot: sleep before the GPU snapshot, wake after restore")]
            if e.cold_start == "snapshot"
            else []
        ),
    ),
    Row(
        ("--middleware",),
        None,
        "fleetform's guard middleware fences the sleep/wake endpoints",
        lambda m, g, e: (
            [
                A(
                    ("--middleware", GUARD_MIDDLEWARE),
                    "only the container itself may call the sleep/wake development endpoints",
                )
            ]
            if e.cold_start == "snapshot"
            else []
        ),
    ),
)

# Options that would break fleetform if extra_args set them, by vLLM's name for them (dest): the
# credentials, the server's binding and routing, and whatever replaces the command line wholesale.
BREAKING: dict[str, str] = {
    "api_key": "a key on the command line is visible in the process list and the rendered module: use auth.mode "
    "api_key with auth.api_key_secret (vLLM reads VLLM_API_KEY from the Secret)",
    "hf_token": "a token on the command line is visible in the process list and the rendered module: put HF_TOKEN "
    "in a Modal Secret listed under `secrets`",
    "root_path": "it rewrites the paths vLLM routes on, around fleetform's sleep/wake guard and Modal's proxy",
    "uds": "vLLM would listen on a Unix socket, which Modal's proxy cannot reach",
    "headless": "vLLM would start no API server",
    "config": "a config file can set any option, including the ones fleetform manages, unchecked",
    "ssl_keyfile": "Modal's proxy terminates TLS and talks plain HTTP to the container",
    "ssl_certfile": "Modal's proxy terminates TLS and talks plain HTTP to the container",
    "ssl_ca_certs": "Modal's proxy terminates TLS and talks plain HTTP to the container",
    "ssl_cert_reqs": "Modal's proxy terminates TLS and talks plain HTTP to the container",
    "ssl_ciphers": "Modal's proxy terminates TLS and talks plain HTTP to the container",
    "enable_ssl_refresh": "Modal's proxy terminates TLS and talks plain HTTP to the container",
}


def build_vllm_args(model: spec.Model, gpu: spec.Gpu, engine: spec.Engine) -> tuple[spec.Arg, ...]:
    """Every `vllm serve` argument a deployment implies, each with the reason it is there.

    Only what the YAML sets is passed: a knob left unset keeps vLLM's own default, so the command
    line says exactly what the deployment chose.
    """
    args = [arg for row in ARGS for arg in row.build(model, gpu, engine)]
    if engine.extra_args:
        checked = load_options(engine.vllm_version) is not None
        args.append(
            A(
                engine.extra_args,
                "engine.extra_args, "
                + (f"checked against vLLM {engine.vllm_version}'s options" if checked else "passed through unchecked"),
            )
        )
    return tuple(args)


@dataclass(frozen=True)
class Managed:
    """Why extra_args may not set an option: the field to set instead, or the reason fleetform owns it."""

    option: str  # vLLM's long name for it
    field: str | None
    reason: str

    @property
    def hint(self) -> str:
        return f"set {self.field} instead" if self.field else f"fleetform owns it: {self.reason}"


def managed_flags(options: VllmOptions) -> dict[str, Managed]:
    """Every option string of `options` that extra_args may not use, derived from `ARGS` and `BREAKING`.

    A row's flag stands for its whole vLLM option: the `--no-` form and short aliases too.
    """
    out: dict[str, Managed] = {}
    for row in ARGS:
        for flag in row.flags:
            option = options.by_flag.get(flag)
            for f in option.flags if option is not None else (flag,):
                out.setdefault(f, Managed(flag, row.field, row.why))
    for dest, reason in BREAKING.items():
        option = options.by_dest.get(dest)
        if option is not None:
            for f in option.flags:
                out.setdefault(f, Managed(option.long_name, None, reason))
    return out
