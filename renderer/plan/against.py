"""What changes between two versions of a fleet, field by field, and what each change does on Modal.

`fleetform plan --against REF` renders the fleet at a git revision and in the working tree and
compares them here: deployments are matched by name; a deployment whose rendered module has a
different content hash is redeployed, and its changed fields say how disruptive that is.

The restart rule, in one place (`IMPACT_RULES`, shown in docs/ci.md):

* Any change of the rendered module's content hash redeploys the app (`fleetform deploy` compares
  that hash with the live app's tag), and so does a change of Modal environment, which is chosen
  at deploy time rather than written in the module. A change that does not reach the module
  (`description`, `model.parameters_b`, `rollout`) deploys nothing.
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

The fleet's gateway (fleet.yaml `gateway`) is a member of the fleet like a deployment: it is
created, updated or removed by its rendered module's content hash, and its settings and routing
table are compared field by field (`gateway.*`).

Each deployment's cost per hour (`plan.cost`: the dearest GPU that may run it, at min and max
containers) is compared too, and every change of a field that moves the cost carries its share.

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

from renderer.config.schema import format_duration
from renderer.diagnostics import Diagnostic, diagnostics_json
from renderer.plan.cost import UNBOUNDED, Cost

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
    ImpactRule("model.parameters_b", NONE, "not rendered: only the memory and cold-start estimates read it"),
    ImpactRule("rollout.", NONE, "not rendered: how `deploy` brings in the next version (direct or canary)"),
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
    ImpactRule("gateway.min_containers", SCALING, "the gateway's autoscaler: Modal applies it, no build"),
    ImpactRule("gateway.max_containers", SCALING, "the gateway's autoscaler: Modal applies it, no build"),
    ImpactRule("gateway.target_concurrency", SCALING, "the gateway's concurrency: Modal applies it, no build"),
    ImpactRule("gateway.max_concurrency", SCALING, "the gateway's concurrency: Modal applies it, no build"),
    ImpactRule(
        "gateway.",
        RESTART,
        "the gateway's routing table, upstreams, Secrets and timeouts are fixed when its container starts",
    ),
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


# --- cost ----------------------------------------------------------------------------------------------------

# The fields `plan.cost` prices a deployment by (fleet.yaml `prices` moves it too, as a whole).
COST_FIELDS = (
    ("gpu", "type"),
    ("gpu", "count"),
    ("gpu", "fallbacks"),
    ("scaling", "min_containers"),
    ("scaling", "max_containers"),
)


@dataclass(frozen=True)
class CostDelta:
    """$/hour before and after, at min and at max containers. A max of None is unbounded (no
    max_containers); a side that does not exist (create, remove) costs 0."""

    min_before: float
    min_after: float
    max_before: float | None
    max_after: float | None
    gpu_before: str | None = None  # the GPU type priced (the dearest that may run); None: no such side
    gpu_after: str | None = None

    @classmethod
    def between(cls, before: Cost | None, after: Cost | None) -> CostDelta:
        return cls(
            before.usd_per_hour_min if before else 0.0,
            after.usd_per_hour_min if after else 0.0,
            before.usd_per_hour_max if before else 0.0,
            after.usd_per_hour_max if after else 0.0,
            before.priced_gpu if before else None,
            after.priced_gpu if after else None,
        )

    @classmethod
    def total(cls, parts: Iterable[CostDelta]) -> CostDelta:
        parts = list(parts)

        def add(values: list[float | None]) -> float | None:
            return None if any(v is None for v in values) else round(sum(v or 0.0 for v in values), 4)

        return cls(
            round(sum(p.min_before for p in parts), 4),
            round(sum(p.min_after for p in parts), 4),
            add([p.max_before for p in parts]),
            add([p.max_after for p in parts]),
        )

    @property
    def delta_min(self) -> float:
        return round(self.min_after - self.min_before, 4)

    @property
    def delta_max(self) -> float | None:
        """None when either side is unbounded."""
        if self.max_before is None or self.max_after is None:
            return None
        return round(self.max_after - self.max_before, 4)

    @property
    def changed(self) -> bool:
        ceiling_moved = self.max_before != self.max_after and (self.delta_max is None or round(self.delta_max, 2) != 0)
        return round(self.delta_min, 2) != 0 or ceiling_moved

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "usd_per_hour_min": {"before": self.min_before, "after": self.min_after, "delta": self.delta_min},
            "usd_per_hour_max": {"before": self.max_before, "after": self.max_after, "delta": self.delta_max},
        }
        if self.gpu_before or self.gpu_after:
            doc["priced_gpu"] = {"before": self.gpu_before, "after": self.gpu_after}
        return doc


def _with_field(d: spec.Deployment, path: tuple[str, ...], source: spec.Deployment) -> spec.Deployment:
    """`d` with the field at `path` (`("gpu", "type")`) taken from `source`."""
    section, name = path
    part = dataclasses.replace(getattr(d, section), **{name: getattr(getattr(source, section), name)})
    return dataclasses.replace(d, **{section: part})


@dataclass(frozen=True)
class FieldChange:
    path: tuple[str, ...]
    before: Any  # None: unset
    after: Any
    impact: str
    why: str
    cost: CostDelta | None = None  # this change's share of the deployment's cost change, if it moves it

    @property
    def field(self) -> str:
        return ".".join(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "impact": self.impact,
            "cost": None if self.cost is None else self.cost.to_dict(),
        }


@dataclass(frozen=True)
class GatewayVersion:
    """The fleet's gateway on one side: its module (a `RenderedGateway`), the fleet.yaml that
    enables it, and the Modal environment it deploys to."""

    rendered: Any
    source: str
    modal_env: str | None

    @property
    def content_hash(self) -> str:
        return self.rendered.content_hash

    @property
    def short_hash(self) -> str:
        return self.rendered.short_hash


def _source(app: Any) -> str:
    return app.source if isinstance(app, GatewayVersion) else app.deployment.source


def _modal_env(app: Any) -> str | None:
    return app.modal_env if isinstance(app, GatewayVersion) else app.deployment.modal_env


DEPLOYMENT, GATEWAY = "deployment", "gateway"  # what a member of the fleet is


@dataclass(frozen=True)
class DeploymentDiff:
    name: str
    action: str  # create | update | remove | unchanged
    impact: str | None  # update/unchanged: the worst of the changes; create/remove: None
    changes: tuple[FieldChange, ...]
    before: RenderedApp | GatewayVersion | None
    after: RenderedApp | GatewayVersion | None
    cost: CostDelta | None = None  # None: the gateway (CPU only, not priced)
    kind: str = DEPLOYMENT

    @property
    def source(self) -> str:
        app = self.after or self.before
        assert app is not None
        return _source(app)

    def to_dict(self) -> dict[str, Any]:
        def side(app: Any) -> dict[str, Any] | None:
            if app is None:
                return None
            return {"source": _source(app), "content_hash": app.content_hash, "modal_env": _modal_env(app)}

        return {
            "name": self.name,
            "kind": self.kind,
            "action": self.action,
            "impact": self.impact,
            "before": side(self.before),
            "after": side(self.after),
            "changes": [c.to_dict() for c in self.changes],
            "cost": None if self.cost is None else self.cost.to_dict(),
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

    @property
    def cost(self) -> CostDelta:
        """The whole fleet's $/hour before and after (the gateway costs no GPU time)."""
        return CostDelta.total(d.cost for d in self.deployments if d.cost is not None)

    @property
    def unbounded(self) -> list[str]:
        """Deployments without a max_containers on either side: no ceiling to add up."""
        return [
            d.name
            for d in self.deployments
            if d.cost is not None and (d.cost.max_before is None or d.cost.max_after is None)
        ]

    @property
    def bounded_cost(self) -> CostDelta:
        """The fleet's cost without the unbounded deployments: a ceiling that can be compared."""
        skip = set(self.unbounded)
        return CostDelta.total(d.cost for d in self.deployments if d.cost is not None and d.name not in skip)

    def cost_dict(self) -> dict[str, Any]:
        return {**self.cost.to_dict(), "unbounded": self.unbounded}


