"""Stage 3: fleet defaults + environment overlays + deployment -> frozen, typed `Deployment`s.

Every run checks the fleet in every configuration: without `--env` and in each environment
fleet.yaml declares, whichever one `--env` picks, so a fleet that `validate` passes deploys in any
of them. Each problem is reported once: at its own line, naming the environments it breaks (unless
it breaks all) and, when the line is fleet.yaml's, the deployments. Required fields are checked on
the merged tree, so fleet.yaml `defaults` (or every environment) may supply them. Literal
credentials are looked for once per file, before anything is merged (`credentials.py`).

Layers, lowest first (maps merge, scalars and lists replace):

    schema defaults < fleet.yaml `defaults` < the deployment file
                    < fleet.yaml `environments.ENV.overrides` < the deployment's own `environments.ENV`
                    < values given on the command line for one deployment (`Overlay`: `tune --engine`)

(what an environment says beats what holds everywhere; what one deployment says beats what the
whole fleet says at the same level),

then `environments.ENV.modal_environment` picks the Modal environment. The merged tree keeps each
value's origin, so a problem a default causes is reported where the default was written. The vLLM
command line is built here, once; the renderer and `fleetform serve --local` only read it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from renderer.config import spec
from renderer.config.credentials import find_credentials
from renderer.config.load import Document, LoadedFleet, Node
from renderer.config.rules import (
    Claim,
    RuleContext,
    canary_names,
    canary_without_gateway,
    check_rules,
    undeclared_environments,
    unique_across_fleet,
)
from renderer.config.schema import (
    DEPLOYMENT_SCHEMA,
    FLEET_SCHEMA,
    gateway_defaults,
    load_schema,
    parse_duration,
    schema_defaults,
    validator,
)
from renderer.config.validate import _schema_error_diags, check_schema
from renderer.config.vllm_args import build_vllm_args
from renderer.diagnostics import Diagnostic, Mark, Severity, did_you_mean, format_path


class UnknownEnvironment(Exception):
    """`--env NAME` names no environment of fleet.yaml: a usage error, not a file error."""

    def __init__(self, name: str, declared: list[str]):
        hint = did_you_mean(name, declared)
        known = ", ".join(declared) if declared else "none (add `environments:` to fleet.yaml)"
        super().__init__(f"unknown environment {name!r}; fleet.yaml declares: {known}" + (f"; {hint}" if hint else ""))


class Origins(Mapping[str, dict]):
    """Deployment name -> where each of its values was written: path -> (value, mark). Worked out
    from the merged tree when first asked for (`explain` and plan annotations ask; plan and deploy
    never do). Lists count as one value, as they replace rather than merge."""

    def __init__(self, trees: dict[str, Node]):
        self._trees = trees
        self._made: dict[str, dict[tuple, tuple[Any, Mark]]] = {}

    def __getitem__(self, name: str) -> dict[tuple, tuple[Any, Mark]]:
        if name not in self._made:
            self._made[name] = {
                p: (n.plain(), n.mark)
                for p, n in self._trees[name].walk()
                if p and not any(isinstance(x, int) for x in p) and not (isinstance(n.value, dict) and n.value)
            }
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._trees)

    def __len__(self) -> int:
        return len(self._trees)


@dataclass(frozen=True)
class ResolvedFleet:
    deployments: tuple[spec.Deployment, ...]
    diagnostics: tuple[Diagnostic, ...]
    fleet_env: str | None  # the fleet environment (`--env`) the deployments are resolved for
    prices: dict[str, float]
    # deployment name -> every value of its merged (pre-default) tree: path -> (value, where it was written)
    origins: Mapping[str, dict[tuple, tuple[Any, Mark]]] = field(default_factory=dict)
    # fleet.yaml's `gateway` when it is enabled (None: absent or disabled); render and plan render it
    gateway: spec.Gateway | None = None
    fleet_file: str | None = None  # fleet.yaml's path as named, for the gateway module's header
    # the Modal environment the fleet environment selects (its `modal_environment`): where rollback,
    # destroy and status look for an app that no deployment file names
    modal_env: str | None = None
    declared_environments: tuple[str, ...] = ()  # every environment fleet.yaml declares
    # the files it was resolved from: resolving them for another environment reuses this run's checks
    loaded: LoadedFleet | None = field(default=None, repr=False, compare=False)

    def explain(self, name: str) -> list[tuple[tuple, Any, Mark | None]]:
        """Every leaf field of a resolved deployment: (path, value, where it was written; None: schema default)."""
        written = self.origins[name]
        full = _deep_merge(schema_defaults(), _unflatten(written))
        full.pop("environments", None)  # overlays are already applied above
        order = list(load_schema(DEPLOYMENT_SCHEMA)["properties"])
        rows = [(path, value, written[path][1] if path in written else None) for path, value in _leaves(full)]
        return sorted(rows, key=lambda r: (order.index(r[0][0]) if r[0][0] in order else len(order), r[0]))

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


# --- merging -----------------------------------------------------------------------------------


def merge(base: Node | None, over: Node | None) -> Node | None:
    """Overlay `over` on `base`: mappings merge key by key, everything else is replaced."""
    if over is None:
        return base
    if base is None or not (isinstance(base.value, dict) and isinstance(over.value, dict)):
        return over
    value = dict(base.value)
    marks = dict(base.key_marks or {})
    for key, node in over.value.items():
        value[key] = merge(value.get(key), node)
        if over.key_marks and key in over.key_marks:
            marks[key] = over.key_marks[key]
    return Node(value, over.mark, marks)


def _child(node: Node | None, *path: str) -> Node | None:
    for p in path:
        if node is None or not isinstance(node.value, dict):
            return None
        node = node.value.get(p)
    return node


def _without(node: Node, key: str) -> Node:
    value = {k: v for k, v in node.value.items() if k != key}
    marks = {k: m for k, m in (node.key_marks or {}).items() if k != key}
    return Node(value, node.mark, marks)


def _unflatten(leaves: dict[tuple, tuple[Any, Mark]]) -> dict:
    out: dict = {}
    for path, (value, _) in leaves.items():
        cur = out
        for part in path[:-1]:
            cur = cur.setdefault(part, {})
        cur[path[-1]] = value
    return out


def _leaves(data: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Scalars and lists of a nested dict, depth first; a list counts as one value."""
    if isinstance(data, dict) and data:
        for k, v in data.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- building typed objects ----------------------------------------------------------------------------


