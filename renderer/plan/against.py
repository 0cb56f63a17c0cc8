"""What changes between two versions of a fleet, field by field, and what each change does on Modal.

`fleetform plan --against REF` renders the fleet at a git revision and in the working tree and
compares them here: deployments are matched by name; a deployment whose rendered module has a
different content hash is redeployed, and its changed fields say how disruptive that is.

The restart rule, in one place (`IMPACT_RULES`, shown in docs/ci.md):

* Any change of the rendered module's content hash redeploys the app (`fleetform deploy` compares
  that hash with the live app's tag), and so does a change of Modal environment, which is chosen
  at deploy time rather than written in the module. A change that does not reach the module
  (`description`, `model.parameters_b`) deploys nothing.
* Modal treats every deploy as a new app version and moves traffic to containers of that version
  (the default rolling strategy starts them before the old ones drain). What differs between
  changes is what those containers must do:
  - `scaling`: autoscaler, concurrency, start-up and routing settings. Modal applies them itself;
    the image is unchanged (no build) and the server inside the container is the same, so new
    containers start as any cold start does, from the cached image and Volumes. The four
    autoscaler knobs could even be applied live with `Function.update_autoscaler`.
  - `restart`: the model, the GPUs, vLLM's flags and environment, Secrets, Volumes, auth, region.
    These are fixed when a container starts, so every container restarts with the new settings;
    the first may download new weights or recompile kernels.
  - `rebuild`: the image itself (`engine.vllm_version`, `image.*`): a new image is built before
    any container starts, then as `restart`.
  - `move`: the Modal environment: the app is created in the new environment; the one in the old
    environment is not touched by `deploy` (`fleetform destroy` removes it).
  A field no rule names counts as `restart`: when in doubt, expect new containers.

This module only computes: `diff_fleets` and the result's JSON document (`plan_json`,
docs/json-output.md). The CLI (`renderer.cli.plan`) drives the comparison and prints it as text,
JSON, or GitHub annotations and a Markdown summary.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from renderer.diagnostics import Diagnostic, diagnostics_json

if TYPE_CHECKING:
    from renderer.codegen.render import RenderedApp
    from renderer.config import spec


# --- the restart rule ----------------------------------------------------------------------------------

NONE, SCALING, RESTART, REBUILD, MOVE = "none", "scaling", "restart", "rebuild", "move"
IMPACT_ORDER = (NONE, SCALING, RESTART, REBUILD, MOVE)  # least disruptive first

IMPACT_SUMMARY = {
    NONE: "no redeploy: the rendered module is unchanged",
    SCALING: "redeploy without an image build; the server in the container is unchanged",
    RESTART: "new containers: same image, vLLM restarts with the new settings",
    REBUILD: "image rebuild, then new containers",
    MOVE: "a new app in another Modal environment; the old app keeps running",
}

# Actions on a deployment.
CREATE, UPDATE, REMOVE, UNCHANGED = "create", "update", "remove", "unchanged"
PENDING = (CREATE, UPDATE, REMOVE)


@dataclass(frozen=True)
class ImpactRule:
    """`field` is a field path (`engine.vllm_version`) or a section prefix ending in a dot (`image.`)."""

    field: str
    impact: str
    why: str

    def matches(self, path: str) -> bool:
        return path.startswith(self.field) if self.field.endswith(".") else path == self.field


# First match wins: specific fields before their section.
IMPACT_RULES: tuple[ImpactRule, ...] = (
    ImpactRule("description", NONE, "not rendered: a note for people"),
    ImpactRule("model.parameters_b", NONE, "not rendered: only `validate`'s memory estimate reads it"),
    ImpactRule("engine.vllm_version", REBUILD, "vLLM is installed into the image"),
    ImpactRule("image.", REBUILD, "the Python version and pip packages are image layers"),
    ImpactRule("environment", MOVE, "each Modal environment holds its own apps"),
    ImpactRule(
        "scaling.",
        SCALING,
        "Modal-side autoscaler, concurrency and start-up limits; min, max and buffer "
        "containers and the scaledown window can even be changed live "
        "(`Function.update_autoscaler`)",
    ),
    ImpactRule("routing_region", SCALING, "the Modal proxy region that routes requests, outside the container"),
    ImpactRule(
        "model.",
        RESTART,
        "vLLM's command line: a running server cannot switch weights, revision, context length or adapters",
    ),
    ImpactRule("gpu.", RESTART, "GPUs are attached when a container starts; tensor parallelism is a vLLM flag"),
    ImpactRule("engine.", RESTART, "vLLM's flags and process environment are read when it starts"),
    ImpactRule("cache.", RESTART, "Volumes are mounted when a container starts"),
    ImpactRule("secrets", RESTART, "Secrets become environment variables when a container starts"),
    ImpactRule("auth.", RESTART, "the endpoint's auth and vLLM's API key are set when a container starts"),
    ImpactRule("region", RESTART, "containers must run in the new regions"),
)
DEFAULT_IMPACT = RESTART
DEFAULT_WHY = "no rule names this field: assume new containers"


def classify(field: str) -> ImpactRule:
    """The rule for one field path (`scaling.max_containers`)."""
    for rule in IMPACT_RULES:
        if rule.matches(field):
            return rule
    return ImpactRule(field, DEFAULT_IMPACT, DEFAULT_WHY)


def worst(impacts: Iterable[str]) -> str:
    return max(impacts, key=IMPACT_ORDER.index, default=NONE)


# --- flattening a deployment into comparable fields ---------------------------------------------------------

# Not compared: identity (`name`: a rename is a removal and a creation), where it came from, and
# the vLLM command line, which is derived from fields that are compared.
_SKIP = frozenset({"name", "source", "fleet_env", "vllm_args"})
# Tuples of (key, value) pairs, compared key by key.
_MAPPINGS = frozenset({"engine.env"})
# Seconds in the spec, shown as the YAML writes them.
DURATIONS = frozenset({"scaling.scaledown_window", "scaling.startup_timeout"})
# Spec fields named apart from the YAML key that sets them: a change is shown under the YAML's name.
_YAML_NAMES = {("modal_env",): ("environment",)}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def flatten(d: spec.Deployment) -> dict[tuple[str, ...], Any]:
    """Every compared field of a resolved deployment: path -> JSON-able value, in spec order."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(obj: Any, prefix: tuple[str, ...]) -> None:
        for f in dataclasses.fields(obj):
            path = (*prefix, f.name)
            dotted = ".".join(path)
            value = getattr(obj, f.name)
            if dotted in _SKIP:
                continue
            if dotted in _MAPPINGS:
                for key, item in value:
                    out[(*path, key)] = item
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, path)
            else:
                out[_YAML_NAMES.get(path, path)] = _jsonable(value)

    walk(d, ())
    return out


