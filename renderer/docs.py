"""docs/schema.md, generated from the JSON Schemas in schema/, so the reference cannot drift from them.

    python -m renderer.docs            write docs/schema.md
    python -m renderer.docs --check    exit 1 if docs/schema.md is not what would be written

The schemas are the single source of every field's type, default, description and examples (the
same text editors show on hover through `yaml-language-server`); this module only lays them out:
one table per section (field, type, default, description, examples), sections nested as the YAML
is. A test fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from renderer.config.schema import DEPLOYMENT_SCHEMA, FLEET_SCHEMA, SchemaFiles, shipped

DEFAULT_OUT = Path("docs") / "schema.md"

# Named definitions shown by name instead of spelled out again in every row.
_NAMED_TYPES = {
    "duration": "[duration](#duration)",
    "gpu_type": "[GPU type](#gpu-type)",
    "resource_name": "Modal object name",
    "environment_name": "environment name",
    "overlay": "[partial deployment](#partial-deployments-defaults-and-overrides)",
}


class _Schemas(SchemaFiles):
    """Both schema files (the shipped ones, or those in `schema_dir`), read by the one schema reader."""

    def __init__(self, schema_dir: Path | None = None) -> None:
        super().__init__(dict(shipped().files) if schema_dir is None else SchemaFiles.from_dir(schema_dir).files)

    def expand(self, prop: dict, current: str) -> tuple[dict, str | None, str]:  # type: ignore[override]
        """A property with its `$ref` merged in (the property's own keys win): (schema, def name, file)."""
        if "$ref" not in prop:
            return prop, None, current
        name = self.target(prop["$ref"], current)[1]
        file, merged = super().expand(prop, current)
        return merged, name, file


# --- cells ----------------------------------------------------------------------------------------------


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) and value and value.strip() == value else json.dumps(value)
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _bounds(s: dict) -> str:
    parts = []
    if "minimum" in s:
        parts.append(f">= {s['minimum']}")
    if "exclusiveMinimum" in s:
        parts.append(f"> {s['exclusiveMinimum']}")
    if "maximum" in s:
        parts.append(f"<= {s['maximum']}")
    if "maxLength" in s:
        parts.append(f"at most {s['maxLength']} characters")
    return f" ({', '.join(parts)})" if parts else ""


