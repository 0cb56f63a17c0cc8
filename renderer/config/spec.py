"""The typed, fully resolved form of a deployment: what `resolve` produces and later stages read.

Every field here has already been merged (fleet defaults, environment overlays, schema defaults)
and validated; objects are frozen, so no later stage can change what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the cache Volumes are mounted in the container (as in Modal's vLLM example).
HF_CACHE_PATH = "/root/.cache/huggingface"
VLLM_CACHE_PATH = "/root/.cache/vllm"

# Where LoRA adapters are fetched to (on the Hugging Face cache Volume), one folder per adapter.
LORA_ROOT = HF_CACHE_PATH + "/fleetform-lora"

# The executable that the rendered app runs; `fleetform serve --local --vllm ...` can replace it.
VLLM_EXECUTABLE: tuple[str, ...] = ("vllm", "serve")


@dataclass(frozen=True)
class Arg:
    """One group of vLLM command-line tokens, and why it is there (rendered as a comment)."""

    tokens: tuple[str, ...]
    why: str
    # For each token, the name of the rendered module's constant that holds its value (None: the
    # token is written as a literal), so that VLLM_COMMAND reads `MODEL_ID`, not the id again.
    # Empty: every token is a literal.
    names: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class LoraAdapter:
    name: str
    id: str
    revision: str

    @property
    def path(self) -> str:
        """Where the container keeps this adapter's pinned files (vLLM's `--lora-modules` path)."""
        return f"{LORA_ROOT}/{self.name}-{self.revision[:12]}"

    def to_runtime(self) -> dict[str, str]:
        return {"name": self.name, "id": self.id, "revision": self.revision, "path": self.path}


@dataclass(frozen=True)
class Model:
    id: str
    revision: str
    served_model_names: tuple[str, ...]
    quantization: str
    quantize_on_load: bool
    dtype: str | None
    max_model_len: int | None
    tokenizer: str | None
    chat_template: str | None
    parameters_b: float | None
    lora_adapters: tuple[LoraAdapter, ...] = ()
    max_lora_rank: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request's `model` may carry: the served names, then the adapters'."""
        return self.served_model_names + tuple(a.name for a in self.lora_adapters)


@dataclass(frozen=True)
class Gpu:
    type: str  # as written, possibly with "!"
    count: int
    fallbacks: tuple[str, ...]
    tensor_parallel_size: int

    @property
    def modal_gpu(self) -> str | list[str]:
        """What `@app.server(gpu=...)` takes: "H100", "H100:2", or a ranked list with fallbacks."""
        specs = [t if self.count == 1 else f"{t}:{self.count}" for t in (self.type, *self.fallbacks)]
        return specs[0] if len(specs) == 1 else specs


@dataclass(frozen=True)
class Scaling:
    min_containers: int
    max_containers: int | None
    buffer_containers: int
    scaledown_window: int  # seconds
    target_concurrency: int | float
    max_concurrency: int | None
    startup_timeout: int  # seconds


@dataclass(frozen=True)
class Engine:
    vllm_version: str
    fast_boot: bool
    cold_start: str  # standard | snapshot
    port: int
    gpu_memory_utilization: float | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    enable_prefix_caching: bool | None
    kv_cache_dtype: str | None
    extra_args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # sorted (name, value) pairs


@dataclass(frozen=True)
class Image:
    python_version: str
    pip: tuple[str, ...]


@dataclass(frozen=True)
class Cache:
    huggingface_volume: str
    vllm_volume: str


@dataclass(frozen=True)
class Auth:
    mode: str  # proxy | api_key | none
    api_key_secret: str | None


@dataclass(frozen=True)
class PromoteIf:
    """`rollout.promote_if`: what a canary must show against the live version to be promoted."""

    error_rate_margin: float = 0.01  # canary error rate <= live error rate + this
    ttft_p90_ratio: float = 1.2  # canary TTFT p90 <= this x live TTFT p90
    tpot_p90_ratio: float | None = None  # the same for TPOT; None: not judged
    min_requests: int = 20  # fewer canary requests in the window: not promoted


