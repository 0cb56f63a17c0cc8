"""Judging a canary: its figures against the live version's over one window of the gateway's metrics
(`judge`, `early_failure`), the line a user watches (`summary`), and what became of it (`CanaryOutcome`).
Pure: no Modal, no network; `renderer.deploy.canary` runs the rollout around it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from renderer.config import spec
from renderer.config.schema import format_duration
from renderer.deploy import traffic as gateway_traffic

# What became of a canary.
PROMOTED, NOT_PROMOTED, CANARY_FAILED, INTERRUPTED = "promoted", "not_promoted", "failed", "interrupted"


def _p90(t: gateway_traffic.Traffic, which: str) -> float | None:
    h = getattr(t, which)
    return None if h is None else h.quantile(0.9)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@dataclass(frozen=True)
class Verdict:
    """The canary against the live version over one window: promote, or the reasons not to."""

    promote: bool
    reasons: tuple[str, ...]
    live: gateway_traffic.Traffic
    canary: gateway_traffic.Traffic
    notes: tuple[str, ...] = ()  # terms that could not be judged, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "live": self.live.to_dict(),
            "canary": self.canary.to_dict(),
        }


def _error_term(live: gateway_traffic.Traffic, canary: gateway_traffic.Traffic, rule: spec.PromoteIf) -> str | None:
    live_rate = live.error_rate or 0.0
    rate = canary.error_rate
    if rate is None or rate <= live_rate + rule.error_rate_margin:
        return None
    return (
        f"error rate {_pct(rate)} ({canary.errors} of {canary.requests}) is above the live version's "
        f"{_pct(live_rate)} + the {_pct(rule.error_rate_margin)} margin"
    )


def judge(live: gateway_traffic.Traffic, canary: gateway_traffic.Traffic, rule: spec.PromoteIf) -> Verdict:
    """Every `promote_if` term, over the window's figures of the live app and of the canary.

    A latency term is judged only where both sides have answers to measure (the live version may see
    no streamed answer, say); what was not judged is noted, never counted as a pass in disguise: with
    `min_requests` reached, an unmeasurable TTFT means the canary answered nothing that was measured.
    """
    reasons, notes = [], []
    if canary.requests < rule.min_requests:
        reasons.append(
            f"only {canary.requests} request(s) reached the canary (promote_if.min_requests: {rule.min_requests}): "
            "no evidence that it works"
        )
    error = _error_term(live, canary, rule)
    if error:
        reasons.append(error)
    for label, which, ratio in (("TTFT", "ttft", rule.ttft_p90_ratio), ("TPOT", "tpot", rule.tpot_p90_ratio)):
        if ratio is None:
            continue
        theirs, ours = _p90(live, which), _p90(canary, which)
        if theirs is None or ours is None:
            side = "the live version" if theirs is None else "the canary"
            notes.append(f"{label} p90 not judged: {side} had no answer to measure it on")
            continue
        if ours > ratio * theirs:
            reasons.append(
                f"{label} p90 {ours * 1000:.0f} ms is above {ratio:g} x the live version's {theirs * 1000:.0f} ms"
            )
    return Verdict(not reasons, tuple(reasons), live, canary, tuple(notes))


def early_failure(live: gateway_traffic.Traffic, canary: gateway_traffic.Traffic, rule: spec.PromoteIf) -> str | None:
    """Why to stop a canary before its time is up: its error term already fails with `min_requests`
    (at least one) behind it. Latency is judged only at the end: early percentiles are noise."""
    if canary.requests < max(rule.min_requests, 1):
        return None
    return _error_term(live, canary, rule)


def summary(live: gateway_traffic.Traffic, canary: gateway_traffic.Traffic) -> str:
    """One line of figures: what a user watches while a canary runs."""

    def side(t: gateway_traffic.Traffic) -> str:
        ttft = _p90(t, "ttft")
        rate = "" if t.error_rate is None else f" ({_pct(t.error_rate)})"
        lat = "" if ttft is None else f", TTFT p90 {ttft * 1000:.0f} ms"
        return f"{t.requests} req, {t.errors} err{rate}{lat}"

    return f"canary {side(canary)} | live {side(live)}"


@dataclass
class CanaryOutcome:
    """How the canary of one deployment went (`DeploymentResult.canary`)."""

    app: str  # the canary's Modal app
    weight: int
    duration: int  # seconds it was to be watched
    outcome: str | None = None  # promoted | not_promoted | failed | interrupted; None: planned only
    watched_seconds: float | None = None
    verdict: Verdict | None = None
    resumed: bool = False  # the canary app a rollout left was already at this version
    stopped: bool = False  # the canary app was stopped at the end
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "weight": self.weight,
            "duration_seconds": self.duration,
            "outcome": self.outcome,
            "watched_seconds": None if self.watched_seconds is None else round(self.watched_seconds, 3),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "resumed": self.resumed,
            "stopped": self.stopped,
            "detail": self.detail,
        }


def canary_line(c: CanaryOutcome) -> str:
    """What became of one canary, in one line of the deploy report."""
    how = f"{c.app}, {c.weight}% for {format_duration(c.duration)}" + (" (resumed)" if c.resumed else "")
    if c.outcome is None:
        return f"planned: {how}"
    watched = "" if c.watched_seconds is None else f" after {format_duration(round(c.watched_seconds))}"
    text = f"{c.outcome.replace('_', ' ')}{watched} ({how})"
    if c.verdict is not None:
        text += ": " + summary(c.verdict.live, c.verdict.canary)
        if c.verdict.reasons:
            text += "; " + "; ".join(c.verdict.reasons)
        if c.verdict.notes:
            text += "; " + "; ".join(c.verdict.notes)
    return text