def _build(data: dict, source: str, fleet_env: str | None) -> spec.Deployment:
    d = _deep_merge(schema_defaults(), data)
    m, g, s, e = d["model"], d["gpu"], d["scaling"], d["engine"]
    model = spec.Model(
        id=m["id"],
        revision=m["revision"],
        served_model_names=tuple(m.get("served_model_names") or [m["id"]]),
        quantization=m["quantization"],
        quantize_on_load=m["quantize_on_load"],
        dtype=m.get("dtype"),
        max_model_len=m.get("max_model_len"),
        tokenizer=m.get("tokenizer"),
        chat_template=m.get("chat_template"),
        parameters_b=m.get("parameters_b"),
        lora_adapters=tuple(spec.LoraAdapter(a["name"], a["id"], a["revision"]) for a in m["lora_adapters"]),
        max_lora_rank=m.get("max_lora_rank"),
    )
    gpu = spec.Gpu(
        type=g["type"],
        count=g["count"],
        fallbacks=tuple(g["fallbacks"]),
        tensor_parallel_size=g.get("tensor_parallel_size") or g["count"],
    )
    scaling = spec.Scaling(
        min_containers=s["min_containers"],
        max_containers=s.get("max_containers"),
        buffer_containers=s["buffer_containers"],
        scaledown_window=parse_duration(s["scaledown_window"]),
        target_concurrency=s["target_concurrency"],
        max_concurrency=s.get("max_concurrency"),
        startup_timeout=parse_duration(s["startup_timeout"]),
    )
    engine = spec.Engine(
        vllm_version=e["vllm_version"],
        fast_boot=e["fast_boot"],
        cold_start=e["cold_start"],
        port=e["port"],
        gpu_memory_utilization=e.get("gpu_memory_utilization"),
        max_num_seqs=e.get("max_num_seqs"),
        max_num_batched_tokens=e.get("max_num_batched_tokens"),
        enable_prefix_caching=e.get("enable_prefix_caching"),
        kv_cache_dtype=e.get("kv_cache_dtype"),
        extra_args=tuple(e["extra_args"]),
        env=tuple(sorted(e["env"].items())),
    )
    auth = spec.Auth(mode=d["auth"]["mode"], api_key_secret=d["auth"].get("api_key_secret"))
    secrets = list(d["secrets"])
    if auth.mode == "api_key" and auth.api_key_secret not in secrets:
        secrets.append(auth.api_key_secret)
    region = d.get("region")
    r, promote = d["rollout"], d["rollout"]["promote_if"]
    rollout = spec.Rollout(
        strategy=r["strategy"],
        weight=r["weight"],
        duration=parse_duration(r["duration"]),
        promote_if=spec.PromoteIf(
            error_rate_margin=promote["error_rate_margin"],
            ttft_p90_ratio=promote["ttft_p90_ratio"],
            tpot_p90_ratio=promote.get("tpot_p90_ratio"),
            min_requests=promote["min_requests"],
        ),
    )
    return spec.Deployment(
        name=d["name"],
        description=d.get("description"),
        source=source,
        fleet_env=fleet_env,
        model=model,
        gpu=gpu,
        scaling=scaling,
        engine=engine,
        image=spec.Image(python_version=d["image"]["python_version"], pip=tuple(d["image"]["pip"])),
        cache=spec.Cache(huggingface_volume=d["cache"]["huggingface_volume"], vllm_volume=d["cache"]["vllm_volume"]),
        secrets=tuple(secrets),
        auth=auth,
        region=None if region is None else (region,) if isinstance(region, str) else tuple(region),
        routing_region=d["routing_region"],
        modal_env=d.get("environment"),
        vllm_args=build_vllm_args(model, gpu, engine),
        rollout=rollout,
    )


