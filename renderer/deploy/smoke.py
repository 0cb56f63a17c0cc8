"""The smoke test `deploy` runs on each freshly deployed app: wait for /health, check /v1/models,
one short chat completion. Injectable (`SmokeTester`), so the orchestrator's tests use a fake."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from renderer.codegen.render import RenderedApp

SMOKE_PROMPT = "Reply with the single word: ready."
SMOKE_MAX_TOKENS = 16


@dataclass(frozen=True)
class SmokeOutcome:
    ok: bool
    detail: str = ""
    report: dict[str, Any] | None = None


class SmokeTester(Protocol):
    """Checks a freshly deployed app at `url`; must not raise."""

    def __call__(self, app: RenderedApp, url: str) -> SmokeOutcome: ...


class ClientSmokeTester:
    """The real smoke test, through `renderer.endpoint.client`: wait for /health (up to the deployment's
    startup timeout, to ride out the cold start), check /v1/models, one short chat completion.
    """

    def __init__(self, environ: dict[str, str] | None = None, request_timeout: float = 120.0):
        self.environ = environ
        self.request_timeout = request_timeout

    def preflight(self, app: RenderedApp) -> str | None:
        """Why the smoke test could not even authenticate, checked before anything is deployed:
        deploying and then rolling back for want of a local token would be absurd."""
        from renderer.endpoint import client

        try:
            client.auth_headers(app.deployment.auth.mode, self.environ)
        except client.ClientError as exc:
            return f"the smoke test cannot authenticate: {exc.message}"
        return None

    def __call__(self, app: RenderedApp, url: str) -> SmokeOutcome:
        from renderer.endpoint import client

        d = app.deployment
        try:
            endpoint = client.Endpoint.from_env(url, d.auth.mode, self.environ)
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


def expected_models(d: Any) -> tuple[str, ...]:
    """Every name /v1/models must list: the served names, then any LoRA adapters' (the chat
    request uses the first served name)."""
    return tuple(getattr(d.model, "names", d.model.served_model_names))