def _cost_shares(
    before: spec.Deployment, after: spec.Deployment, changes: list[FieldChange], prices: dict[str, float]
) -> list[FieldChange]:
    """Give each change of a cost field its share of the cost change: the fields are applied one at
    a time, in schema order, to the deployment as it was (priced at the working tree's prices), so
    the shares add up to the change; what a price in fleet.yaml moves stays with the deployment."""
    current = before
    cost = Cost.of(current, prices)
    out = []
    for c in changes:
        if c.path in COST_FIELDS:
            current = _with_field(current, c.path, after)
            new_cost = Cost.of(current, prices)
            share = dataclasses.replace(CostDelta.between(cost, new_cost), gpu_before=None, gpu_after=None)
            cost = new_cost
            c = dataclasses.replace(c, cost=share) if share.changed else c
        out.append(c)
    return out


def _changes(
    old: dict[tuple[str, ...], Any], new: dict[tuple[str, ...], Any], before: Any, after: Any, moved: bool
) -> tuple[list[FieldChange], str]:
    """(every field that differs, with its impact; the action): a different content hash redeploys,
    and so does another Modal environment (`moved`), which is chosen at deploy time."""
    rendered = before.content_hash != after.content_hash
    changes = []
    for path in list(new) + [k for k in old if k not in new]:
        if old.get(path) != new.get(path):
            rule = classify(".".join(path))
            if rendered or (moved and rule.impact == MOVE):
                changes.append(FieldChange(path, old.get(path), new.get(path), rule.impact, rule.why))
            else:
                why = "the rendered module is unchanged"
                changes.append(FieldChange(path, old.get(path), new.get(path), NONE, why))
    if rendered and not changes:
        why = "the rendered module differs though no compared field does"
        changes.append(FieldChange(("(rendered module)",), before.short_hash, after.short_hash, RESTART, why))
    return changes, UPDATE if rendered or moved else UNCHANGED


