"""The one reader of the JSON Schemas in `schema/`: files, `$ref` walk, defaults, the validator.

Everything that needs to know what the schema says (validation, resolve's defaults, the gateway's
defaults, the generated reference) asks here, so the schema stays the single source of field names,
types, defaults and descriptions.

The schemas are written for editors (ECMA-262 regular expressions, JSON Schema's `integer`), and
the validator here reads them the way a deployment needs them read:

* `integer` is never a float: JSON Schema accepts `2.0` as an integer, but `gpu.count: 2.0`
  would render `gpu="H100:2.0"`, which Modal refuses;
* `number` is finite: `1e400` parses as infinity and `.nan` as NaN, which pass every bound;
* `pattern` follows ECMA-262's `$` (the end of the string), not Python's (which also matches
  before a final newline, so `name: "evil\\n"` would pass `^[a-z]+$`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from renderer.diagnostics import Path as FieldPath

DEPLOYMENT_SCHEMA = "deployment.schema.json"
FLEET_SCHEMA = "fleet.schema.json"
SCHEMAS = (DEPLOYMENT_SCHEMA, FLEET_SCHEMA)

# The deployment's sections, in the order the reference lists them (for misplaced-key hints).
SECTIONS = ("model", "gpu", "scaling", "engine", "image", "cache", "auth", "rollout")


def schema_dir() -> Path:
    """The schema files: shipped inside the wheel, or the repository's `schema/` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "_schema"
    return packaged if packaged.is_dir() else package.parent / "schema"


@functools.cache
def load_schema(name: str) -> dict:
    with open(schema_dir() / name, encoding="utf-8") as fh:
        return json.load(fh)


# --- walking ---------------------------------------------------------------------------------------


class SchemaFiles:
    """Schema files by name, with `$ref` lookup across them: the shipped ones, or others (docs' check
    of an edited copy)."""

    def __init__(self, files: dict[str, dict]) -> None:
        self.files = files

    @classmethod
    def from_dir(cls, folder: Path) -> SchemaFiles:
        return cls({n: json.loads((folder / n).read_text(encoding="utf-8")) for n in SCHEMAS})

    def target(self, ref: str, base: str) -> tuple[str, str, dict]:
        """(file, last pointer segment, schema) a `$ref` written in schema file `base` points at."""
        file, _, pointer = ref.partition("#")
        file = file or base
        node: Any = self.files[file]
        parts = pointer.strip("/").split("/") if pointer.strip("/") else []
        for part in parts:
            node = node[part]
        return file, parts[-1] if parts else "", node

    def expand(self, node: dict, file: str) -> tuple[str, dict]:
        """A schema with its `$ref`s merged in (the referring schema's own keys win), and its file."""
        while "$ref" in node:
            file, _, target = self.target(node["$ref"], file)
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return file, node


@functools.cache
def shipped() -> SchemaFiles:
    return SchemaFiles({n: load_schema(n) for n in SCHEMAS})


def expand(node: dict, file: str) -> tuple[str, dict]:
    """A schema with its `$ref`s merged in (the referring schema's own keys win), and its file."""
    return shipped().expand(node, file)


def _at(name: str, path: FieldPath) -> tuple[str, dict] | None:
    """(file, schema) that governs the value at `path`, `$ref`s followed, or None if none does."""
    file, node = name, load_schema(name)
    for part in path:
        file, node = expand(node, file)
        if isinstance(part, int):
            node = node.get("items")
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
        if node is None:
            return None
    return expand(node, file)


def subschema_at(name: str, path: FieldPath) -> dict | None:
    """The schema that governs the value at `path` (following $ref), or None if none does."""
    found = _at(name, path)
    return found[1] if found else None


def properties(name: str, *path: str) -> dict[str, dict]:
    """The `properties` of the object at `path` (e.g. `properties(FLEET_SCHEMA, "gateway")`), each expanded."""
    file, node = _at(name, path) or (name, {})
    return {k: expand(v, file)[1] for k, v in node.get("properties", {}).items()}