def type_text(schemas: _Schemas, prop: dict, file: str, link: str | None = None) -> str:
    """A short type for the table: `integer (>= 1, <= 8)`, `one of a, b`, `list of string`, ..."""
    s, name, file = schemas.expand(prop, file)
    if name in _NAMED_TYPES:
        return _NAMED_TYPES[name]
    if "enum" in s:
        return "one of " + ", ".join(_code(v) for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(type_text(schemas, alt, file) for alt in s["anyOf"])
    kind = s.get("type")
    if kind == "array":
        items, item_name, item_file = schemas.expand(s.get("items", {}), file)
        if items.get("type") == "object" and "properties" in items:
            what = f"[objects]({link})" if link else "objects"
        else:
            what = type_text(schemas, s.get("items", {}), file)
        return f"list of {what}" + (", unique" if s.get("uniqueItems") else "")
    if kind == "object":
        if "properties" in s:
            return f"[object]({link})" if link else "object"
        extra = s.get("additionalProperties")
        if isinstance(extra, dict):
            value_link = link if schemas.expand(extra, file)[0].get("properties") else None
            return f"map of name to {type_text(schemas, extra, file, value_link)}"
        return "object"
    if kind == "boolean":
        return "`true` or `false`"
    return f"{kind or 'any'}{_bounds(s)}"


# --- sections -------------------------------------------------------------------------------------------


class _Doc:
    def __init__(self, schemas: _Schemas):
        self.schemas = schemas
        self.sections: list[str] = []

    def section(
        self,
        title: str,
        level: int,
        schema: dict,
        file: str,
        required: Sequence[str],
        prefix: str,
        intro: str | None = None,
    ) -> None:
        """One heading and table for an object's properties; nested objects get their own section after."""
        lines = [f"{'#' * level} {title}", ""]
        text = intro if intro is not None else schema.get("description")
        if text:
            lines += [text, ""]
        lines += ["| Field | Type | Default | Description | Examples |", "| --- | --- | --- | --- | --- |"]
        nested: list[tuple] = []
        for key, prop in schema["properties"].items():
            s, name, pfile = self.schemas.expand(prop, file)
            child = self._child(s, name, pfile)
            link = None
            if child is not None:
                child_title = f"`{prefix}{key}{child[0]}`"
                link = "#" + anchor(child_title)
                required_here = [*prop.get("required", []), *child[1].get("required", [])]
                nested.append((child_title, child[1], child[2], required_here))
            lines.append(
                "| "
                + " | ".join(
                    (
                        f"`{key}`",
                        _cell(type_text(self.schemas, prop, file, link)),
                        self._default(s, key in required),
                        _cell(s.get("description", "")),
                        "<br>".join(_code(e) for e in s.get("examples", [])),
                    )
                )
                + " |"
            )
        self.sections.append("\n".join(lines) + "\n")
        for child_title, child_schema, child_file, child_required in nested:
            self.section(
                child_title,
                min(level + 1, 4),
                child_schema,
                child_file,
                child_required,
                child_title.strip("`").replace("[]", "").replace(".NAME", "") + ".",
            )

    def _child(self, s: dict, name: str | None, file: str) -> tuple[str, dict, str] | None:
        """(title suffix, schema, file) of a nested object that gets its own section, if any."""
        if name in _NAMED_TYPES:
            return None
        if s.get("type") == "object" and "properties" in s:
            return "", s, file
        if s.get("type") == "array":
            items, _, ifile = self.schemas.expand(s.get("items", {}), file)
            if items.get("type") == "object" and "properties" in items:
                return "[]", items, ifile
        extra = s.get("additionalProperties")
        if s.get("type") == "object" and isinstance(extra, dict):
            value, vname, vfile = self.schemas.expand(extra, file)
            if vname not in _NAMED_TYPES and value.get("type") == "object" and "properties" in value:
                return ".NAME", value, vfile
        return None

    @staticmethod
    def _default(s: dict, required: bool) -> str:
        if required:
            return "**required**"
        if "default" in s:
            return _code(s["default"])
        return "-"


# --- the document ------------------------------------------------------------------------------------------


HEADER = """\
<!-- Generated by `python -m renderer.docs` from schema/deployment.schema.json and schema/fleet.schema.json.
     Do not edit: edit the schemas, then run it again (a test fails when this file is stale). -->

# Schema reference

Every field of a deployment file (`deployments/NAME.yaml`, one deployment each) and of the fleet
file (`deployments/fleet.yaml`). Values are merged in this order, later wins: the defaults below,
then fleet.yaml `defaults`, then the deployment file, then fleet.yaml `environments.ENV.overrides`
(with `--env ENV`), then the deployment's own `environments.ENV`. Maps merge key by key; scalars and lists
replace. `fleetform explain NAME` shows every resolved value and where it came from.

"-" in the Default column means unset: the field is left out and the description says what that
means (usually: vLLM's or Modal's own default).
"""


def _shared_types(schemas: _Schemas) -> str:
    defs = schemas.files[DEPLOYMENT_SCHEMA]["$defs"]
    gpu = defs["gpu_type"]
    base = [v for v in gpu["enum"] if not v.endswith("!")]
    lines = [
        "## Shared types",
        "",
        "### Duration",
        "",
        defs["duration"]["description"],
        "",
        "### GPU type",
        "",
        gpu["description"],
        "",
        "One of: " + ", ".join(_code(v) for v in base) + "; each may end in `!`.",
        "",
        "### Partial deployments (defaults and overrides)",
        "",
        defs["overlay"]["description"],
        "It takes the same sections as a deployment file: "
        + ", ".join(
            f"[`{k}`](#{anchor('`' + k + '`')})" if k in _SECTION_KEYS else f"`{k}`"
            for k in defs["overlay"]["properties"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


_SECTION_KEYS = frozenset({"model", "gpu", "scaling", "engine", "image", "cache", "auth"})


def render_schema_markdown(schema_dir: Path | None = None) -> str:
    """The whole of docs/schema.md, from the schemas fleetform loads (or those in `schema_dir`)."""
    schemas = _Schemas(schema_dir)
    deployment = schemas.files[DEPLOYMENT_SCHEMA]
    fleet = schemas.files[FLEET_SCHEMA]
    doc = _Doc(schemas)
    doc.section(
        "Deployment file",
        2,
        deployment,
        DEPLOYMENT_SCHEMA,
        deployment.get("required", []),
        "",
        deployment.get("description"),
    )
    doc.section(
        "Fleet file: `fleet.yaml`", 2, fleet, FLEET_SCHEMA, fleet.get("required", []), "", fleet.get("description")
    )
    body = "\n".join(doc.sections)
    return HEADER + "\n" + body + "\n" + _shared_types(schemas)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renderer.docs", description="Write docs/schema.md from schema/.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default: docs/schema.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    parser.add_argument(
        "--schema-dir",
        type=Path,
        metavar="DIR",
        help="read the schemas from DIR (default: the ones fleetform validates with)",
    )
    args = parser.parse_args(argv)
    text = render_schema_markdown(args.schema_dir)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(f"stale: {args.out}; run `python -m renderer.docs` and commit the result", file=sys.stderr)
            return 1
        print(f"ok: {args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