def diff_deployment(
    before: RenderedApp,
    after: RenderedApp,
    before_prices: dict[str, float] | None = None,
    after_prices: dict[str, float] | None = None,
) -> DeploymentDiff:
    """Field-by-field changes of one deployment; the content hash decides whether it redeploys."""
    before_prices, after_prices = before_prices or {}, after_prices or {}
    old, new = flatten(before.deployment), flatten(after.deployment)
    # The Modal environment is chosen at deploy time, not written in the module: same hash, new app.
    changes, action = _changes(old, new, before, after, before.deployment.modal_env != after.deployment.modal_env)
    changes = _cost_shares(before.deployment, after.deployment, changes, after_prices)
    cost = CostDelta.between(Cost.of(before.deployment, before_prices), Cost.of(after.deployment, after_prices))
    return DeploymentDiff(
        after.deployment.name, action, worst(c.impact for c in changes), tuple(changes), before, after, cost
    )


def flatten_gateway(g: GatewayVersion) -> dict[tuple[str, ...], Any]:
    """The gateway's compared fields: its fleet.yaml settings, the Modal environment it deploys to,
    its routing table (served model name -> deployment) and each upstream as the module holds it."""
    out: dict[tuple[str, ...], Any] = {
        ("gateway", f.name): _jsonable(getattr(g.rendered.config, f.name))
        for f in dataclasses.fields(g.rendered.config)
        if f.name != "name"  # identity: another name is another app
    }
    out[("environment",)] = g.modal_env
    for model, deployment in sorted(g.rendered.routes.items()):
        out[("gateway", "routes", model)] = deployment
    for u in g.rendered.upstreams:
        out[("gateway", "upstreams", u.name)] = u.table
    return out


