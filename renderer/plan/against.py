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

Reporters: plain text, JSON (docs/json-output.md), GitHub workflow annotations and a Markdown
summary for `$GITHUB_STEP_SUMMARY`. `plan_against` and `validate_github` are the CLI's entry points.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, TextIO

from renderer.diagnostics import (
    Diagnostic,
    Mark,
    _github_escape,
    diagnostics_json,
    dumps,
    format_github,
    format_path,
    format_text,
)

if TYPE_CHECKING:
    from renderer.config import spec
    from renderer.codegen.render import RenderedApp
    from renderer.config.resolve import ResolvedFleet

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHANGES = 0, 1, 2, 2

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
    ImpactRule("scaling.", SCALING, "Modal-side autoscaler, concurrency and start-up limits; min, max and buffer "
                                    "containers and the scaledown window can even be changed live "
                                    "(`Function.update_autoscaler`)"),
    ImpactRule("routing_region", SCALING, "the Modal proxy region that routes requests, outside the container"),
    ImpactRule("model.", RESTART, "vLLM's command line: a running server cannot switch weights, revision, "
                                  "context length or adapters"),
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
_SKIP = frozenset({"name", "source", "fleet_environment", "vllm_args"})
# Tuples of (key, value) pairs, compared key by key.
_MAPPINGS = frozenset({"engine.env"})
# Seconds in the spec, shown as the YAML writes them.
DURATIONS = frozenset({"scaling.scaledown_window", "scaling.startup_timeout"})


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
                out[path] = _jsonable(value)

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
            return {"source": app.deployment.source, "content_hash": app.content_hash,
                    "modal_environment": app.deployment.environment}

        return {"name": self.name, "action": self.action, "impact": self.impact,
                "before": side(self.before), "after": side(self.after),
                "changes": [c.to_dict() for c in self.changes]}


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
    moved = before.deployment.environment != after.deployment.environment
    changes = []
    for path in keys:
        if old.get(path) != new.get(path):
            rule = classify(".".join(path))
            if rendered or (moved and rule.impact == MOVE):
                changes.append(FieldChange(path, old.get(path), new.get(path), rule.impact, rule.why))
            else:
                changes.append(FieldChange(path, old.get(path), new.get(path), NONE, "the rendered module is unchanged"))
    redeploy = rendered or moved
    if rendered and not changes:
        changes.append(FieldChange(("(rendered module)",), before.short_hash, after.short_hash, RESTART,
                                   "the rendered module differs though no compared field does"))
    action = UPDATE if redeploy else UNCHANGED
    return DeploymentDiff(after.deployment.name, action, worst(c.impact for c in changes), tuple(changes),
                          before, after)


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


def _remove_note(name: str) -> str:
    return f"`fleetform deploy` leaves the app running; `fleetform destroy {name}` stops it"


CREATE_NOTE = "a new app: Modal builds its image unless cached, the first container downloads the weights"


def _against(ref: str, commit: str, environment: str | None) -> str:
    return f"{ref} ({commit[:7]})" + (f", environment {environment}" if environment else "")


def _totals(diff: FleetDiff) -> str:
    c = diff.counts()
    restarts = sum(1 for d in diff.of(UPDATE) if d.impact in (RESTART, REBUILD, MOVE))
    update = f"{c[UPDATE]} to update" + (f" ({restarts} with new containers)" if restarts else "")
    return f"{c[CREATE]} to create, {update}, {c[REMOVE]} to remove, {c[UNCHANGED]} unchanged"


# --- text ---------------------------------------------------------------------------------------------------------


def format_text_plan(diff: FleetDiff, ref: str, commit: str, environment: str | None,
                     notes: Sequence[str] = ()) -> str:
    """The human plan: one block per deployment that changes, then totals."""
    lines = [f"fleetform plan: the working tree against {_against(ref, commit, environment)}"]
    lines += [f"note: {n}" for n in notes]
    lines.append("")
    quiet = []
    for d in diff.deployments:
        if d.action == CREATE:
            lines += [f"+ {d.name} ({d.source})", f"    create: {CREATE_NOTE}"]
        elif d.action == REMOVE:
            lines += [f"- {d.name} ({d.source} at {ref})", f"    remove: no longer in the fleet; {_remove_note(d.name)}"]
        elif d.action == UPDATE:
            assert d.before and d.after and d.impact
            lines.append(f"~ {d.name} ({d.source})  {d.before.short_hash} -> {d.after.short_hash}")
            lines.append(f"    {d.impact}: {IMPACT_SUMMARY[d.impact]}")
            lines += [f"    {change_text(c)}  [{c.impact}]" for c in d.changes]
        elif d.changes:
            lines += [f"= {d.name} ({d.source})", f"    {IMPACT_SUMMARY[NONE]}"]
            lines += [f"    {change_text(c)}" for c in d.changes]
        else:
            quiet.append(d.name)
    if quiet:
        lines.append(f"  {len(quiet)} unchanged: {', '.join(quiet)}")
    lines.append("")
    if diff.pending:
        lines.append(f"Plan: {_totals(diff)}.")
    else:
        lines.append(f"No changes: {len(diff.deployments)} deployment(s) render the same as at {ref}.")
    return "\n".join(lines) + "\n"