@dataclass(frozen=True)
class Rollout:
    """`rollout`: how `deploy` replaces the live version. A deploy-time setting, never rendered."""

    strategy: str = "direct"  # direct | canary
    weight: int = 10  # percent of the deployment's requests to the canary
    duration: int = 600  # seconds the canary is watched
    promote_if: PromoteIf = PromoteIf()

    @property
    def canary(self) -> bool:
        return self.strategy == "canary"


@dataclass(frozen=True)
class Deployment:
    name: str
    description: str | None
    source: str  # the YAML file it came from, as named on the command line
    fleet_env: str | None  # the fleet environment (`--env`) it was resolved for
    model: Model
    gpu: Gpu
    scaling: Scaling
    engine: Engine
    image: Image
    cache: Cache
    secrets: tuple[str, ...]  # Modal Secret names, including auth.api_key_secret
    auth: Auth
    region: tuple[str, ...] | None
    routing_region: str
    modal_env: str | None  # the Modal environment it deploys to
    vllm_args: tuple[Arg, ...]  # after the executable; see `argv`
    rollout: Rollout = Rollout()

    @property
    def argv(self) -> tuple[str, ...]:
        """The whole `vllm serve` command line, as the rendered app runs it."""
        return VLLM_EXECUTABLE + tuple(t for a in self.vllm_args for t in a.tokens)

    @property
    def snapshot(self) -> bool:
        return self.engine.cold_start == "snapshot"

    @property
    def process_env(self) -> dict[str, str]:
        """Environment of the vLLM process, on Modal and in `serve --local` alike."""
        env = dict(self.engine.env)
        if self.snapshot:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # exposes /sleep and /wake_up; runtime's guard fences them
        return env

    @property
    def pip_packages(self) -> tuple[str, ...]:
        return (f"vllm=={self.engine.vllm_version}", *self.image.pip)


# --- the gateway ------------------------------------------------------------------------------------

GATEWAY_FUNCTION_NAME = "serve"  # the function of every app, deployments' and the gateway's alike
MAX_HOST_LABEL = 63  # DNS label limit; Modal shortens longer ones, which only the runtime lookup knows
MAX_REQUEST_TIMEOUT = 86400  # Modal's longest function timeout: 24 h
UPSTREAM_KEY_PREFIX = "FLEETFORM_UPSTREAM_KEY_"
CANARY_SUFFIX = "-canary"  # a deployment's canary runs as its own app beside the live one


def canary_app_name(deployment_name: str) -> str:
    """The Modal app a canary of `deployment_name` runs as while a rollout is in progress."""
    return deployment_name + CANARY_SUFFIX


def upstream_key_env(deployment_name: str) -> str:
    """The variable of the gateway's upstream Secret that holds an `api_key` deployment's key."""
    return UPSTREAM_KEY_PREFIX + deployment_name.upper().replace("-", "_")


def static_url(workspace: str, app: str, modal_environment: str | None) -> str:
    """`https://WORKSPACE--APP-serve.modal.run`; `WORKSPACE-ENV--` in an environment other than `main`."""
    prefix = workspace if modal_environment in (None, "main") else f"{workspace}-{modal_environment}"
    return f"https://{prefix}--{app}-{GATEWAY_FUNCTION_NAME}.modal.run"


@dataclass(frozen=True)
class Gateway:
    """fleet.yaml `gateway`, when enabled: schema defaults applied, durations in seconds, checked
    against the fleet it routes to."""

    name: str  # the Modal app name, and its module's file name
    api_key_secret: str  # Modal Secret with FLEETFORM_GATEWAY_API_KEY
    upstream_secret: str  # Modal Secret with the gateway's credentials for the deployments
    upstream_timeout: int  # seconds a request waits for a cold deployment
    request_timeout: int  # seconds, the function's timeout
    min_containers: int
    max_containers: int | None
    target_concurrency: int
    max_concurrency: int
    workspace: str | None  # None: upstream URLs are looked up at run time
    cors_origins: tuple[str, ...] = ()  # browser origins allowed (`*`: any); empty: no CORS

    def url_of(self, app: str, modal_environment: str | None) -> str | None:
        """A deployment's URL written at render time (None: looked up at run time, no workspace set)."""
        return static_url(self.workspace, app, modal_environment) if self.workspace else None