# --- checking the merged trees --------------------------------------------------------------------


@functools.cache
def _top_level_validator() -> Any:
    """The deployment schema's own keywords (required fields, unknown keys), not its sections'."""
    from jsonschema import Draft202012Validator

    schema = load_schema(DEPLOYMENT_SCHEMA)
    return Draft202012Validator({**schema, "properties": {k: True for k in schema["properties"]}})


@functools.cache
def _section_validator(key: str) -> Any:
    """The validator of one top-level field (`model`, `scaling`...), `$ref`s resolved in the deployment schema."""
    return validator(DEPLOYMENT_SCHEMA).evolve(schema=load_schema(DEPLOYMENT_SCHEMA)["properties"][key])


class _SchemaChecker:
    """The deployment schema, applied section by section, each section's result kept for its node.

    Merging keeps every node no overlay touches (`merge` returns it as is), so the trees of one
    deployment in several environments, its file, and many deployments that inherit one section
    from fleet.yaml share most sections: each is checked once. The deployment schema has nothing at
    the top but `type`, `required` and `additionalProperties` (a test holds it to that), so this
    finds exactly what one whole-tree validation finds.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[int, str], tuple[Node, list[Diagnostic]]] = {}
        self._sections = load_schema(DEPLOYMENT_SCHEMA)["properties"]
        self._clean: set[tuple[str, str]] = set()

    def check_file(self, doc: Document) -> list[Diagnostic]:
        """A whole file at once (the quickest way to check every section), each section's share kept."""
        found = check_schema(doc, DEPLOYMENT_SCHEMA)
        tree = doc.root
        for key, node in tree.value.items():
            if key in self._sections:
                self._done[(id(node), key)] = (node, [d for d in found if d.path[:1] == (key,)])
        return found

    def check(self, tree: Node) -> list[Diagnostic]:
        """A merged tree: only the sections not seen before are validated."""
        shape = {k: None for k in tree.value}  # the top level's keywords only look at the keys
        out = [
            d
            for err in _top_level_validator().iter_errors(shape)
            for d in _schema_error_diags(err, tree, DEPLOYMENT_SCHEMA, ())
        ]
        for key, node in tree.value.items():
            if key not in self._sections:
                continue
            hit = self._done.get((id(node), key))
            if hit is None or hit[0] is not node:
                plain = node.plain()
                content = (key, repr(plain))  # a value found clean once is clean wherever it was written
                found = []
                if content not in self._clean:
                    for err in _section_validator(key).iter_errors(plain):
                        err.relative_path.appendleft(key)  # as the whole tree's validation would place it
                        found.extend(_schema_error_diags(err, tree, DEPLOYMENT_SCHEMA, ()))
                    if not found:
                        self._clean.add(content)
                hit = self._done[(id(node), key)] = (node, found)
            out.extend(hit[1])
        return out