# --- JSON -------------------------------------------------------------------------------------------------------------


def plan_json(diff: FleetDiff, ref: str, commit: str, environment: str | None, notes: Sequence[str] = (),
              diagnostics: Sequence[Diagnostic] = ()) -> dict[str, Any]:
    """`plan --against --format json`: documented in docs/json-output.md; fields are only ever added."""
    return {
        "ok": True,
        "against": {"ref": ref, "commit": commit},
        "environment": environment,
        "changes": diff.pending,
        "summary": diff.counts(),
        "deployments": [d.to_dict() for d in diff.deployments],
        "notes": list(notes),
        "diagnostics": diagnostics_json(diagnostics),
    }


# --- GitHub annotations -----------------------------------------------------------------------------------------


def _annotation(level: str, message: str, mark: Mark | None, title: str = "fleetform plan") -> str:
    props = []
    if mark is not None:
        props.append(f"file={_github_escape(mark.file, prop=True)},line={mark.line},col={mark.col}")
    props.append(f"title={_github_escape(title, prop=True)}")
    return f"::{level} {','.join(props)}::{_github_escape(message)}"


def _where(origins: Mapping[str, Mapping[tuple, Any]], d: DeploymentDiff, path: tuple[str, ...]) -> Mark:
    """Where a working-tree value was written (maybe fleet.yaml); else the deployment's `name:`."""
    written = origins.get(d.name, {})
    for key in (path, ("name",)):
        if key in written:
            return written[key][1]
    return Mark(d.source, 1, 1)


def github_annotations(diff: FleetDiff, ref: str, origins: Mapping[str, Mapping[tuple, Any]] | None = None) -> list[str]:
    """Workflow commands that mark each change on the line of the pull request that made it.

    Changes that start new containers are warnings, the rest notices. One change written once in
    fleet.yaml and inherited by several deployments is one annotation, not one per deployment
    (GitHub shows only the first few annotations of each kind per step).
    """
    origins = origins or {}
    # (level, mark, text) -> deployment names, in order of first appearance
    grouped: dict[tuple[str, Mark | None, str], list[str]] = {}
    for d in diff.deployments:
        if d.action == CREATE:
            grouped[("notice", _where(origins, d, ("name",)), f"create: {CREATE_NOTE}")] = [d.name]
        elif d.action == REMOVE:
            grouped[("warning", None, f"removed from the fleet ({d.source} at {ref}): {_remove_note(d.name)}")] = [d.name]
        elif d.action == UPDATE:
            for c in d.changes:
                level = "warning" if c.impact in (RESTART, REBUILD, MOVE) else "notice"
                key = (level, _where(origins, d, c.path), f"{change_text(c)}: {c.impact}: {IMPACT_SUMMARY[c.impact]}")
                grouped.setdefault(key, []).append(d.name)
    return [_annotation(level, f"{', '.join(names)}: {text}", mark) for (level, mark, text), names in grouped.items()]


# --- Markdown -----------------------------------------------------------------------------------------------------


