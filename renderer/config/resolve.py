"""Stage 3: fleet defaults + environment overlays + deployment -> frozen, typed `Deployment`s.

Layers, lowest first (maps merge, scalars and lists replace):

    schema defaults < fleet.yaml `defaults` < the deployment file
                    < fleet.yaml `environments.ENV.overrides` < the deployment's own `environments.ENV`

(what an environment says beats what holds everywhere; what one deployment says beats what the
whole fleet says at the same level),

then `environments.ENV.modal_environment` picks the Modal environment. The merged tree keeps each
value's origin, so a problem a default causes is reported where the default was written. The vLLM
command line is built here, once; the renderer and `fleetform serve --local` only read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterator

from renderer.config import spec
from renderer.diagnostics import Diagnostic, Mark, did_you_mean
from renderer.config.load import Document, LoadedFleet, Node
from renderer.config.vllm_args import build_vllm_args
from renderer.config.validate import (
    DEPLOYMENT_SCHEMA,
    FLEET_SCHEMA,
    Claim,
    RuleContext,
    check_rules,
    check_schema,
    check_tree,
    load_schema,
    parse_duration,
    undeclared_environments,
    unique_across_fleet,
)


class UnknownEnvironment(Exception):
    """`--env NAME` names no environment of fleet.yaml: a usage error, not a file error."""

    def __init__(self, name: str, declared: list[str]):
        hint = did_you_mean(name, declared)
        known = ", ".join(declared) if declared else "none (add `environments:` to fleet.yaml)"
        super().__init__(f"unknown environment {name!r}; fleet.yaml declares: {known}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class ResolvedFleet:
    deployments: tuple[spec.Deployment, ...]
    diagnostics: tuple[Diagnostic, ...]
    environment: str | None
    prices: dict[str, float]
    # deployment name -> every value of its merged (pre-default) tree: path -> (value, where it was written)
    origins: dict[str, dict[tuple, tuple[Any, Mark]]] = field(default_factory=dict)
    # fleet.yaml's `gateway` mapping as written (None: absent); render and plan build the gateway from it
    gateway: dict[str, Any] | None = None
    fleet_file: str | None = None  # fleet.yaml's path as named, for the gateway module's header
    # the Modal environment `--env` selects (its `modal_environment`): where rollback, destroy and
    # status look for an app that no deployment file names
    modal_environment: str | None = None
    declared_environments: tuple[str, ...] = ()  # every environment fleet.yaml declares

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


@functools.cache
def schema_defaults() -> dict[str, Any]:
    """The `default` of every deployment field, nested as the YAML is, read from the schema."""
    schema = load_schema(DEPLOYMENT_SCHEMA)
    defs = schema["$defs"]
    out: dict[str, Any] = {}
    for key, prop in schema["properties"].items():
        target = defs[prop["$ref"].split("/")[-1]] if "$ref" in prop else prop
        if "default" in prop or "default" in target:
            out[key] = prop.get("default", target.get("default"))
        elif target.get("type") == "object" and "properties" in target:
            section = {k: v["default"] for k, v in target["properties"].items() if "default" in v}
            for k, v in target["properties"].items():
                if "default" not in v and "$ref" in v:
                    ref = defs[v["$ref"].split("/")[-1]]
                    if "default" in ref:
                        section[k] = ref["default"]
            out[key] = section
    return out


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
        id=m["id"], revision=m["revision"],
        served_model_names=tuple(m.get("served_model_names") or [m["id"]]),
        quantization=m["quantization"], quantize_on_load=m["quantize_on_load"], dtype=m.get("dtype"),
        max_model_len=m.get("max_model_len"), tokenizer=m.get("tokenizer"), chat_template=m.get("chat_template"),
        parameters_b=m.get("parameters_b"),
        lora_adapters=tuple(spec.LoraAdapter(a["name"], a["id"], a["revision"]) for a in m["lora_adapters"]),
        max_lora_rank=m.get("max_lora_rank"),
    )
    gpu = spec.Gpu(type=g["type"], count=g["count"], fallbacks=tuple(g["fallbacks"]),
                   tensor_parallel_size=g.get("tensor_parallel_size") or g["count"])
    scaling = spec.Scaling(
        min_containers=s["min_containers"], max_containers=s.get("max_containers"),
        buffer_containers=s["buffer_containers"], scaledown_window=parse_duration(s["scaledown_window"]),
        target_concurrency=s["target_concurrency"], max_concurrency=s.get("max_concurrency"),
        startup_timeout=parse_duration(s["startup_timeout"]),
    )
    engine = spec.Engine(
        vllm_version=e["vllm_version"], fast_boot=e["fast_boot"], cold_start=e["cold_start"], port=e["port"],
        gpu_memory_utilization=e.get("gpu_memory_utilization"), max_num_seqs=e.get("max_num_seqs"),
        enable_prefix_caching=e.get("enable_prefix_caching"), kv_cache_dtype=e.get("kv_cache_dtype"),
        extra_args=tuple(e["extra_args"]), env=tuple(sorted(e["env"].items())),
    )
    auth = spec.Auth(mode=d["auth"]["mode"], api_key_secret=d["auth"].get("api_key_secret"))
    secrets = list(d["secrets"])
    if auth.mode == "api_key" and auth.api_key_secret not in secrets:
        secrets.append(auth.api_key_secret)
    region = d.get("region")
    return spec.Deployment(
        name=d["name"], description=d.get("description"), source=source, fleet_environment=fleet_env,
        model=model, gpu=gpu, scaling=scaling, engine=engine,
        image=spec.Image(python_version=d["image"]["python_version"], pip=tuple(d["image"]["pip"])),
        cache=spec.Cache(huggingface_volume=d["cache"]["huggingface_volume"], vllm_volume=d["cache"]["vllm_volume"]),
        secrets=tuple(secrets), auth=auth,
        region=None if region is None else (region,) if isinstance(region, str) else tuple(region),
        routing_region=d["routing_region"], environment=d.get("environment"),
        vllm_args=build_vllm_args(model, gpu, engine),
    )


# --- the stage ---------------------------------------------------------------------------------------


def _environment_overlay(fleet: Document | None, env: str | None) -> tuple[Node | None, Node | None]:
    """(overrides, modal_environment) of fleet environment `env`."""
    if env is None or fleet is None:
        return None, None
    entry = _child(fleet.root, "environments", env)
    return _child(entry, "overrides"), _child(entry, "modal_environment")


def resolve(loaded: LoadedFleet, env: str | None = None) -> ResolvedFleet:
    """Validate and resolve every deployment of the fleet for environment `env` (None: no overlay).

    Raises UnknownEnvironment for an `env` that fleet.yaml does not declare; everything wrong in
    the files is returned as diagnostics, never raised.
    """
    diags: list[Diagnostic] = list(loaded.diagnostics)
    fleet = loaded.fleet
    fleet_ok = True
    declared: list[str] = []
    prices: dict[str, float] = {}
    if fleet is not None:
        fleet_diags = check_schema(fleet, FLEET_SCHEMA)
        diags.extend(fleet_diags)
        fleet_ok = not any(d.is_error for d in fleet_diags)
        data = fleet.data
        if fleet_ok:
            declared = sorted((data.get("environments") or {}).keys())
            prices = dict(data.get("prices") or {})
    if env is not None and fleet_ok and env not in declared:
        raise UnknownEnvironment(env, declared)

    defaults = _child(fleet.root, "defaults") if fleet is not None and fleet_ok else None
    env_overrides, modal_env = _environment_overlay(fleet, env) if fleet_ok else (None, None)

    built: list[spec.Deployment] = []
    origins: dict[str, dict[tuple, tuple[Any, Mark]]] = {}
    name_claims: list[Claim] = []
    served_claims: list[Claim] = []
    for doc in loaded.deployments:
        raw = check_schema(doc, DEPLOYMENT_SCHEMA) + undeclared_environments(doc.root, declared)
        diags.extend(raw)
        if any(d.is_error for d in raw) or not fleet_ok:
            continue
        own_env = _child(doc.root, "environments", env) if env else None
        tree = merge(merge(merge(defaults, _without(doc.root, "environments")), env_overrides), own_env)
        assert tree is not None
        if modal_env is not None:
            tree = merge(tree, Node({"environment": modal_env}, modal_env.mark, {"environment": modal_env.mark}))
        merged = check_tree(tree, DEPLOYMENT_SCHEMA)
        diags.extend(merged)
        if any(d.is_error for d in merged):
            continue
        ctx = RuleContext(tree=tree, data=tree.plain())
        rules = check_rules(ctx)
        diags.extend(rules)
        if any(d.is_error for d in rules):
            continue
        deployment = _build(ctx.data, doc.path, env)
        built.append(deployment)
        origins[deployment.name] = {  # lists count as one value, as they replace rather than merge
            p: (n.plain(), n.mark) for p, n in tree.walk()
            if p and not any(isinstance(x, int) for x in p) and not (isinstance(n.value, dict) and n.value)}
        name_claims.append(Claim(deployment.name, ctx.mark("name"), ("name",)))
        names_node = _child(tree, "model", "served_model_names")
        for i, served in enumerate(deployment.model.served_model_names):
            mark = names_node.value[i].mark if names_node is not None else ctx.mark("model", "id")
            served_claims.append(Claim(served, mark, ("model", "served_model_names", i)))
        for i, adapter in enumerate(deployment.model.lora_adapters):
            path = ("model", "lora_adapters", i, "name")
            served_claims.append(Claim(adapter.name, ctx.mark(*path), path))

    diags.extend(unique_across_fleet(name_claims, "deployment name", "duplicate-name"))
    diags.extend(unique_across_fleet(served_claims, "served model name", "duplicate-served-name"))
    gateway = fleet.data.get("gateway") if fleet is not None and fleet_ok else None
    if not any(d.is_error for d in diags):
        diags.extend(gateway_diagnostics(fleet, gateway, built))
    return ResolvedFleet(tuple(built), tuple(sorted(diags, key=Diagnostic.sort_key)), env, prices, origins,
                         gateway=gateway, fleet_file=fleet.path if fleet is not None else None,
                         modal_environment=modal_env.plain() if modal_env is not None else None,
                         declared_environments=tuple(declared))


def gateway_diagnostics(fleet: Document | None, gateway: dict | None,
                        deployments: list[spec.Deployment]) -> list[Diagnostic]:
    """What `gateway.check_gateway` finds wrong with an enabled gateway, as errors at fleet.yaml's
    `gateway:` key, so that `validate` (and the pre-commit hook) refuse a fleet `render` would.

    The gateway module is imported only for a fleet that enables it: it loads the template engine,
    which `validate` otherwise never needs.
    """
    if fleet is None or not (gateway or {}).get("enabled"):
        return []
    from renderer.codegen.gateway import check_gateway, gateway_config

    mark = (fleet.root.key_marks or {}).get("gateway", fleet.root.mark)
    return [Diagnostic(mark, ("gateway",), problem, "gateway",
                       hint="fix it under `gateway` in fleet.yaml, or set gateway.enabled: false")
            for problem in check_gateway(deployments, gateway_config(gateway))]