def _at_file(diag: Diagnostic, doc: Document) -> Diagnostic:
    """A missing field is missing from the deployment file: point there, not at whichever overlay
    happened to be merged last."""
    return replace(diag, mark=doc.root.find(diag.path)[1])


# --- one problem, the deployments and environments it breaks --------------------------------------------

BASE = None  # the configuration without `--env`
_SHOWN_NAMES = 5


def _environments_phrase(configs: list[str | None]) -> str:
    names = sorted(c for c in configs if c is not None)
    parts = []
    if names:
        parts.append(("environment " if len(names) == 1 else "environments ") + ", ".join(names))
    if BASE in configs:
        parts.append("without --env")
    return " and ".join(parts)


def _names_phrase(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_NAMES])
    more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    return ("deployment " if len(names) == 1 else "deployments ") + shown + more


class _Findings:
    """Diagnostics found in several trees (one per deployment and environment), reported once each.

    A problem at a deployment's own line names the environments it appears in, unless it appears
    in all of them; a problem at a line of fleet.yaml also names the deployments it breaks.
    """

    def __init__(self, configs: list[str | None]):
        self.configs = configs
        self._seen: dict[Diagnostic, dict[str | None, list[str | None]]] = {}  # diag -> deployment -> configs
        self._own: dict[Diagnostic, bool] = {}

    def add(self, diag: Diagnostic, deployment: str | None, config: str | None, own_file: str | None) -> None:
        per = self._seen.setdefault(diag, {})
        configs = per.setdefault(deployment, [])
        if config not in configs:
            configs.append(config)
        self._own.setdefault(diag, diag.mark.file == own_file)

    def diagnostics(self) -> list[Diagnostic]:
        out = []
        for diag, per in self._seen.items():
            # deployments grouped by the environments the problem breaks them in
            groups: dict[tuple, list[str]] = {}
            for deployment, configs in per.items():
                key = tuple(c for c in self.configs if c in configs)
                groups.setdefault(key, []).append(deployment or "")
            notes: list[str] = []
            for configs, names in groups.items():
                envs = "" if len(configs) == len(self.configs) else _environments_phrase(list(configs))
                named = [n for n in names if n]
                if self._own[diag] or not named:
                    if envs:
                        notes.append(f"in {envs}")
                else:
                    verb = ("breaks " if diag.is_error else "for ") if not notes else ""
                    notes.append(f"{verb}{_names_phrase(sorted(named))}" + (f" in {envs}" if envs else ""))
            out.append(replace(diag, message=f"{diag.message} ({'; '.join(notes)})") if notes else diag)
        return out


# --- the stage ---------------------------------------------------------------------------------------


@dataclass
class _Checked:
    """What `resolve` finds for every environment at once; `resolve(loaded, env)` picks one from it."""

    diagnostics: list[Diagnostic]
    declared: list[str]
    prices: dict[str, float]
    fleet: Document | None
    fleet_ok: bool
    # per configuration (None: no --env), the deployments that check clean: (document, merged tree)
    clean: dict[str | None, list[tuple[Document, Node]]]
    environment_only: list[tuple[Document, list[str]]]  # complete only with --env: (document, missing fields)
    gateway: spec.Gateway | None


@dataclass(frozen=True)
class Overlay:
    """Values given on the command line for one deployment (`fleetform tune --engine max_num_seqs=64`):
    the top layer, over its environments, checked as if the deployment file said them. `root` is a
    tree from `load.load_option`, whose marks name the option, so a problem with a value points there."""

    deployment: str
    root: Node


_last: tuple[LoadedFleet, Overlay | None, _Checked] | None = None


def _overlays(fleet: Document | None, env: str | None) -> tuple[Node | None, Node | None]:
    """(overrides, modal_environment) of fleet environment `env`."""
    if env is None or fleet is None:
        return None, None
    entry = _child(fleet.root, "environments", env)
    return _child(entry, "overrides"), _child(entry, "modal_environment")


def _deployment_name(doc: Document) -> str:
    name = doc.root.value.get("name")
    return name.value if name is not None and isinstance(name.value, str) else doc.path


