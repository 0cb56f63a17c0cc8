"""Stage 2: is the input right? JSON Schema first (here), then the semantic rules (`rules.py`).

Nothing here raises on bad input: every check returns `Diagnostic`s that point at the file, line
and column where the offending value was written, even when it came from `fleet.yaml` defaults
(the merged tree keeps each node's origin). Every diagnostic carries a hint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from renderer.config.load import Document, Node
from renderer.config.rules import duration_limits, duration_out_of_range, shown
from renderer.config.schema import DEPLOYMENT_SCHEMA, expand, section_of, subschema_at, validator
from renderer.diagnostics import Diagnostic, did_you_mean, format_path
from renderer.diagnostics import Path as FieldPath

# --- schema diagnostics ----------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__.replace('str', 'string').replace('int', 'integer')} {shown(value)}"


def _expected(schema: dict) -> str | None:
    """A short phrase for what a schema accepts, from the schema's own words."""
    if "patternErrorMessage" in schema:
        return schema["patternErrorMessage"]
    for branch in schema.get("anyOf", []):
        if "patternErrorMessage" in branch:
            return branch["patternErrorMessage"]
    return None


def _about(schema_name: str, path: FieldPath) -> str:
    """A hint from the field's own description (its first sentence), else where the reference is."""
    sub = subschema_at(schema_name, path) if schema_name else None
    what = (sub or {}).get("description", "")
    first = what.split(". ")[0].rstrip(".")
    name = str(path[-1]) if path and isinstance(path[-1], str) else format_path(path)
    return f"{name}: {first}" if first else "see docs/schema.md for this field"


def _bounds_hint(schema: dict) -> str:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is not None and hi is not None:
        return f"use a value from {lo} to {hi}" + (" (exclusive)" if "exclusiveMinimum" in schema else "")
    return (
        f"use a value {'above' if 'exclusiveMinimum' in schema else 'of at least'} {lo}"
        if lo is not None
        else f"use a value of at most {hi}"
    )


def _type_hint(want: str, got: Any, about: str) -> str:
    if "integer" in want and isinstance(got, float) and got.is_integer() and abs(got) < 1e18:
        return f"write {int(got)}, without a decimal point: this field takes a whole number"
    return about  # infinity and NaN never get here: the loader refuses 1e400, .inf and .nan