def diff_gateway(before: GatewayVersion | None, after: GatewayVersion | None) -> list[DeploymentDiff]:
    """The gateway as a member of the fleet: created or removed when fleet.yaml enables or disables
    it (or renames it: another app), updated when its module's content hash (or its Modal
    environment) changes."""
    if before is not None and after is not None and before.rendered.name != after.rendered.name:
        return [*diff_gateway(before, None), *diff_gateway(None, after)]
    if before is None and after is None:
        return []
    if before is None or after is None:
        present = after or before
        assert present is not None
        action = CREATE if before is None else REMOVE
        return [DeploymentDiff(present.rendered.name, action, None, (), before, after, None, GATEWAY)]
    changes, action = _changes(
        flatten_gateway(before), flatten_gateway(after), before, after, before.modal_env != after.modal_env
    )
    return [
        DeploymentDiff(
            after.rendered.name, action, worst(c.impact for c in changes), tuple(changes), before, after, None, GATEWAY
        )
    ]


def diff_fleets(
    before: Sequence[RenderedApp],
    after: Sequence[RenderedApp],
    *,
    before_prices: dict[str, float] | None = None,
    after_prices: dict[str, float] | None = None,
    before_gateway: GatewayVersion | None = None,
    after_gateway: GatewayVersion | None = None,
) -> FleetDiff:
    """Match deployments by name: created, updated, removed, unchanged; then the gateway, if either
    side has one. Prices: fleet.yaml's `prices` on each side (missing types at list price)."""
    before_prices, after_prices = before_prices or {}, after_prices or {}
    old = {a.deployment.name: a for a in before}
    new = {a.deployment.name: a for a in after}
    out = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            cost = CostDelta.between(None, Cost.of(new[name].deployment, after_prices))
            out.append(DeploymentDiff(name, CREATE, None, (), None, new[name], cost))
        elif name not in new:
            cost = CostDelta.between(Cost.of(old[name].deployment, before_prices), None)
            out.append(DeploymentDiff(name, REMOVE, None, (), old[name], None, cost))
        else:
            out.append(diff_deployment(old[name], new[name], before_prices, after_prices))
    out += diff_gateway(before_gateway, after_gateway)
    return FleetDiff(tuple(out))


# --- showing values -------------------------------------------------------------------------------------------

_SHA = re.compile(r"^[0-9a-f]{40}$")
_PLAIN = re.compile(r"^[A-Za-z0-9._/:@+=-]+$")
MAX_SHOWN = 60


def show(value: Any, field: str = "") -> str:
    """One value, short: commit hashes to 7 characters, durations as `15m`, long text cut."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if field in DURATIONS and isinstance(value, int):
        return format_duration(value)
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


def usd(value: float) -> str:
    return f"${abs(value) + 0.0:,.2f}"


def signed_usd(value: float) -> str:
    """`+$2.15`, `-$0.80`"""
    return ("-" if round(value, 2) < 0 else "+") + usd(value)


def per_hour(value: float | None) -> str:
    """`$7.80/h`, or `unbounded` (no max_containers)."""
    return UNBOUNDED if value is None else f"{usd(value)}/h"


def share_text(c: CostDelta) -> str:
    """One change's share of a cost change: `+$2.15/h at max`, `unbounded at max (was $7.80/h)`."""
    parts = []
    if c.max_before != c.max_after:
        if c.max_before is not None and c.max_after is not None:
            if round(c.delta_max or 0, 2) != 0:
                parts.append(f"{signed_usd(_shown_delta(c.max_before, c.max_after))}/h at max")
        else:
            parts.append(f"{per_hour(c.max_after)} at max (was {per_hour(c.max_before)})")
    if round(c.delta_min, 2) != 0:
        parts.append(f"{signed_usd(_shown_delta(c.min_before, c.min_after))}/h at min")
    return ", ".join(parts)