def md_code(text: str) -> str:
    """Inline code that survives a Markdown table cell."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_prose(text: str) -> str:
    """Our own notes use `code` spans; keep them, escape table pipes."""
    return text.replace("|", "\\|")


def format_markdown_plan(diff: FleetDiff, ref: str, commit: str, environment: str | None,
                         notes: Sequence[str] = ()) -> str:
    """The pull request's summary: a table of what changes and what it does to running containers."""
    lines = ["## fleetform plan", ""]
    where = f"Against {md_code(ref)} ({md_code(commit[:7])})"
    if environment:
        where += f", environment {md_code(environment)}"
    if not diff.pending:
        lines.append(f"{where}: **no changes**; {len(diff.deployments)} deployment(s) render the same.")
    else:
        lines.append(f"{where}: **{_totals(diff)}**.")
    lines += [f"> {md_text(n)}" for n in notes]
    rows = [d for d in diff.deployments if d.action != UNCHANGED or d.changes]
    if rows:
        lines += ["", "| Deployment | Action | Effect | Changes |", "| --- | --- | --- | --- |"]
        for d in rows:
            if d.action == CREATE:
                effect, changes = CREATE_NOTE, ""
            elif d.action == REMOVE:
                effect, changes = f"no longer in the fleet; {_remove_note(d.name)}", ""
            else:
                impact = d.impact or NONE
                effect = f"**{impact}**: {IMPACT_SUMMARY[impact]}"
                changes = "<br>".join(f"{md_code(c.field)}: {md_code(show(c.before, c.field))} → "
                                      f"{md_code(show(c.after, c.field))}" for c in d.changes)
            lines.append(f"| {md_code(d.name)} | {d.action} | {_md_prose(effect)} | {changes} |")
    quiet = [d.name for d in diff.deployments if d.action == UNCHANGED and not d.changes]
    if quiet:
        lines += ["", f"Unchanged: {', '.join(md_code(n) for n in quiet)}."]
    lines += ["", "<sub>scaling: redeploy, no image build · restart: new containers · rebuild: new image and "
                  "containers · move: new Modal environment. The rule: docs/ci.md.</sub>"]
    return "\n".join(lines) + "\n"


def format_markdown_validation(diagnostics: Sequence[Diagnostic], deployments: int) -> str:
    """`validate --format github`'s summary: every problem as a table row."""
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    lines = ["## fleetform validate", ""]
    if errors:
        lines.append(f"**{errors} error(s)**" + (f", {warnings} warning(s)" if warnings else "")
                     + "; nothing can be rendered or deployed until they are fixed.")
    else:
        lines.append(f"**{deployments} deployment(s) valid**" + (f", {warnings} warning(s)" if warnings else "") + ".")
    if diagnostics:
        lines += ["", "| Where | Field | Problem |", "| --- | --- | --- |"]
        for d in diagnostics:
            problem = f"{d.severity.value}: {d.message}" + (f" (hint: {d.hint})" if d.hint else "")
            lines.append(f"| {md_code(str(d.mark))} | {md_code(format_path(d.path))} | {md_text(problem)} |")
    return "\n".join(lines) + "\n"


def write_step_summary(markdown: str, out: TextIO, err: TextIO, environ: Mapping[str, str]) -> bool:
    """Append to the file GitHub names in GITHUB_STEP_SUMMARY; without it, print. True if written to the file."""
    path = environ.get("GITHUB_STEP_SUMMARY")
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(markdown + "\n")
            return True
        except OSError as exc:
            print(f"warning: cannot write the step summary to {path}: {exc.strerror or exc}; printing it",
                  file=err)
    out.write(markdown)
    return False


# --- entry points for the CLI ---------------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, code: int):
        self.code = code


def _say(fmt: str, out: TextIO, err: TextIO, message: str, code: int) -> _Stop:
    """A one-line error: on stderr, and as `{"ok": false, "error": ...}` on stdout for JSON."""
    print(f"error: {message}", file=err)
    if fmt == "json":
        print(dumps({"ok": False, "error": message, "diagnostics": []}), file=out)
    return _Stop(code)


def _working_tree(paths: Sequence[str], env: str | None, fmt: str, usage: int, out: TextIO, err: TextIO,
                  environ: Mapping[str, str], title: str) -> ResolvedFleet:
    """load -> resolve the working tree, reporting diagnostics as `fmt` wants; raises _Stop."""
    from renderer.config.load import load_fleet
    from renderer.config.resolve import UnknownEnvironment, resolve

    loaded = load_fleet(list(paths))
    if not loaded.deployments and not loaded.diagnostics:
        raise _say(fmt, out, err, f"no deployment files (*.yaml) in {' '.join(paths)}", usage)
    try:
        resolved = resolve(loaded, env)
    except UnknownEnvironment as exc:
        raise _say(fmt, out, err, str(exc), usage) from None
    if fmt == "github":
        for d in resolved.diagnostics:
            print(format_github(d), file=out)
    elif fmt == "text":
        for d in resolved.diagnostics:
            print(format_text(d), file=err)
    if not resolved.ok:
        if fmt == "json":
            print(dumps({"ok": False, "diagnostics": diagnostics_json(resolved.diagnostics)}), file=out)
        else:
            n = sum(d.is_error for d in resolved.diagnostics)
            print(f"{n} error(s) in {title}; nothing was compared", file=err)
            if fmt == "github":
                write_step_summary(format_markdown_validation(resolved.diagnostics, len(resolved.deployments)),
                                   out, err, environ)
        raise _Stop(EXIT_ERROR)
    return resolved


