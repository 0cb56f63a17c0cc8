"""One diagnostic type for every stage, and the reporters that print them.

Every problem fleetform finds in user input becomes a `Diagnostic`: where (file, line, column),
which field (a path into the document), what went wrong, and a hint. Stages return lists of them
instead of raising, so a run reports every problem at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

PathPart = str | int
Path = tuple[PathPart, ...]


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in a source file; line and column count from 1. Line 0: not a file but a command-line
    option, named by `file` (`--engine max_num_seqs=abc`), and printed as just that."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return self.file if self.line == 0 else f"{self.file}:{self.line}:{self.col}"

    @classmethod
    def option(cls, text: str) -> Mark:
        """Where a value given on the command line came from: the option as it was written."""
        return cls(text, 0, 0)


@dataclass(frozen=True)
class Diagnostic:
    mark: Mark
    path: Path
    message: str
    code: str
    severity: Severity = Severity.ERROR
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple:
        return (self.mark.file, self.mark.line, self.mark.col, self.code)

    def to_dict(self) -> dict:
        return {
            "file": self.mark.file,
            "line": self.mark.line,
            "column": self.mark.col,
            "path": format_path(self.path),
            "pointer": json_pointer(self.path),
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


def format_path(path: Sequence[PathPart]) -> str:
    """`("scaling", "max_containers")` -> `scaling.max_containers`; list indexes as `[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = part if len(part) <= 80 else f"{part[:79]}…({len(part)} characters)"  # a pasted blob as a key
            out += f".{part}" if out else str(part)
    return out or "(document)"


def json_pointer(path: Sequence[PathPart]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A "did you mean" hint for a near miss, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    if not matches:
        # Case or separator slips ("ScaleDown-Window") are near misses too.
        norm = {c.lower().replace("-", "_"): c for c in choices}
        hit = norm.get(word.lower().replace("-", "_"))
        matches = [hit] if hit else []
    return f'did you mean "{matches[0]}"?' if matches else None


# --- reporters -------------------------------------------------------------------------------


def format_text(diag: Diagnostic) -> str:
    line = f"{diag.mark}: {diag.severity.value}: {format_path(diag.path)}: {diag.message}"
    if diag.hint:
        line += f"\n    hint: {diag.hint}"
    return line


def _github_escape(value: str, *, prop: bool = False) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        value = value.replace(":", "%3A").replace(",", "%2C")
    return value


def format_github(diag: Diagnostic) -> str:
    """A GitHub Actions workflow command that annotates the file in the pull request."""
    kind = "error" if diag.is_error else "warning"
    msg = f"{format_path(diag.path)}: {diag.message}"
    if diag.hint:
        msg += f" ({diag.hint})"
    props = (
        f"file={_github_escape(diag.mark.file, prop=True)},line={diag.mark.line},"
        f"col={diag.mark.col},title={_github_escape('fleetform ' + diag.code, prop=True)}"
    )
    return f"::{kind} {props}::{_github_escape(msg)}"


def diagnostics_json(diags: Iterable[Diagnostic]) -> list[dict]:
    return [d.to_dict() for d in diags]