# --- the diff -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    path: tuple[str, ...]
    before: Any  # None: unset
    after: Any
    impact: str
    why: str

    @property
    def field(self) -> str:
        return ".".join(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": self.before, "after": self.after, "impact": self.impact}


@dataclass(frozen=True)
class DeploymentDiff:
    name: str
    action: str  # create | update | remove | unchanged
    impact: str | None  # update/unchanged: the worst of the changes; create/remove: None
    changes: tuple[FieldChange, ...]
    before: RenderedApp | None
    after: RenderedApp | None

    @property
    def source(self) -> str:
        app = self.after or self.before
        assert app is not None
        return app.deployment.source

    def to_dict(self) -> dict[str, Any]:
        def side(app: RenderedApp | None) -> dict[str, Any] | None:
            if app is None:
                return None
            return {
                "source": app.deployment.source,
                "content_hash": app.content_hash,
                "modal_env": app.deployment.modal_env,
            }

        return {
            "name": self.name,
            "action": self.action,
            "impact": self.impact,
            "before": side(self.before),
            "after": side(self.after),
            "changes": [c.to_dict() for c in self.changes],
        }


@dataclass(frozen=True)
class FleetDiff:
    deployments: tuple[DeploymentDiff, ...]  # sorted by name

    def of(self, action: str) -> list[DeploymentDiff]:
        return [d for d in self.deployments if d.action == action]

    @property
    def pending(self) -> bool:
        """Something to deploy or destroy: what `--detailed-exitcode` reports as 2."""
        return any(d.action in PENDING for d in self.deployments)

    def counts(self) -> dict[str, int]:
        return {a: len(self.of(a)) for a in (CREATE, UPDATE, REMOVE, UNCHANGED)}


def diff_deployment(before: RenderedApp, after: RenderedApp) -> DeploymentDiff:
    """Field-by-field changes of one deployment; the content hash decides whether it redeploys."""
    old, new = flatten(before.deployment), flatten(after.deployment)
    keys = list(new) + [k for k in old if k not in new]
    rendered = before.content_hash != after.content_hash
    # The Modal environment is chosen at deploy time, not written in the module: same hash, new app.
    moved = before.deployment.modal_env != after.deployment.modal_env
    changes = []
    for path in keys:
        if old.get(path) != new.get(path):
            rule = classify(".".join(path))
            if rendered or (moved and rule.impact == MOVE):
                changes.append(FieldChange(path, old.get(path), new.get(path), rule.impact, rule.why))
            else:
                changes.append(
                    FieldChange(path, old.get(path), new.get(path), NONE, "the rendered module is unchanged")
                )
    redeploy = rendered or moved
    if rendered and not changes:
        changes.append(
            FieldChange(
                ("(rendered module)",),
                before.short_hash,
                after.short_hash,
                RESTART,
                "the rendered module differs though no compared field does",
            )
        )
    action = UPDATE if redeploy else UNCHANGED
    return DeploymentDiff(
        after.deployment.name, action, worst(c.impact for c in changes), tuple(changes), before, after
    )


def diff_fleets(before: Sequence[RenderedApp], after: Sequence[RenderedApp]) -> FleetDiff:
    """Match deployments by name: created, updated, removed, unchanged."""
    old = {a.deployment.name: a for a in before}
    new = {a.deployment.name: a for a in after}
    out = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            out.append(DeploymentDiff(name, CREATE, None, (), None, new[name]))
        elif name not in new:
            out.append(DeploymentDiff(name, REMOVE, None, (), old[name], None))
        else:
            out.append(diff_deployment(old[name], new[name]))
    return FleetDiff(tuple(out))


# --- showing values -------------------------------------------------------------------------------------------

_SHA = re.compile(r"^[0-9a-f]{40}$")
_PLAIN = re.compile(r"^[A-Za-z0-9._/:@+=-]+$")
MAX_SHOWN = 60


def duration(seconds: int) -> str:
    """900 -> "15m", 5400 -> "1h30m", 90 -> "1m30s": as the YAML would write it."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"


def show(value: Any, field: str = "") -> str:
    """One value, short: commit hashes to 7 characters, durations as `15m`, long text cut."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if field in DURATIONS and isinstance(value, int):
        return duration(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _SHA.match(value):
            return value[:7]
        text = value if _PLAIN.match(value) else json.dumps(value)
        return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def change_text(c: FieldChange) -> str:
    """`scaling.max_containers: 4 -> 8`"""
    return f"{c.field}: {show(c.before, c.field)} -> {show(c.after, c.field)}"


def remove_note(name: str) -> str:
    return f"`fleetform deploy` leaves the app running; `fleetform destroy {name}` stops it"


CREATE_NOTE = "a new app: Modal builds its image unless cached, the first container downloads the weights"


def against_text(ref: str, commit: str, fleet_env: str | None) -> str:
    return f"{ref} ({commit[:7]})" + (f", environment {fleet_env}" if fleet_env else "")


def totals_text(diff: FleetDiff) -> str:
    c = diff.counts()
    restarts = sum(1 for d in diff.of(UPDATE) if d.impact in (RESTART, REBUILD, MOVE))
    update = f"{c[UPDATE]} to update" + (f" ({restarts} with new containers)" if restarts else "")
    return f"{c[CREATE]} to create, {update}, {c[REMOVE]} to remove, {c[UNCHANGED]} unchanged"


# --- JSON -------------------------------------------------------------------------------------------------------------


def plan_json(
    diff: FleetDiff,
    ref: str,
    commit: str,
    fleet_env: str | None,
    notes: Sequence[str] = (),
    diagnostics: Sequence[Diagnostic] = (),
) -> dict[str, Any]:
    """`plan --against --format json`: documented in docs/json-output.md; fields are only ever added."""
    return {
        "ok": True,
        "against": {"ref": ref, "commit": commit},
        "fleet_env": fleet_env,
        "changes": diff.pending,
        "summary": diff.counts(),
        "deployments": [d.to_dict() for d in diff.deployments],
        "notes": list(notes),
        "diagnostics": diagnostics_json(diagnostics),
    }