def _check(loaded: LoadedFleet, overlay: Overlay | None = None) -> _Checked:
    """Check the fleet in every configuration: without `--env` and in each declared environment."""
    diags: list[Diagnostic] = [*loaded.diagnostics, *loaded.warnings]
    fleet = loaded.fleet
    # a fleet.yaml that does not load is not "no fleet.yaml": what depends on it is left unchecked
    fleet_ok = fleet is not None or loaded.fleet_path is None
    declared: list[str] = []
    prices: dict[str, float] = {}
    secret_marks: set[Mark] = set()  # where a literal credential was found: no second error there
    if fleet is not None:
        fleet_schema = check_schema(fleet, FLEET_SCHEMA)
        diags.extend(fleet_schema)
        fleet_credentials = find_credentials(fleet)
        secret_marks.update(d.mark for d in fleet_credentials)
        diags.extend(fleet_credentials)
        fleet_ok = not any(d.is_error for d in fleet_schema)
        if fleet_ok:
            data = fleet.data
            declared = sorted((data.get("environments") or {}).keys())
            prices = dict(data.get("prices") or {})
    configs: list[str | None] = [BASE, *declared]
    defaults = _child(fleet.root, "defaults") if fleet is not None and fleet_ok else None
    overlays = {c: _overlays(fleet if fleet_ok else None, c) for c in configs}
    findings = _Findings(configs)
    schema = _SchemaChecker()
    clean: dict[str | None, list[tuple[Document, Node]]] = {c: [] for c in configs}
    environment_only: list[tuple[Document, list[str]]] = []

    for doc in loaded.deployments:
        raw = [d for d in schema.check_file(doc) if d.code != "schema-required"]
        if fleet_ok:
            raw += undeclared_environments(doc.root, declared)
        # a literal credential is reported, but the file is still checked: every problem at once
        # (except a second error on the credential's own field: one problem, one error)
        credentials = find_credentials(doc)
        secret_marks.update(d.mark for d in credentials)
        diags.extend(raw + credentials)
        if any(d.is_error for d in raw) or not fleet_ok:
            continue
        name = _deployment_name(doc)
        top = overlay.root if overlay is not None and overlay.deployment == name else None
        base = merge(defaults, _without(doc.root, "environments"))
        assert base is not None
        results: dict[str | None, tuple[Node, list[Diagnostic], bool]] = {}
        for c in configs:
            overrides, _ = overlays[c]
            own = _child(doc.root, "environments", c) if c is not None else None
            if c is not BASE and overrides is None and own is None:
                results[c] = results[BASE]  # nothing of this deployment changes: the same tree, checked once
                continue
            tree = merge(merge(merge(base, overrides), own), top)
            assert tree is not None
            found = [_at_file(d, doc) if d.code == "schema-required" else d for d in schema.check(tree)]
            results[c] = (tree, found, not any(d.is_error for d in found))
        # a field the deployment leaves to its environments, and every environment sets, is no error
        missing = [d for d in results[BASE][1] if d.code == "schema-required"]
        if missing and declared and len(missing) == len(results[BASE][1]) and all(results[c][2] for c in declared):
            environment_only.append(
                (
                    doc,
                    [
                        format_path((*d.path, d.message.split("'")[1])) if "'" in d.message else format_path(d.path)
                        for d in missing
                    ],
                )
            )
            results[BASE] = (results[BASE][0], [], False)
        ruled: dict[int, list[Diagnostic]] = {}
        for c in configs:
            tree, found, ok = results[c]
            if ok:
                if id(tree) not in ruled:
                    ruled[id(tree)] = check_rules(RuleContext(tree=tree, data=tree.plain()))
                found = found + ruled[id(tree)]
                ok = not any(d.is_error for d in found)
            for d in found:
                if d.mark not in secret_marks or not d.is_error:
                    findings.add(d, name, c, doc.path)
            if ok:
                clean[c].append((doc, tree))

    gateway = _gateway(fleet) if fleet is not None and fleet_ok else None
    for c in configs:
        modal_env = overlays[c][1]
        name_claims: list[Claim] = []
        served_claims: list[Claim] = []
        strategy_claims: list[Claim] = []
        upstreams: list[tuple[str, str | None, str]] = []
        for _doc, tree in clean[c]:
            data = tree.plain()
            dname = data["name"]
            name_claims.append(Claim(dname, tree.find(("name",))[1], ("name",)))
            names_node = _child(tree, "model", "served_model_names")
            if names_node is not None:
                for i, served in enumerate(names_node.value):
                    served_claims.append(Claim(served.value, served.mark, ("model", "served_model_names", i)))
            else:
                served_claims.append(Claim(data["model"]["id"], tree.find(("model", "id"))[1], ("model", "id")))
            for i, adapter in enumerate(data["model"].get("lora_adapters") or []):
                path = ("model", "lora_adapters", i, "name")
                served_claims.append(Claim(adapter["name"], tree.find(path)[1], path))
            strategy = _child(tree, "rollout", "strategy")
            if strategy is not None:
                strategy_claims.append(Claim(strategy.value, strategy.mark, ("rollout", "strategy")))
            environment = modal_env.value if modal_env is not None else data.get("environment")
            auth = (data.get("auth") or {}).get("mode") or schema_defaults()["auth"]["mode"]
            upstreams.append((dname, environment, auth))
        for d in unique_across_fleet(name_claims, "deployment name", "duplicate-name"):
            findings.add(d, None, c, None)
        for d in unique_across_fleet(served_claims, "served model name", "duplicate-served-name"):
            findings.add(d, None, c, None)
        for d in canary_names(name_claims):
            findings.add(d, None, c, None)
        if gateway is None:
            for d in canary_without_gateway(strategy_claims):
                findings.add(d, None, c, None)
        if gateway is not None and fleet is not None:
            for d in gateway_diagnostics(fleet, gateway, upstreams):
                findings.add(d, None, c, None)
    diags.extend(findings.diagnostics())
    return _Checked(diags, declared, prices, fleet, fleet_ok, clean, environment_only, gateway)


