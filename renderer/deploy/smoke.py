"""The smoke test `deploy` runs on each freshly deployed app: wait for /health, check /v1/models,
one short chat completion. The fleet's gateway is tested through itself: /health, then /v1/models
lists every served name of the fleet. Injectable (`SmokeTester`), so the orchestrator's tests use
a fake."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from renderer.codegen.gateway import RenderedGateway
    from renderer.codegen.render import RenderedApp

SMOKE_PROMPT = "Reply with the single word: ready."
SMOKE_MAX_TOKENS = 16
GATEWAY_KEY_VAR = "FLEETFORM_GATEWAY_API_KEY"  # what callers send the gateway (its api_key_secret defines it)
GATEWAY_HEALTH_TIMEOUT = 300.0  # seconds: a CPU-only container starts in seconds


@dataclass(frozen=True)
class SmokeOutcome:
    ok: bool
    detail: str = ""
    report: dict[str, Any] | None = None


class SmokeTester(Protocol):
    """Checks a freshly deployed app at `url`; must not raise."""

    def __call__(self, app: RenderedApp | RenderedGateway, url: str) -> SmokeOutcome: ...


class ClientSmokeTester:
    """The real smoke test, through `renderer.endpoint.client`: wait for /health (up to the deployment's
    startup timeout, to ride out the cold start), check /v1/models, one short chat completion.

    `renderer.endpoint.client` (and aiohttp under it) is imported in the methods, when a smoke test
    runs: `deploy --dry-run` and `--skip-smoke-test` load this module and never need it.
    """

    def __init__(self, environ: dict[str, str] | None = None, request_timeout: float = 120.0):
        self.environ = environ
        self.request_timeout = request_timeout

    def preflight(self, app: RenderedApp | RenderedGateway) -> str | None:
        """Why the smoke test could not even authenticate, checked before anything is deployed:
        deploying and then rolling back for want of a local token would be absurd."""
        from renderer.endpoint import client

        try:
            self._endpoint(app, "http://preflight")
        except client.ClientError as exc:
            return f"the smoke test cannot authenticate: {exc.message}"
        return None

    def _endpoint(self, app: RenderedApp | RenderedGateway, url: str) -> Any:
        from renderer.endpoint import client

        if is_gateway(app):
            return client.Endpoint.from_env(url, "api_key", self.environ, api_key_var=GATEWAY_KEY_VAR)
        return client.Endpoint.from_env(url, app.deployment.auth.mode, self.environ)

    def __call__(self, app: RenderedApp | RenderedGateway, url: str) -> SmokeOutcome:
        if is_gateway(app):
            return self._gateway(app, url)
        from renderer.endpoint import client

        d = app.deployment
        try:
            endpoint = self._endpoint(app, url)
            report = client.run_smoke(
                endpoint,
                list(expected_models(d)),
                prompts=[SMOKE_PROMPT],
                health_timeout=float(d.scaling.startup_timeout),
                request_timeout=self.request_timeout,
                max_tokens=SMOKE_MAX_TOKENS,
            )
        except client.ClientError as exc:
            return SmokeOutcome(False, exc.message)
        except Exception as exc:  # a bug must fail this smoke test, not the whole run
            return SmokeOutcome(False, f"smoke test crashed: {type(exc).__name__}: {exc}")
        if report.ok:
            return SmokeOutcome(True, "health, models and chat ok", report.to_dict())
        failed = next(s for s in report.steps if not s.ok)
        return SmokeOutcome(False, f"{failed.name}: {failed.error}", report.to_dict())

    def _gateway(self, gateway: RenderedGateway, url: str) -> SmokeOutcome:
        """The gateway answers /health and its /v1/models lists every served name of the fleet."""
        from renderer.endpoint import client

        async def models(endpoint: Any) -> list[str]:
            async with client.open_session(endpoint, limit=1) as session:
                await client.wait_for_health(endpoint, GATEWAY_HEALTH_TIMEOUT, session=session)
                return await client.list_models(session, endpoint, self.request_timeout)

        try:
            listed = asyncio.run(models(self._endpoint(gateway, url)))
        except client.ClientError as exc:
            return SmokeOutcome(False, exc.message)
        except Exception as exc:  # a bug must fail this smoke test, not the whole run
            return SmokeOutcome(False, f"smoke test crashed: {type(exc).__name__}: {exc}")
        missing = [m for m in gateway.routes if m not in listed]
        if missing:
            return SmokeOutcome(False, f"models: the gateway does not list {', '.join(missing)}")
        return SmokeOutcome(True, f"health ok; models lists all {len(gateway.routes)} served name(s)")


def is_gateway(app: Any) -> bool:
    """Whether a rendered module is the fleet's gateway (it has no deployment behind it)."""
    return not hasattr(app, "deployment")


def expected_models(d: Any) -> tuple[str, ...]:
    """Every name /v1/models must list: the served names, then any LoRA adapters' (the chat
    request uses the first served name)."""
    return tuple(getattr(d.model, "names", d.model.served_model_names))
