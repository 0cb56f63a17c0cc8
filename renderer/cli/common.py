"""What several commands share: the common options, load -> validate -> resolve, render, number types."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from renderer.cli.output import FORMATS, CliError, ExitCode, TextReporter

DEFAULT_PATHS = ["deployments"]
RAW = argparse.RawDescriptionHelpFormatter


def add_common(p: argparse.ArgumentParser, formats: tuple[str, ...] = FORMATS) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="deployment files or folders (default: deployments/); fleet.yaml in a folder holds defaults",
    )
    p.add_argument("--env", metavar="ENV", help="apply the overrides of this environment from fleet.yaml")
    p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")


# --- number types: every float or int option is finite and in range, or a usage error ----------------------


def number(kind: type, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive(kind: type = float) -> Callable[[str], Any]:
    """A number above 0 (a timeout, a rate, a count)."""

    def parse(text: str) -> Any:
        value = number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative(kind: type = int) -> Callable[[str], Any]:
    """A number of at least 0 (a seed)."""

    def parse(text: str) -> Any:
        value = number(kind, text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
        return value

    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text!r}")
    return value


def port(text: str) -> int:
    value = number(int, text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {text!r}")
    return value


def output_file(text: str) -> str:
    """argparse type of an option naming a file that a command writes when its long work is done
    (`bench --output`, `tune --plot`): checked while the options are read, so the work never ends in
    a file it cannot write. Its folder must exist, and what is there already must be a regular file
    (`codegen.write.write_file` replaces it in one rename); a folder, FIFO or device is refused, never
    written to nor replaced."""
    path = Path(text)
    if os.path.lexists(path) and not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: there is no folder {str(path.parent)!r}")
    return text


def positive_list(kind: type) -> Callable[[str], list]:
    """Comma-separated numbers, each above 0: `1,16,64`."""
    one = positive(kind)

    def parse(text: str) -> list:
        parts = [x.strip() for x in text.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        try:
            return [one(x) for x in parts]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers above 0, got {text!r} ({exc})"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


# --- load -> validate -> resolve -> render --------------------------------------------------------------------


def resolve_fleet(
    paths: list[str] | None,
    env: str | None,
    report: TextReporter,
    *,
    usage: int = ExitCode.USAGE,
    invalid: str = "nothing was rendered or deployed",
    title: str | None = None,
    on_invalid: Callable | None = None,
) -> Any:
    """load -> validate -> resolve; reports diagnostics; raises CliError on errors (`usage`: the code for
    no files or an unknown environment)."""
    from renderer.config.load import load_fleet
    from renderer.config.resolve import UnknownEnvironment, resolve

    paths = list(paths or DEFAULT_PATHS)
    loaded = load_fleet(paths)
    if not loaded.deployments and not loaded.diagnostics:
        raise CliError(f"no deployment files (*.yaml) in {' '.join(paths)}", usage)
    try:
        resolved = resolve(loaded, env)
    except UnknownEnvironment as exc:
        raise CliError(str(exc), usage) from None
    report.diagnostics(resolved.diagnostics)
    if not resolved.ok:
        from renderer.diagnostics import diagnostics_json

        if on_invalid is not None:
            on_invalid(resolved)
        n = sum(d.is_error for d in resolved.diagnostics)
        raise CliError(
            f"{n} error(s){f' in {title}' if title else ''}; {invalid}",
            ExitCode.INVALID,
            plain=True,
            doc={"ok": False, "diagnostics": diagnostics_json(resolved.diagnostics)},
        )
    return resolved


def resolve_args(args: argparse.Namespace, report: TextReporter) -> Any:
    return resolve_fleet(args.paths, getattr(args, "env", None), report)


def render_apps(resolved: Any) -> list:
    from renderer.codegen.render import RenderError, render_fleet

    try:
        return render_fleet(resolved.deployments)
    except RenderError as exc:
        raise CliError(str(exc)) from None


def one(resolved: Any, name: str) -> Any:
    for d in resolved.deployments:
        if d.name == name:
            return d
    from renderer.diagnostics import did_you_mean

    hint = did_you_mean(name, [d.name for d in resolved.deployments])
    raise CliError(f"no deployment named {name!r}" + (f"; {hint}" if hint else ""), ExitCode.USAGE)


def gateway(resolved: Any) -> Any:
    """The fleet's gateway module (`RenderedGateway`) when fleet.yaml enables it, else None. Its
    settings were checked by resolve, so rendering it cannot fail on the YAML."""
    if resolved.gateway is None:
        return None
    from renderer.codegen.gateway import render_gateway

    return render_gateway(resolved.deployments, resolved.gateway, source=resolved.fleet_file)


def backend() -> Any:
    """The Modal backend, looked up on its module at call time so tests can swap in a fake."""
    from renderer import modal_api

    return modal_api.default_backend()


class LazyChoices:
    """argparse `choices` read from a library constant only when argparse needs them (a value to
    check, or --help), so building the parser imports nothing beyond the standard library."""

    def __init__(self, load: Callable[[], Any]):
        self._load, self._values = load, None

    def _all(self) -> tuple:
        if self._values is None:
            self._values = tuple(self._load())
        return self._values

    def __contains__(self, value: object) -> bool:
        return value in self._all()

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def schema_enum(*path: str) -> LazyChoices:
    """The `enum` of a deployment-schema property, e.g. schema_enum("model", "quantization")."""

    def load() -> list:
        from renderer.config.schema import DEPLOYMENT_SCHEMA, subschema_at

        return list((subschema_at(DEPLOYMENT_SCHEMA, path) or {})["enum"])

    return LazyChoices(load)