def _render(resolved: ResolvedFleet, fmt: str, out: TextIO, err: TextIO) -> list[RenderedApp]:
    from renderer.codegen.render import RenderError, render_fleet

    try:
        return render_fleet(resolved.deployments)
    except RenderError as exc:
        raise _say(fmt, out, err, str(exc), EXIT_ERROR) from None


def _at_ref(ref: str, paths: Sequence[str], env: str | None, fmt: str, out: TextIO,
            err: TextIO) -> tuple[str, ResolvedFleet, list[str]]:
    """(commit, the fleet resolved at REF, notes). A REF fleet that does not validate is an error:
    without it there is nothing sound to compare with."""
    from renderer.plan.gitref import GitError, load_fleet_at
    from renderer.config.resolve import ResolvedFleet, UnknownEnvironment, resolve

    try:
        at = load_fleet_at(ref, paths)
    except GitError as exc:
        raise _say(fmt, out, err, str(exc), EXIT_ERROR) from None
    notes: list[str] = []
    try:
        resolved = resolve(at.loaded, env)
    except UnknownEnvironment:
        notes.append(f"environment {env} is not declared at {ref}: every deployment in it counts as new")
        resolved = ResolvedFleet((), (), env, {})
    if not resolved.ok:
        errors = [d for d in resolved.diagnostics if d.is_error]
        for d in errors:
            print(f"  at {at.short}: {format_text(d)}", file=err)
        raise _say(fmt, out, err, f"the fleet at {ref} ({at.short}) does not validate ({len(errors)} error(s)), "
                                  "so there is nothing sound to compare with", EXIT_ERROR)
    if not at.loaded.deployments and not at.loaded.diagnostics:
        notes.append(f"no deployment files at {ref} in {' '.join(paths)}: every deployment counts as new")
    return at.commit, resolved, notes


def plan_against(ref: str, paths: Sequence[str] | None, env: str | None, fmt: str = "text",
                 detailed_exitcode: bool = False, *, out: TextIO | None = None, err: TextIO | None = None,
                 environ: Mapping[str, str] | None = None) -> int:
    """`fleetform plan --against REF`: print what changes between REF and the working tree.

    Returns the exit code: 0 ok (with `detailed_exitcode`: no changes), 2 changes pending (only
    with `detailed_exitcode`), 1 any error. Without `detailed_exitcode` a usage error (no files, an
    unknown environment) is 2, as elsewhere in the CLI; with it, 2 means changes, so those are 1.
    Needs git, no Modal credentials and no network.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    paths = list(paths or ["deployments"])
    usage = EXIT_ERROR if detailed_exitcode else EXIT_USAGE
    try:
        after = _working_tree(paths, env, fmt, usage, out, err, environ, "the working tree")
        after_apps = _render(after, fmt, out, err)
        commit, before, notes = _at_ref(ref, paths, env, fmt, out, err)
        before_apps = _render(before, fmt, out, err)
    except _Stop as stop:
        return stop.code
    diff = diff_fleets(before_apps, after_apps)
    if fmt == "json":
        print(dumps(plan_json(diff, ref, commit, env, notes, after.diagnostics)), file=out)
    elif fmt == "github":
        for line in github_annotations(diff, ref, getattr(after, "origins", None)):
            print(line, file=out)
        markdown = format_markdown_plan(diff, ref, commit, env, notes)
        if write_step_summary(markdown, out, err, environ):
            out.write(format_text_plan(diff, ref, commit, env, notes))
    else:
        out.write(format_text_plan(diff, ref, commit, env, notes))
    if detailed_exitcode and diff.pending:
        return EXIT_CHANGES
    return EXIT_OK


def validate_github(paths: Sequence[str] | None, env: str | None, *, out: TextIO | None = None,
                    err: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`fleetform validate --format github`: annotations on stdout, then the Markdown summary.

    The same checks and exit codes as `validate`: 0 valid, 1 invalid, 2 usage error.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    paths = list(paths or ["deployments"])
    try:
        resolved = _working_tree(paths, env, "github", EXIT_USAGE, out, err, environ, " ".join(paths))
    except _Stop as stop:
        return stop.code
    write_step_summary(format_markdown_validation(resolved.diagnostics, len(resolved.deployments)), out, err, environ)
    return EXIT_OK