def defaults_of(name: str, *path: str) -> dict[str, Any]:
    """`default` of each property of the object at `path`, nested objects included (only what has one)."""
    out: dict[str, Any] = {}
    for key, prop in properties(name, *path).items():
        if "default" in prop:
            out[key] = prop["default"]
        elif prop.get("type") == "object" and "properties" in prop:
            out[key] = defaults_of(name, *path, key)
    return out


@functools.cache
def schema_defaults() -> dict[str, Any]:
    """The `default` of every deployment field, nested as the YAML is, read from the schema."""
    return defaults_of(DEPLOYMENT_SCHEMA)


def gateway_defaults() -> dict[str, Any]:
    """The `default` of every field of fleet.yaml's `gateway` (None where the schema has none)."""
    return {k: p.get("default") for k, p in properties(FLEET_SCHEMA, "gateway").items()}


@functools.cache
def _sections() -> dict[str, str]:
    out: dict[str, str] = {}
    for section in SECTIONS:
        for prop in properties(DEPLOYMENT_SCHEMA, section):
            out.setdefault(prop, section)
    return out


def section_of(key: str) -> str | None:
    """Which section a field name belongs to (`scaledown_window` -> `scaling`), for misplaced keys."""
    return _sections().get(key)


def walk(name: str) -> Iterator[tuple[str, dict]]:
    """(JSON pointer, schema) of every schema object in a file, depth first (no `$ref` following)."""

    def go(node: Any, pointer: str) -> Iterator[tuple[str, dict]]:
        if isinstance(node, dict):
            yield pointer, node
            for k, v in node.items():
                yield from go(v, f"{pointer}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from go(v, f"{pointer}/{i}")

    yield from go(load_schema(name), "")


# --- the validator ---------------------------------------------------------------------------------


def ecma_pattern(pattern: str) -> str:
    """An ECMA-262 pattern for Python's `re`: `$` outside a character class becomes `\\Z`.

    Without the multiline flag ECMA's `$` matches only at the end of the input; Python's `$` also
    matches before a final newline. Escapes and character classes are copied as they are.
    """
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":  # `[]...]`: a leading `]` is a member in Python
                out.append("[]")
                i += 2
                continue
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


@functools.cache
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_pattern(pattern))


def matches(pattern: str, value: str) -> bool:
    """Whether `value` matches a schema `pattern` as an ECMA-262 engine (and an editor) would decide."""
    return compiled_pattern(pattern).search(value) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker: Any, instance: Any) -> bool:
    if isinstance(instance, bool) or not isinstance(instance, (int, float)):
        return False
    return not isinstance(instance, float) or math.isfinite(instance)


@functools.cache
def validator_class() -> Any:
    """Draft 2020-12, with integers that are never floats, finite numbers and ECMA `$` in patterns."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    return validators.extend(Draft202012Validator, validators={"pattern": _pattern}, type_checker=checker)


@functools.cache
def validator(name: str, fragment: str = "") -> Any:
    """A compiled validator for a schema file, or for one of its parts by JSON pointer (`/$defs/gpu`)."""
    from referencing import Registry, Resource

    registry = Registry().with_resources((n, Resource.from_contents(load_schema(n))) for n in SCHEMAS)
    schema = (
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{name}#{fragment}"}
        if fragment
        else load_schema(name)
    )
    return validator_class()(schema, registry=registry)


# --- units the schema defines ----------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(value: int | str) -> int:
    """Seconds in `900`, `"15m"`, `"1h30m"` or `"90s"`. The schema has already checked the form."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _DURATION.fullmatch(value) if isinstance(value, str) and value else None
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def format_duration(seconds: int) -> str:
    """900 -> "15m", 5400 -> "1h30m", 90 -> "1m30s": as the YAML would write it (`parse_duration`'s inverse)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return text or "0s"