def _shown_delta(before: float, after: float) -> float:
    """The difference of the values as shown (to the cent), so that `$3.20 -> $6.39` reads `+$3.19`."""
    return round(after, 2) - round(before, 2)


def _one_end(before: float | None, after: float | None, delta: float | None, end: str) -> str:
    if before == after:
        return f"{per_hour(after)} at {end} (unchanged)"
    change = ""
    if before is not None and after is not None:
        change = f" ({signed_usd(_shown_delta(before, after))}/h)"
    return f"{per_hour(before)} -> {per_hour(after)} at {end}{change}"


def cost_text(c: CostDelta) -> str:
    """A deployment's or the fleet's cost: `$7.80/h -> $15.80/h at max (+$8.00/h); $0.00/h at min (unchanged)`."""
    return (
        _one_end(c.max_before, c.max_after, c.delta_max, "max")
        + "; "
        + _one_end(c.min_before, c.min_after, c.delta_min, "min")
    )


def priced_note(d: DeploymentDiff) -> str:
    """Say which GPU the cost assumes when fallbacks make it dearer than `gpu.type`."""
    if d.cost is None or d.kind != DEPLOYMENT:
        return ""
    notes = []
    for app, gpu in ((d.before, d.cost.gpu_before), (d.after, d.cost.gpu_after)):
        if app is None or gpu is None or isinstance(app, GatewayVersion):
            continue
        primary = app.deployment.gpu.type.rstrip("!")
        if gpu != primary and f"priced at {gpu}" not in " ".join(notes):
            notes.append(f"priced at {gpu}, the dearest GPU that may run it ({primary} falls back to it)")
    return "; ".join(notes)


def remove_note(name: str) -> str:
    return f"`fleetform deploy` leaves the app running; `fleetform destroy {name}` stops it"


CREATE_NOTE = "a new app: Modal builds its image unless cached, the first container downloads the weights"
GATEWAY_CREATE_NOTE = "a new app: the fleet's gateway, CPU only, routing requests by model name (no GPU cost)"


def create_note(d: DeploymentDiff) -> str:
    return GATEWAY_CREATE_NOTE if d.kind == GATEWAY else CREATE_NOTE


def change_line(c: FieldChange) -> str:
    """`gpu.type: L40S -> H100  [restart] +$7.99/h at max`"""
    share = share_text(c.cost) if c.cost is not None else ""
    return f"{change_text(c)}  [{c.impact}]" + (f" {share}" if share else "")


COST_NOTE = "GPU time only; each deployment priced at the dearest GPU that may run it, its gpu.type or a gpu.fallbacks"


def fleet_cost_text(diff: FleetDiff) -> str:
    """The fleet's cost change; deployments without max_containers are named, not added up."""
    unbounded = diff.unbounded
    if not unbounded:
        return cost_text(diff.cost)
    c = diff.bounded_cost
    at_max = _one_end(c.max_before, c.max_after, c.delta_max, "max")
    at_min = _one_end(diff.cost.min_before, diff.cost.min_after, diff.cost.delta_min, "min")
    return f"{at_max} without {', '.join(unbounded)} ({UNBOUNDED}: no max_containers); {at_min}"


def against_text(ref: str, commit: str, fleet_env: str | None) -> str:
    return f"{ref} ({commit[:7]})" + (f", environment {fleet_env}" if fleet_env else "")


def members_text(diff: FleetDiff) -> str:
    """`4 deployment(s)`, or `4 deployment(s) and the gateway`."""
    deployments = sum(d.kind == DEPLOYMENT for d in diff.deployments)
    gateway = " and the gateway" if any(d.kind == GATEWAY for d in diff.deployments) else ""
    return f"{deployments} deployment(s){gateway}"


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
        "cost": diff.cost_dict(),
        "notes": list(notes),
        "diagnostics": diagnostics_json(diagnostics),
    }
