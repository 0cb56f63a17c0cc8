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

Canary rollouts: with `splits`, a deployment's canary app (`spec.canary_app_name`) becomes one more
upstream, and `SPLITS` in the module sends the split's weight (percent) of the deployment's requests
to it, drawn at random per request. The canary is the same deployment config at a new version, so
it has the deployment's auth, Modal environment, served names and, for `api_key` auth, the same key
variable (`upstream_key_env` of the deployment: one key in the gateway's upstream Secret serves
both apps, and a promoted canary needs no new Secret). Without splits the module is byte for byte
what it was before canaries existed, so a finished rollout leaves the gateway's hash as it found it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
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


def _canary_entry(live: UpstreamEntry, gateway: spec.Gateway) -> UpstreamEntry:
    """The upstream of `live`'s canary app: the same deployment config, so the same auth, key
    variable, Modal environment and served names; only the app (and so its URL) differs."""
    app = spec.canary_app_name(live.name)
    url = gateway.url_of(app, live.modal_env)
    if url and len(url.split("//", 1)[1].split(".", 1)[0]) > spec.MAX_HOST_LABEL:
        url = None  # Modal shortens a label this long: only the run-time lookup knows how
    return dataclasses.replace(live, name=app, app=app, url=url)


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
    """The gateway module's text; `filename`, `text` and `content_hash` as `RenderedApp` has them.
    `upstreams`: one a deployment (the live apps); `canaries`: one a split, the canary's upstream."""

    config: spec.Gateway
    upstreams: tuple[UpstreamEntry, ...]
    text: str
    content_hash: str
    splits: tuple[Split, ...] = ()
    canaries: tuple[UpstreamEntry, ...] = ()
    source: str = "deployments/fleet.yaml"  # the fleet.yaml it was rendered from, as the header names it

    def with_splits(self, splits: Sequence[Split]) -> RenderedGateway:
        """The same gateway with these canary splits in force instead of its own (none: the plain
        module, byte for byte). Raises ValueError for a split the gateway cannot route."""
        return _render(self.upstreams, self.config, self.source, splits)

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

    @property
    def weights(self) -> dict[str, dict[str, int]]:
        """Deployment -> upstream -> percent of its requests, as the module routes them (and as its
        `fleetform_gateway_route_weight` gauge says)."""
        out = {u.name: {u.name: 100} for u in self.upstreams}
        for s in self.splits:
            out[s.deployment] = {s.deployment: 100 - s.weight, s.canary: s.weight}
        return out


@functools.cache
def gateway_source() -> Trusted:
    return Trusted(_SOURCE.read_text(encoding="utf-8").rstrip("\n"))


def check_splits(splits: Sequence[Split], deployments: Iterable[str]) -> None:
    """Raise ValueError (one line) for a split the gateway cannot route: an unknown deployment, a weight
    outside 1..99, two splits of one deployment, or a canary app name that is a deployment's name."""
    names = set(deployments)
    seen: set[str] = set()
    for s in splits:
        if s.deployment not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"canary split for {s.deployment!r}: no such deployment behind the gateway ({known})")
        if isinstance(s.weight, bool) or not isinstance(s.weight, int) or not 1 <= s.weight <= 99:
            raise ValueError(
                f"canary split for {s.deployment!r}: weight {s.weight!r} is not a whole percent from 1 to 99"
            )
        if s.deployment in seen:
            raise ValueError(f"canary split for {s.deployment!r}: given twice")
        if s.canary in names:
            raise ValueError(f"canary split for {s.deployment!r}: its canary app {s.canary!r} is a deployment's name")
        seen.add(s.deployment)


def render_gateway(
    deployments: Iterable[spec.Deployment],
    config: spec.Gateway,
    source: str = "deployments/fleet.yaml",
    splits: Sequence[Split] = (),
) -> RenderedGateway:
    """Render the gateway module for these deployments; `resolve` has checked the gateway against them.
    `splits`: canary rollouts in progress (raises ValueError for one the gateway cannot route)."""
    return _render(upstream_entries(deployments, config), config, source, splits)


def _render(
    upstreams: Sequence[UpstreamEntry], config: spec.Gateway, source: str, splits: Sequence[Split]
) -> RenderedGateway:
    splits = tuple(sorted(splits, key=lambda s: s.deployment))
    check_splits(splits, (u.name for u in upstreams))
    live = {u.name: u for u in upstreams}
    canaries = [_canary_entry(live[s.deployment], config) for s in splits]
    routes = [(m, u.name) for u in upstreams for m in u.models]
    secrets = [config.api_key_secret]
    if any(u.auth != "none" for u in upstreams):
        secrets.append(config.upstream_secret)
    context = {
        "version": __version__,
        "source": display_source(source),
        "docstring": f"{config.name}: one OpenAI-compatible endpoint for {len(upstreams)} deployment(s), "
        f"{len(routes)} model name(s)."
        + "".join(f" Canary: {s.weight}% of {s.deployment} to {s.canary}." for s in splits),
        "g": config,
        "upstreams": upstreams,
        "canaries": canaries,
        "splits": [(s.deployment, [[s.deployment, 100 - s.weight], [s.canary, s.weight]]) for s in splits],
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
    return RenderedGateway(config, tuple(upstreams), text, digest, splits, tuple(canaries), source)