def resolve(loaded: LoadedFleet, env: str | None = None, overlay: Overlay | None = None) -> ResolvedFleet:
    """Validate the fleet without `--env` and in every environment fleet.yaml declares, and resolve
    its deployments for environment `env` (None: no overlay), with `overlay` over its deployment.

    A fleet is only as valid as its worst environment: the diagnostics are the same whichever `env`
    is asked for. Raises UnknownEnvironment for an `env` that fleet.yaml does not declare;
    everything wrong in the files is returned as diagnostics, never raised.
    """
    global _last
    if _last is not None and _last[0] is loaded and _last[1] is overlay:
        checked = _last[2]  # `plan` resolves the same fleet once per environment
    else:
        checked = _check(loaded, overlay)
        _last = (loaded, overlay, checked)
    if env is not None and checked.fleet_ok and env not in checked.declared:
        raise UnknownEnvironment(env, checked.declared)
    fleet = checked.fleet
    _, modal_env = _overlays(fleet if checked.fleet_ok else None, env)
    diags = list(checked.diagnostics)
    if env is None:
        for doc, missing in checked.environment_only:
            diags.append(
                Diagnostic(
                    doc.root.mark,
                    (),
                    f"{', '.join(missing)} set only by its environments: left out without --env",
                    "environment-only",
                    Severity.WARNING,
                    hint="name the environment with --env, or set it in the deployment file or fleet.yaml `defaults`",
                )
            )
    built: list[spec.Deployment] = []
    trees: dict[str, Node] = {}
    for doc, tree in checked.clean.get(env, []):
        if modal_env is not None:
            tree = merge(tree, Node({"environment": modal_env}, modal_env.mark, {"environment": modal_env.mark}))
        deployment = _build(tree.plain(), doc.path, env)
        built.append(deployment)
        trees[deployment.name] = tree
    return ResolvedFleet(
        tuple(built),
        tuple(sorted(diags, key=Diagnostic.sort_key)),
        env,
        checked.prices,
        Origins(trees),
        gateway=checked.gateway,
        fleet_file=fleet.path if fleet is not None else None,
        modal_env=modal_env.plain() if modal_env is not None else None,
        declared_environments=tuple(checked.declared),
        loaded=loaded,
    )


# --- the gateway -----------------------------------------------------------------------------------------


def gateway_from(data: dict[str, Any] | None) -> spec.Gateway | None:
    """fleet.yaml's `gateway` mapping (schema-checked; None: absent) as a typed object, the schema's
    defaults applied as for every other field; None unless it is enabled."""
    merged = {**gateway_defaults(), **(data or {})}
    if not merged.pop("enabled"):
        return None
    merged["upstream_timeout"] = parse_duration(merged["upstream_timeout"])
    merged["request_timeout"] = parse_duration(merged["request_timeout"])
    merged["cors_origins"] = tuple(merged.get("cors_origins") or ())
    return spec.Gateway(**merged)


