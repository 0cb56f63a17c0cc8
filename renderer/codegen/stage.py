"""A deployment -> the text of its stage module: one CPU-only Modal app that downloads the
deployment's pinned weights (and LoRA adapters) onto its Hugging Face cache Volume and verifies them,
before `deploy` starts any GPU. Pure, like `render`: objects in, text out, through the same Jinja
environment and the same `py` filter; the download and verify logic is `staging.py`, copied verbatim.

One stage module per deployment, not one per fleet: each deployment has its own Volume, Secrets,
Python version and Modal environment, a failure must fail only that deployment, and `deploy`
already works per deployment in parallel. A fleet-wide app would need every deployment's Secrets
in one container (a deployment's token would reach another's downloads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from renderer import __version__
from renderer.codegen import staging
from renderer.codegen.render import Trusted, display_source, render_module, sectioned
from renderer.config import spec

TEMPLATE = "stage.py.j2"
_STAGING = Path(staging.__file__)

# What the stage image installs instead of vLLM: the huggingface_hub the tests run staging.py with
# (a test checks the installed one is this), and hf-xet, the Hub's transfer backend it requires.
HUB_VERSION = "2.4.0"
XET_VERSION = "1.8.0"
PACKAGES = (f"huggingface_hub=={HUB_VERSION}", f"hf-xet=={XET_VERSION}")
IMAGE_ENV = {"HF_XET_HIGH_PERFORMANCE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

CPU = 4.0  # cores: hf-xet downloads and hashes chunks in parallel
MEMORY = 8192  # MiB
TIMEOUT = 4 * 3600  # seconds; Modal's limit is 24 h
APP_SUFFIX = "-stage"


def stage_app_name(deployment_name: str) -> str:
    """The name of a deployment's stage app (an ephemeral run's description, never a deployed app)."""
    return deployment_name + APP_SUFFIX


@dataclass(frozen=True)
class RenderedStage:
    deployment: spec.Deployment
    text: str
    content_hash: str

    @property
    def name(self) -> str:
        return stage_app_name(self.deployment.name)

    @property
    def filename(self) -> str:
        return f"{self.name}.py"

    @property
    def short_hash(self) -> str:
        return self.content_hash.split(":", 1)[1][:12]

    @property
    def repos(self) -> tuple[tuple[str, str], ...]:
        """(repository, revision) of everything this module stages: the model, then each adapter."""
        m = self.deployment.model
        return ((m.id, m.revision), *((a.id, a.revision) for a in m.lora_adapters))


def render_stage(d: spec.Deployment) -> RenderedStage:
    imports, text = sectioned(_STAGING).source(("stage",))
    docstring = (
        f"{stage_app_name(d.name)}: puts {d.model.id}@{d.model.revision[:7]}\n"
        f"on the Volume {d.cache.huggingface_volume} for the app {d.name}, on CPUs, before any GPU starts.\n"
    )
    context = {
        "version": __version__,
        "d": d,
        "source": display_source(d.source),
        "docstring": docstring,
        "app_name": stage_app_name(d.name),
        "lora_adapters": [a.to_runtime() for a in d.model.lora_adapters],
        "hf_cache_path": spec.HF_CACHE_PATH,
        "timeout": TIMEOUT,
        "timeout_note": f"{TIMEOUT // 3600} hours for the downloads and the check of every file",
        "packages": list(PACKAGES),
        "image_env": IMAGE_ENV,
        "cpu": CPU,
        "memory": MEMORY,
        "memory_note": "hf-xet buffers chunks in memory while it writes them to the Volume",
        "app_tags": {"managed-by": "fleetform"},
        "staging_imports": imports,
        "staging": text,
        "hash": Trusted("{hash}"),
    }
    text_out, digest = render_module(TEMPLATE, context, f"{stage_app_name(d.name)}.py", d.source, trusted=(text,))
    return RenderedStage(d, text_out, digest)
