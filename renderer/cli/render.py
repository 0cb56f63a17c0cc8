"""`fleetform render`: one Modal app module per deployment (and the gateway), or `--check` for CI."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from renderer.cli.common import RAW, add_common, gateway, render_apps, resolve_args
from renderer.cli.output import CliError, ExitCode, TextReporter


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "render",
        help="write one Modal app module per deployment",
        description="Render each deployment into a self-contained Modal app module (it imports only "
        "`modal`). Output is deterministic and written all-or-nothing.",
        epilog="example:\n  fleetform render --out build && modal deploy build/NAME.py",
        formatter_class=RAW,
        allow_abbrev=False,
    )
    add_common(p, ("text", "json"))
    p.add_argument("--out", default="build", metavar="DIR", help="output folder (default: build)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if DIR is not what render would write")
    p.set_defaults(func=run)


@dataclass
class Written:
    modules: list
    paths: list = field(default_factory=list)
    exit_code: int = ExitCode.OK

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "path": str(p), "content_hash": m.content_hash}
            for m, p in zip(self.modules, self.paths, strict=True)
        ]

    def text(self) -> str:
        return "".join(f"wrote {p}  ({m.short_hash})\n" for m, p in zip(self.modules, self.paths, strict=True))


@dataclass
class UpToDate:
    modules: int
    out: str
    exit_code: int = ExitCode.OK

    def text(self) -> str:
        return f"ok: {self.modules} module(s) in {self.out} are up to date\n"

    to_dict = None  # --check has no JSON form: it prints this line whatever --format says


def run(args: argparse.Namespace, report: TextReporter) -> Any:
    from renderer.codegen.write import stale, write_all

    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise CliError(f"--out {args.out} is not a folder: name a folder to write the modules into", ExitCode.USAGE)
    resolved = resolve_args(args, report)
    modules = render_apps(resolved)
    gw = gateway(resolved)
    if gw is not None:
        modules.append(gw)
    if args.check:
        problems = stale(modules, args.out)
        if problems:
            raise CliError(
                "\n".join(
                    [
                        *(f"stale: {p}" for p in problems),
                        f"run `fleetform render --out {args.out}` and commit the result",
                    ]
                ),
                plain=True,
            )
        return UpToDate(len(modules), args.out)
    try:
        written = write_all(modules, args.out)
    except OSError as exc:
        raise CliError(f"cannot write to {args.out}: {exc.strerror or exc}; earlier output left as it was") from None
    return Written(modules, list(written))