def _gateway(fleet: Document) -> spec.Gateway | None:
    node = _child(fleet.root, "gateway")
    return gateway_from(node.plain() if node is not None else None)


def gateway_diagnostics(
    fleet: Document, gateway: spec.Gateway, upstreams: list[tuple[str, str | None, str]]
) -> list[Diagnostic]:
    """What is wrong with an enabled gateway for these deployments ((name, Modal environment, auth
    mode) each), each error at the field of fleet.yaml's `gateway` it is about."""
    out = []

    node = _child(fleet.root, "gateway")

    def error(keys: str | tuple[str, ...] | None, message: str, hint: str) -> None:
        """An error at the first of `keys` that fleet.yaml sets (a rule between two fields is at the one
        written), else at `gateway.enabled`: the schema's default is what is wrong."""
        written = [k for k in ((keys,) if isinstance(keys, str) else keys or ()) if _child(node, k) is not None]
        path = ("gateway", written[0]) if written else ("gateway",)
        mark = fleet.root.find(path if written else ("gateway", "enabled"))[1]
        out.append(Diagnostic(mark, path, message, "gateway", hint=hint))

    g = gateway
    if g.request_timeout <= g.upstream_timeout:
        error(
            ("request_timeout", "upstream_timeout"),
            f"request_timeout ({g.request_timeout} s) must be longer than upstream_timeout ({g.upstream_timeout} s)",
            "a request waits up to upstream_timeout for a cold deployment, then needs time to answer",
        )
    if g.request_timeout > spec.MAX_REQUEST_TIMEOUT:
        error(
            "request_timeout",
            f"request_timeout ({g.request_timeout} s) is over Modal's 24 h limit",
            f"at most {spec.MAX_REQUEST_TIMEOUT} s (24h)",
        )
    if g.max_containers is not None and g.min_containers > g.max_containers:
        error(
            ("min_containers", "max_containers"),
            f"min_containers {g.min_containers} is above max_containers {g.max_containers}",
            f"raise max_containers to at least {g.min_containers}, or lower min_containers",
        )
    if g.target_concurrency > g.max_concurrency:
        error(
            ("target_concurrency", "max_concurrency"),
            f"target_concurrency {g.target_concurrency} is above max_concurrency {g.max_concurrency}",
            "the autoscaler could never reach its target",
        )
    names = [name for name, _, _ in upstreams]
    if g.name in names:
        error(
            "name",
            f"gateway name {g.name!r} is also a deployment's name",
            "pick another gateway.name: both are Modal app names",
        )
    if not upstreams:
        error(None, "the gateway has no deployments to route to", "set gateway.enabled: false, or add deployments")
    # (Upstream key variables cannot clash: a deployment name has no `_`, so upper-casing it and
    # turning `-` into `_` is one to one.)
    for name, environment, _ in sorted(upstreams):
        url = g.url_of(name, environment)
        if url and len(url.split("//", 1)[1].split(".", 1)[0]) > spec.MAX_HOST_LABEL:
            error(
                "workspace",
                f"{name}: host name label of {url} is over {spec.MAX_HOST_LABEL} characters, so Modal shortens it",
                "leave gateway.workspace unset to look URLs up at run time",
            )
    return out


# --- values from the command line ----------------------------------------------------------------------


def resolve_with(fleet: ResolvedFleet, name: str, overlay: Overlay) -> tuple[spec.Deployment | None, list[Diagnostic]]:
    """Deployment `name` of `fleet` (resolved, without errors) with `overlay` over it, through the same
    checks and build as the files: (the deployment, None if the overlay makes it invalid; the problems
    the overlay brings, those `fleet` already had left out)."""
    if fleet.loaded is None:
        raise ValueError("the fleet was not resolved from loaded files")
    over = resolve(fleet.loaded, fleet.fleet_env, overlay)
    known = set(fleet.diagnostics)
    found = [d for d in over.diagnostics if d not in known]
    built = [d for d in over.deployments if d.name == name]
    if any(d.is_error for d in found) or not built:
        return None, found
    return built[0], found
