"""The fleet's gateway: fleet.yaml `gateway` + the resolved deployments -> one Modal app module.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from renderer import __version__

from renderer.config import spec
from renderer.codegen.render import RenderError, Trusted, display_source, render_module
from renderer.config.validate import FLEET_SCHEMA, load_schema, parse_duration

TEMPLATE = "gateway.py.j2"
_SOURCE = Path(__file__).with_name("gateway_app.py")

# The gateway image's one dependency, pinned: the aiohttp release the gateway's tests run against.
AIOHTTP_REQUIREMENT = "aiohttp==3.14.5"
PYTHON_VERSION = "3.12"
CPU = 1.0  # cores: the gateway only relays bytes
MEMORY_MB = 1024
FUNCTION_NAME = "serve"
MAX_HOST_LABEL = 63  # DNS label limit; Modal shortens longer ones, which only the runtime lookup knows
UPSTREAM_KEY_PREFIX = "FLEETFORM_UPSTREAM_KEY_"


@dataclass(frozen=True)
class GatewayConfig:
    """fleet.yaml `gateway`, schema defaults applied, durations in seconds."""

    enabled: bool
    name: str
    api_key_secret: str
    upstream_secret: str
    upstream_timeout: int
    request_timeout: int
    min_containers: int
    max_containers: int | None
    target_concurrency: int
    max_concurrency: int
    workspace: str | None


def _schema_properties() -> dict[str, dict]:
    return load_schema(FLEET_SCHEMA)["properties"]["gateway"]["properties"]


def gateway_config(data: Mapping[str, Any] | None) -> GatewayConfig:
    """fleet.yaml's `gateway` mapping (already schema-checked; None when absent) -> GatewayConfig.

    Defaults come from the schema, the single place they are written.
    """
    props = _schema_properties()
    merged = {k: p.get("default") for k, p in props.items()}
    merged.update(data or {})
    merged["upstream_timeout"] = parse_duration(merged["upstream_timeout"])
    merged["request_timeout"] = parse_duration(merged["request_timeout"])
    return GatewayConfig(**merged)


def upstream_key_env(deployment_name: str) -> str:
    """The variable of the upstream Secret that holds an `api_key` deployment's key."""
    return UPSTREAM_KEY_PREFIX + deployment_name.upper().replace("-", "_")


def static_url(workspace: str, app: str, modal_environment: str | None) -> str:
    """`https://WORKSPACE--APP-serve.modal.run`; `WORKSPACE-ENV--` in an environment other than `main`."""
    prefix = workspace if modal_environment in (None, "main") else f"{workspace}-{modal_environment}"
    return f"https://{prefix}--{app}-{FUNCTION_NAME}.modal.run"


@dataclass(frozen=True)
class UpstreamEntry:
    name: str
    app: str
    environment: str | None
    auth: str
    key_env: str | None
    url: str | None
    models: tuple[str, ...]

    @property
    def table(self) -> dict[str, Any]:
        """The plain data the rendered module holds for `GatewayApp.from_table`."""
        return {"app": self.app, "environment": self.environment, "url": self.url, "auth": self.auth,
                "key_env": self.key_env}

    @property
    def note(self) -> str:
        where = self.url or "URL looked up at run time"
        return f"{len(self.models)} model name(s); {self.auth} auth; {where}"


def upstream_entries(deployments: Iterable[spec.Deployment], config: GatewayConfig) -> list[UpstreamEntry]:
    out = []
    for d in sorted(deployments, key=lambda d: d.name):
        url = static_url(config.workspace, d.name, d.environment) if config.workspace else None
        out.append(UpstreamEntry(
            name=d.name, app=d.name, environment=d.environment, auth=d.auth.mode,
            key_env=upstream_key_env(d.name) if d.auth.mode == "api_key" else None, url=url,
            models=tuple(d.model.names),
        ))
    return out


def check_gateway(deployments: Iterable[spec.Deployment], config: GatewayConfig) -> list[str]:
    """What is wrong with this gateway for this fleet, one message each (empty: nothing)."""
    deployments = list(deployments)
    problems = []
    if config.request_timeout <= config.upstream_timeout:
        problems.append(f"gateway.request_timeout ({config.request_timeout} s) must be longer than "
                        f"gateway.upstream_timeout ({config.upstream_timeout} s)")
    if config.request_timeout > 86400:
        problems.append(f"gateway.request_timeout ({config.request_timeout} s) is over Modal's 24 h limit")
    if config.max_containers is not None and config.min_containers > config.max_containers:
        problems.append(f"gateway.min_containers {config.min_containers} is above max_containers "
                        f"{config.max_containers}")
    if config.target_concurrency > config.max_concurrency:
        problems.append(f"gateway.target_concurrency {config.target_concurrency} is above max_concurrency "
                        f"{config.max_concurrency}")
    if any(d.name == config.name for d in deployments):
        problems.append(f"gateway.name {config.name!r} is also a deployment's name: pick another")
    if not deployments:
        problems.append("the gateway has no deployments to route to")
    for u in upstream_entries(deployments, config):
        if u.url and len(u.url.split("//", 1)[1].split(".", 1)[0]) > MAX_HOST_LABEL:
            problems.append(f"{u.name}: host name label of {u.url} is over {MAX_HOST_LABEL} characters, so Modal "
                            "shortens it: leave gateway.workspace unset to look URLs up at run time")
    return problems


@dataclass(frozen=True)
class RenderedGateway:
    """The gateway module's text; `filename`, `text` and `content_hash` as `RenderedApp` has them."""

    config: GatewayConfig
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


def render_gateway(deployments: Iterable[spec.Deployment], gateway: GatewayConfig | Mapping[str, Any] | None,
                   source: str = "deployments/fleet.yaml") -> RenderedGateway:
    """Render the gateway module for these deployments. Raises RenderError on a problem."""
    deployments = list(deployments)
    config = gateway if isinstance(gateway, GatewayConfig) else gateway_config(gateway)
    problems = check_gateway(deployments, config)
    if problems:
        raise RenderError("gateway: " + "; ".join(problems))
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
        "read_timeout": max(600, config.upstream_timeout),
        "gateway_source": gateway_source(),
        "hash": Trusted("{hash}"),
    }
    text, digest = render_module(TEMPLATE, context, f"{config.name}.py", "gateway")
    return RenderedGateway(config, tuple(upstreams), text, digest)