def _schema_error_diags(err: Any, root: Node, schema_name: str, base_path: FieldPath) -> Iterator[Diagnostic]:
    path: FieldPath = (*base_path, *err.absolute_path)
    node, mark = root.find(tuple(err.absolute_path))
    v = err.validator
    schema = err.schema if isinstance(err.schema, dict) else {}
    code = f"schema-{v}"
    about = _about(schema_name, path)
    if "propertyNames" in err.relative_schema_path and isinstance(node.value, dict) and err.instance in node.value:
        yield _bad_key(err, node, path, schema_name, code)
        return

    if v == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        for key in sorted(set(err.instance) - allowed, key=lambda k: (node.key_marks or {}).get(k, mark).line):
            kmark = (node.key_marks or {}).get(key, mark)
            hint = did_you_mean(key, allowed)
            section = section_of(key)
            if hint is None and section and (not path or path[-1] != section):
                hint = f"`{key}` belongs under `{section}`"
            if hint is None:
                hint = "allowed here: " + ", ".join(sorted(allowed)) if allowed else "remove it"
            yield Diagnostic(kmark, (*path, key), f"unknown field {shown(key)}", "schema-unknown-field", hint=hint)
        return
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        what = _about(schema_name, (*path, missing))
        hint = what if not what.startswith("see ") else f"add `{missing}`"
        yield Diagnostic(mark, path, f"missing required field {missing!r}", "schema-required", hint=hint)
        return
    if v == "enum":
        choices = [str(c) for c in err.validator_value]
        got = err.instance
        hint = did_you_mean(str(got), choices) if isinstance(got, str) else None
        shown_choices = (
            ", ".join(choices) if len(choices) <= 12 else ", ".join(c for c in choices if not c.endswith("!"))
        )
        yield Diagnostic(
            mark,
            path,
            f"expected one of {shown_choices}; got {_describe(got)}",
            code,
            hint=hint or f"write one of the values listed ({about})",
        )
        return
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        yield Diagnostic(
            mark,
            path,
            f"expected {want}, got {_describe(err.instance)}",
            code,
            hint=_type_hint(want, err.instance, about),
        )
        return
    if v in ("pattern", "anyOf", "oneOf"):
        expected = _expected(schema) or _expected(err.validator_value if isinstance(err.validator_value, dict) else {})
        if v != "pattern" and expected is None:
            kinds = sorted({b.get("type", "?") for b in err.validator_value if isinstance(b, dict)})
            expected = " or ".join(kinds)
        got = err.instance
        hint = about
        if isinstance(got, str) and ("\n" in got or "\r" in got):
            hint = "remove the line break: a quoted string's \\n or a block scalar's last newline counts"
        elif isinstance(got, float) and v == "anyOf" and got.is_integer():
            hint = f'write {int(got)}, without a decimal point, or a string such as "15m"'
        yield Diagnostic(
            mark,
            path,
            f"expected {expected or 'a value matching ' + shown(err.validator_value)}, got {_describe(got)}",
            code,
            hint=hint,
        )
        return
    limits = duration_limits(schema) if v in ("minimum", "maximum") else None
    if limits is not None:  # a duration's range, worded as for a string duration (rules.durations_in_range)
        if not validator(DEPLOYMENT_SCHEMA, "/$defs/duration").is_valid(err.instance):
            return  # not a duration at all: its anyOf error says so
        message, hint = duration_out_of_range(err.instance, *limits) or (err.message, about)
        yield Diagnostic(mark, path, message, "range", hint=hint)
        return
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        yield Diagnostic(
            mark,
            path,
            f"must be {op} {err.validator_value}, got {shown(err.instance)}",
            code,
            hint=_bounds_hint(schema),
        )
        return
    if v == "uniqueItems":
        seen, dups = set(), []
        for item in err.instance:
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                dups.append(item)
            seen.add(key)
        yield Diagnostic(
            mark,
            path,
            f"items must be unique; repeated: {', '.join(map(shown, dups))}",
            code,
            hint="remove the repeated item(s)",
        )
        return
    limit = err.validator_value
    size = len(err.instance) if isinstance(err.instance, (str, list, dict)) else None
    messages = {
        "maxLength": f"must be at most {limit} characters, got {size}",
        "minLength": f"must be at least {limit} characters, got {size}",
        "maxItems": f"must have at most {limit} item(s), got {size}",
        "minItems": f"must have at least {limit} item(s), got {size}",
        "maxProperties": f"must have at most {limit} key(s), got {size}",
        "minProperties": f"must have at least {limit} key(s), got {size}",
        "const": f"must be {shown(limit)}, got {_describe(err.instance)}",
        "multipleOf": f"must be a multiple of {limit}, got {shown(err.instance)}",
    }
    message = messages.get(v) or f"does not satisfy the schema's `{v}`: {_describe(err.instance)}"
    yield Diagnostic(mark, path, message, code, hint=about)


def _bad_key(err: Any, node: Node, path: FieldPath, schema_name: str, code: str) -> Diagnostic:
    """A mapping key its `propertyNames` refuses, reported at the key's own line, not its parent's."""
    bad = err.instance
    kmark = (node.key_marks or {}).get(bad, node.mark)
    names = err.schema if isinstance(err.schema, dict) else {}
    names = expand(names, schema_name or DEPLOYMENT_SCHEMA)[1]
    expected = _expected(names) or (
        "one of " + ", ".join(map(str, names["enum"])) if "enum" in names else "a valid name"
    )
    hint = did_you_mean(str(bad), map(str, names.get("enum", []))) or f"rename the key: {expected}"
    return Diagnostic(kmark, (*path, bad), f"invalid key {shown(bad)}: expected {expected}", code, hint=hint)


def check_schema(doc: Document, schema_name: str = DEPLOYMENT_SCHEMA) -> list[Diagnostic]:
    """Every schema error of a document (not just the first), each placed at its line and column."""
    return check_tree(doc.root, schema_name)


def check_tree(root: Node, schema_name: str) -> list[Diagnostic]:
    """Every schema error of a tree (a file, or a merged deployment whose nodes keep their origins)."""
    out: list[Diagnostic] = []
    for err in validator(schema_name).iter_errors(root.plain()):
        out.extend(_schema_error_diags(err, root, schema_name, ()))
    return sorted(out, key=Diagnostic.sort_key)
