"""`fleetform explain NAME`: every resolved field of one deployment and where its value came from."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from typing import Any

from renderer.cli.common import RAW, add_common, one, resolve_args
from renderer.cli.output import ExitCode, TextReporter, literal


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show a deployment's resolved values and where each came from",
        description="Print every field of one resolved deployment with the file:line:column it came "
        "from: the deployment file, fleet.yaml defaults, an environment's overrides, "
        "or the schema's default.",
        epilog="example:\n  fleetform explain llama-3-3-70b-fp8 --env prod",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    p.add_argument("name", help="the deployment to explain")
    add_common(p, ("text", "json"))
    p.set_defaults(func=run)


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9._/:@+-]*|[0-9][A-Za-z0-9.-]*[A-Za-z][A-Za-z0-9.-]*")  # 10m, not 10 or 1e3
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"})


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.lower().startswith(("0x", "0o", "0b"))
    return True


def yaml_value(value: Any) -> str:
    """A value as YAML writes it (flow style): `false`, `null`, `[a, b]`, a string quoted only where YAML
    would read it as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS and not _number(value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_value(str(k))}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass
class Explanation:
    deployment: Any
    fleet_env: str | None
    rows: list  # (path, value, Mark or None)
    exit_code: int = ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        from renderer.diagnostics import format_path

        return {
            "name": self.deployment.name,
            "fleet_env": self.fleet_env,
            "fields": [
                {
                    "path": format_path(p),
                    "value": v,
                    "from": None if m is None else {"file": m.file, "line": m.line, "column": m.col},
                }
                for p, v, m in self.rows
            ],
        }

    def render(self, console: Any) -> None:
        from rich.table import Table

        from renderer.diagnostics import format_path

        d = self.deployment
        title = f"{d.name}" + (f" (env: {self.fleet_env})" if self.fleet_env else "")
        table = Table(title=literal(title), title_justify="left")
        table.add_column("field")
        table.add_column("value")
        table.add_column("from")
        for path, value, mark in self.rows:
            table.add_row(
                literal(format_path(path)),
                literal(yaml_value(value)),
                literal(str(mark) if mark else "default (schema)"),
            )
        console.print(table)
        console.print(literal("vLLM command: " + " ".join(d.argv)), style="dim")


def run(args: argparse.Namespace, report: TextReporter) -> Explanation:
    resolved = resolve_args(args, report)
    d = one(resolved, args.name)
    return Explanation(d, resolved.fleet_env, resolved.explain(d.name))
