"""The fleet's gateway: `spec.Gateway` (resolved from fleet.yaml) + the deployments -> one Modal app module.

The module serves `gateway_app.GatewayApp` (embedded verbatim, as `runtime.py` is in app modules)
from a CPU-only `@app.function` with `@modal.asgi_app()`. Its routing table is fixed at render
time: every served model name (and LoRA adapter name) of every deployment, mapped to that
deployment. Rendering goes through the same Jinja environment as the app modules, so every value
passes the `py` literal filter and a name can only ever become a string constant.

Upstream URLs: a deployment's `@app.server(name="serve")` answers at
`https://WORKSPACE--APP-serve.modal.run` (`WORKSPACE-ENV--...` in a Modal environment other than
the default). With `gateway.workspace` set, that URL is written into the module; without it (the
default), the gateway asks Modal at run time, on each deployment's first request, with
`modal.Server.from_name(APP, "serve", environment_name=ENV).get_url()`, which also knows how Modal
shortens host names over 63 characters.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from renderer import __version__
from renderer.codegen.render import Trusted, display_source, render_module
from renderer.config import spec
from renderer.config.spec import upstream_key_env

TEMPLATE = "gateway.py.j2"
_SOURCE = Path(__file__).with_name("gateway_app.py")

# The gateway image's one dependency, pinned: the aiohttp release the gateway's tests run against.
AIOHTTP_REQUIREMENT = "aiohttp==3.14.5"
PYTHON_VERSION = "3.12"
# Cores: one Python event loop uses one; more containers (target_concurrency), not more cores, carry
# more streams. About 35 us of CPU a relayed event (benchmarks/gateway_load.py): 250 streams at 50
# tokens/s keep this core under half busy.
CPU = 1.0
MEMORY_MB = 1024


@dataclass(frozen=True)
class UpstreamEntry:
    name: str
    app: str
    modal_env: str | None
    auth: str
    key_env: str | None
    url: str | None
    models: tuple[str, ...]

    @property
    def table(self) -> dict[str, Any]:
        """The plain data the rendered module holds for `GatewayApp.from_table`."""
        return {
            "app": self.app,
            "modal_env": self.modal_env,
            "url": self.url,
            "auth": self.auth,
            "key_env": self.key_env,
        }

    @property
    def note(self) -> str:
        where = self.url or "URL looked up at run time"
        return f"{len(self.models)} model name(s); {self.auth} auth; {where}"


def upstream_entries(deployments: Iterable[spec.Deployment], gateway: spec.Gateway) -> list[UpstreamEntry]:
    out = []
    for d in sorted(deployments, key=lambda d: d.name):
        out.append(
            UpstreamEntry(
                name=d.name,
                app=d.name,
                modal_env=d.modal_env,
                auth=d.auth.mode,
                key_env=upstream_key_env(d.name) if d.auth.mode == "api_key" else None,
                url=gateway.url_of(d.name, d.modal_env),
                models=tuple(d.model.names),
            )
        )
    return out


@dataclass(frozen=True)
class Split:
    """A canary rollout in progress: `weight` percent of `deployment`'s traffic goes to its canary app
    (`spec.canary_app_name(deployment)`), the rest to the live app."""

    deployment: str
    weight: int  # 1..99

    @property
    def canary(self) -> str:
        return spec.canary_app_name(self.deployment)


@dataclass(frozen=True)
class RenderedGateway:
    """The gateway module's text; `filename`, `text` and `content_hash` as `RenderedApp` has them."""

    config: spec.Gateway
    upstreams: tuple[UpstreamEntry, ...]
    text: str
    content_hash: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def filename(self) -> str:
        return f"{self.config.name}.py"

    @property
    def short_hash(self) -> str:
        return self.content_hash.split(":", 1)[1][:12]

    @property
    def routes(self) -> dict[str, str]:
        return {m: u.name for u in self.upstreams for m in u.models}


@functools.cache
def gateway_source() -> Trusted:
    return Trusted(_SOURCE.read_text(encoding="utf-8").rstrip("\n"))


def render_gateway(
    deployments: Iterable[spec.Deployment], config: spec.Gateway, source: str = "deployments/fleet.yaml"
) -> RenderedGateway:
    """Render the gateway module for these deployments; `resolve` has checked the gateway against them."""
    deployments = list(deployments)
    upstreams = upstream_entries(deployments, config)
    routes = [(m, u.name) for u in upstreams for m in u.models]
    secrets = [config.api_key_secret]
    if any(u.auth != "none" for u in upstreams):
        secrets.append(config.upstream_secret)
    context = {
        "version": __version__,
        "source": display_source(source),
        "docstring": f"{config.name}: one OpenAI-compatible endpoint for {len(upstreams)} deployment(s), "
        f"{len(routes)} model name(s).",
        "g": config,
        "upstreams": upstreams,
        "routes": routes,
        "secrets": secrets,
        "python_version": PYTHON_VERSION,
        "aiohttp": AIOHTTP_REQUIREMENT,
        "cpu": CPU,
        "memory": MEMORY_MB,
        "app_tags": {"managed-by": "fleetform"},
        "gateway_source": gateway_source(),
        "hash": Trusted("{hash}"),
    }
    text, digest = render_module(TEMPLATE, context, f"{config.name}.py", "gateway")
    return RenderedGateway(config, tuple(upstreams), text, digest)
