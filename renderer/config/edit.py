"""Set scalar values in a YAML file in place, keeping everything else byte for byte.

Used by `fleetform tune --write`. The positions come from the loader (`load.Node` marks), so only the
bytes of the replaced scalars change: comments, key order, quoting and blank lines stay. A key missing
from an existing block mapping is inserted after that mapping's last scalar entry (its indentation
copied); a missing mapping is appended at the end of the file. Values are numbers or strings; a string
is written plain when YAML reads it back as the same string (`fp8`), else double-quoted, and a quoted
string it replaces keeps its quotes. Flow mappings (`scaling: {a: 1}`), a number over a quoted value,
and values that are not plain scalars are refused with an `EditError` naming their position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from renderer.config.load import LoadError, Node, load_text


class EditError(ValueError):
    """The file cannot be edited in place; the message starts with file:line:col."""


def _scalar_end(line: str, col0: int) -> int:
    """End (exclusive) of the plain scalar starting at `col0`: before a ` #` comment or trailing space."""
    rest = line[col0:]
    cut = len(rest)
    for i, ch in enumerate(rest):
        if ch == "#" and i > 0 and rest[i - 1] in " \t":
            cut = i
            break
    return col0 + len(rest[:cut].rstrip())


_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf"}

Value = int | float | str


def _format(value: Value) -> str:
    if isinstance(value, str):
        plain = _PLAIN_WORD.match(value) and value.lower().lstrip(".") not in _YAML_WORDS
        return value if plain else json.dumps(value)
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _quoted_end(line: str, start: int) -> int | None:
    """End (exclusive) of the one-line quoted scalar that starts at `start`, or None (it goes on)."""
    quote, i = line[start], start + 1
    while i < len(line):
        if quote == '"' and line[i] == "\\":
            i += 2
            continue
        if line[i] == quote:
            if quote == "'" and line[i + 1 : i + 2] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    return None


def _requote(value: str, quote: str) -> str:
    return json.dumps(value) if quote == '"' else "'" + value.replace("'", "''") + "'"


def set_values(path: str, text: str, section: str, values: Mapping[str, Value]) -> str:
    """`text` with `section.key: value` set for each of `values`; raise EditError where it cannot."""
    try:
        doc = load_text(path, text.encode("utf-8"))
    except LoadError as exc:
        raise EditError(str(exc.diagnostics[0].mark) + ": " + exc.diagnostics[0].message) from None
    lines = text.splitlines(keepends=True)
    root = doc.root
    assert isinstance(root.value, dict)
    mapping = root.value.get(section)
    if mapping is None:
        newline = "\n"
        block = f"{section}:{newline}" + "".join(f"  {k}: {_format(v)}{newline}" for k, v in values.items())
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    if not isinstance(mapping.value, dict):
        raise EditError(f"{root.key_marks[section] if root.key_marks else mapping.mark}: `{section}` is not a mapping")
    first_key = next(iter(mapping.key_marks.values()), None) if mapping.key_marks else None
    start_line = lines[mapping.mark.line - 1] if mapping.mark.line <= len(lines) else ""
    if start_line[mapping.mark.col - 1 : mapping.mark.col] == "{":
        raise EditError(f"{mapping.mark}: `{section}` is a flow mapping ({{...}}); write it as a block to edit it")
    edits: list[tuple[int, int, int, str]] = []  # (line index, start col, end col, new text)
    inserts: list[str] = []
    for key, value in values.items():
        node: Node | None = mapping.value.get(key)
        if node is None:
            inserts.append(key)
            continue
        if isinstance(node.value, (dict, list)) or node.value is None or isinstance(node.value, bool):
            raise EditError(f"{node.mark}: `{section}.{key}` is not a number or a word; set it by hand")
        line = lines[node.mark.line - 1]
        start = node.mark.col - 1
        first = line[start : start + 1]
        if first in ("'", '"') and isinstance(value, str) and isinstance(node.value, str):
            end = _quoted_end(line, start)
            if end is None:
                raise EditError(f"{node.mark}: `{section}.{key}` spans lines; set it by hand")
            edits.append((node.mark.line - 1, start, end, _requote(value, first)))
            continue
        if first in ("'", '"', "&", "!", "|", ">"):
            raise EditError(f"{node.mark}: `{section}.{key}` is quoted or tagged; set it by hand")
        edits.append((node.mark.line - 1, start, _scalar_end(line.rstrip("\r\n"), start), _format(value)))
    for idx, start, end, new in sorted(edits, reverse=True):
        lines[idx] = lines[idx][:start] + new + lines[idx][end:]
    if inserts:
        if first_key is None:
            raise EditError(f"{mapping.mark}: `{section}` is empty; add the keys by hand")
        indent = " " * (first_key.col - 1)
        # After the last key whose value is a scalar on its own line (nested values span more lines).
        after = max(
            (
                m.line
                for k, m in mapping.key_marks.items()
                if not isinstance(mapping.value[k].value, (dict, list)) and mapping.value[k].mark.line == m.line
            ),
            default=first_key.line - 1,
        )
        eol = "\r\n" if lines[after - 1].endswith("\r\n") else "\n"
        if after >= 1 and not lines[after - 1].endswith(("\n", "\r")):
            lines[after - 1] += "\n"
        new_lines = [f"{indent}{k}: {_format(values[k])}{eol}" for k in inserts]
        lines[after:after] = new_lines
    return "".join(lines)
