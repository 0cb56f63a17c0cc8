"""The CLI's one output layer: exit codes, the one error type, and one reporter per `--format`.

Commands return a result (an object with `to_dict()`, `render(console)` and `exit_code`, plus
`github(out)` where `--format github` applies) or raise `CliError`; `main` picks the reporter once
from `--format` and hands it either. Nothing below the CLI prints or returns exit codes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Any, TextIO


class ExitCode(IntEnum):
    """Stable exit codes, for CI."""

    OK = 0
    INVALID = 1  # invalid input, or a failed deploy / test / bench
    USAGE = 2  # bad flags, an unknown environment
    CHANGES = 2  # plan --detailed-exitcode: changes pending
    INTERRUPTED = 130


class CliError(Exception):
    """Stop the command: `main` reports it once, through the reporter of `--format`, and exits with `code`.

    `message` is printed as `error: MESSAGE` on stderr (`plain=True`: as it is, e.g. a summary line);
    `doc`, when given, is the JSON document `--format json` prints on stdout instead of nothing.
    """

    def __init__(
        self, message: str | None, code: int = ExitCode.INVALID, *, doc: dict | None = None, plain: bool = False
    ):
        super().__init__(message or "")
        self.message = message
        self.code = int(code)
        self.doc = doc
        self.plain = plain


def dumps(obj: object) -> str:
    """The one JSON writer: always valid JSON (no NaN or Infinity); a value that is not finite is a CliError."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise CliError(
            "cannot write the JSON output: a number in it is not finite (NaN or infinity); "
            "check the numbers the fleet declares, e.g. fleet.yaml `prices`"
        ) from None


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A terminal: rich measures it. Piped: COLUMNS when set (rich reads it), else 160, since a pipe or
    # a CI log is not an 80-column terminal; tables too wide for the width fall back to narrower layouts.
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() or columns.isdigit() else 160
    return Console(stderr=stderr, highlight=False, width=width)


def literal(value: object) -> Any:
    """User, model or server text as a rich renderable that shows exactly that text: markup such as
    `[red]` or `[/bold]` in it is printed, never interpreted."""
    from rich.text import Text

    return Text(str(value))


def money(v: float | None) -> str:
    """$1,234.50; never `$-0.00` (a price that rounds to zero is $0.00)."""
    return "no limit" if v is None else f"${round(v, 2) + 0.0:,.2f}"


# --- reporters ----------------------------------------------------------------------------------------------


class TextReporter:
    """Tables and lines for people: results on stdout, diagnostics and errors on stderr."""

    name = "text"

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, environ: Mapping[str, str] | None = None):
        self._out, self._err = out, err
        self.environ = os.environ if environ is None else environ

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def diagnostics(self, diags: Iterable[Any]) -> None:
        from renderer.diagnostics import format_text

        for d in diags:
            print(format_text(d), file=self.err)

    def error(self, exc: CliError) -> None:
        if exc.message:
            print(exc.message if exc.plain else f"error: {exc.message}", file=self.err)

    def result(self, result: Any, *, stderr: bool = False) -> int:
        if hasattr(result, "text"):  # a plain-text result: written as it is
            self.out.write(result.text())
        else:
            result.render(console(stderr=stderr))
        return int(result.exit_code)


class JsonReporter(TextReporter):
    """One JSON document on stdout; diagnostics go inside it, errors also as one line on stderr."""

    name = "json"

    def diagnostics(self, diags: Iterable[Any]) -> None:
        pass

    def error(self, exc: CliError) -> None:
        doc = None if exc.doc is None else dumps(exc.doc)
        if exc.message and not (exc.plain and doc is not None):  # a summary line is the document's to give
            super().error(exc)
        if doc is not None:
            print(doc, file=self.out)

    def result(self, result: Any, *, stderr: bool = False) -> int:
        if getattr(result, "to_dict", None) is None:  # a result with no JSON form prints as text
            return super().result(result, stderr=stderr)
        text = dumps(result.to_dict())
        self.out.write(text + "\n")
        self.out.flush()
        return int(result.exit_code)


class GithubReporter(TextReporter):
    """GitHub Actions workflow commands (annotations) on stdout, and a Markdown step summary."""

    name = "github"

    def diagnostics(self, diags: Iterable[Any]) -> None:
        from renderer.diagnostics import format_github

        for d in diags:
            print(format_github(d), file=self.out)

    def result(self, result: Any, *, stderr: bool = False) -> int:
        result.github(self)
        return int(result.exit_code)


REPORTERS: dict[str, type[TextReporter]] = {r.name: r for r in (TextReporter, JsonReporter, GithubReporter)}
FORMATS = tuple(REPORTERS)


def reporter(
    fmt: str | None, out: TextIO | None = None, err: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> TextReporter:
    return REPORTERS[fmt or "text"](out, err, environ)


def drive(report: TextReporter, command: Callable[[], Any]) -> int:
    """Run a command and report what it returns (a result, or an exit code once it printed) or raises."""
    try:
        outcome = command()
        return int(outcome) if isinstance(outcome, int) else report.result(outcome)
    except CliError as exc:
        report.error(exc)
        return exc.code
