"""Stage 1: YAML text -> a tree of nodes that remember where they came from.

PyYAML composes the document (libyaml when available); this module then builds plain values from
the composed nodes itself, so that it can keep every node's file:line:column and refuse what YAML
1.1 would silently turn into something else: `yes`/`no`/`on`/`off` as booleans, `0755` as octal,
`1:30` as sexagesimal, unquoted dates, duplicate keys, merge keys, custom tags. Aliases are
allowed, but a document may expand to at most `MAX_NODES` nodes (the "billion laughs" bomb), may
not refer to itself, and may nest at most `MAX_DEPTH` levels. Every problem is a positioned
`Diagnostic`; no input makes the loader raise anything but `LoadError`.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from renderer.diagnostics import Diagnostic, Mark, Severity
from renderer.diagnostics import Path as FieldPath

MAX_BYTES = 1 << 20  # 1 MiB: a deployment is a page of YAML; anything bigger is a mistake
MAX_NODES = 100_000
MAX_DEPTH = 64  # a deployment with an environment overlay nests 6 levels; hundreds would crash Python
MAX_INT_DIGITS = 30  # far beyond any count, port or size; Python refuses to parse over 4,300

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_TAG = "tag:yaml.org,2002:"
_PLAIN_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_HEX_INT = re.compile(r"^[-+]?0x[0-9a-fA-F_]+$")
_PLAIN_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+][0-9]+)?$")


class Node:
    """A value from the document and its position.

    `value` is a `dict[str, Node]`, a `list[Node]`, or a scalar (str, int, float, bool, None).
    For mappings, `key_marks[k]` is where key `k` was written.
    """

    __slots__ = ("value", "mark", "key_marks")

    def __init__(self, value: Any, mark: Mark, key_marks: dict[str, Mark] | None = None):
        self.value = value
        self.mark = mark
        self.key_marks = key_marks

    def plain(self) -> Any:
        """The value with every Node unwrapped: what JSON Schema validates."""
        v = self.value
        if isinstance(v, dict):
            return {k: n.plain() for k, n in v.items()}
        if isinstance(v, list):
            return [n.plain() for n in v]
        return v

    def find(self, path: FieldPath) -> tuple[Node, Mark]:
        """The deepest node along `path` and the best mark for it.

        The mark is the value's own, or, for a key that exists, where the key was written,
        so that errors point at `scaledown_windw:` rather than at its value.
        """
        node, mark = self, self.mark
        for part in path:
            v = node.value
            if isinstance(v, dict) and isinstance(part, str) and part in v:
                mark = node.key_marks[part] if node.key_marks else v[part].mark
                node = v[part]
                if not isinstance(node.value, (dict, list)):
                    mark = node.mark
            elif isinstance(v, list) and isinstance(part, int) and 0 <= part < len(v):
                node = v[part]
                mark = node.mark
            else:
                break
        return node, mark

    def walk(self, path: FieldPath = ()) -> Iterator[tuple[FieldPath, Node]]:
        """Every node under this one, depth first, with its path."""
        yield path, self
        v = self.value
        if isinstance(v, dict):
            for k, n in v.items():
                yield from n.walk((*path, k))
        elif isinstance(v, list):
            for i, n in enumerate(v):
                yield from n.walk((*path, i))


@dataclass(frozen=True)
class Document:
    """One loaded YAML file."""

    path: str  # as the user named it; used in every diagnostic
    root: Node

    @property
    def data(self) -> Any:
        return self.root.plain()


class LoadError(Exception):
    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("; ".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics


def _mark(file: str, m: Any) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


def _err(file: str, m: Any, path: FieldPath, message: str, hint: str | None = None, code: str = "yaml") -> Diagnostic:
    return Diagnostic(_mark(file, m) if not isinstance(m, Mark) else m, path, message, code, hint=hint)


class _Builder:
    """Turns composed PyYAML nodes into `Node`s, collecting every problem on the way."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[Diagnostic] = []
        self.count = 0
        self.active: set[int] = set()  # the collections being built: an alias to one of them is a cycle

    def build(self, node: yaml.Node, path: FieldPath) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise LoadError(
                [
                    _err(
                        self.file,
                        node.start_mark,
                        path,
                        f"document expands to more than {MAX_NODES} nodes",
                        "YAML aliases that repeat each other (a 'billion laughs' document) are refused",
                        code="yaml-too-large",
                    )
                ]
            )
        mark = _mark(self.file, node.start_mark)
        if not isinstance(node, yaml.ScalarNode):
            if id(node) in self.active:
                raise LoadError(
                    [
                        Diagnostic(
                            mark,
                            path,
                            "a YAML alias refers to a collection that contains it",
                            "yaml-recursive",
                            hint="a recursive document has no value; write the value out instead of the alias",
                        )
                    ]
                )
            if len(path) >= MAX_DEPTH:
                raise LoadError(
                    [
                        Diagnostic(
                            mark,
                            path[:3],
                            f"nested more than {MAX_DEPTH} levels deep",
                            "yaml-too-deep",
                            hint="a deployment nests a few levels; check the brackets",
                        )
                    ]
                )
            self.active.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, mark, path)
                return Node([self.build(item, (*path, i)) for i, item in enumerate(node.value)], mark)
            finally:
                self.active.discard(id(node))
        return Node(self._scalar(node, mark, path), mark)

    def _mapping(self, node: yaml.MappingNode, mark: Mark, path: FieldPath) -> Node:
        out: dict[str, Node] = {}
        key_marks: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            kmark = _mark(self.file, key_node.start_mark)
            if key_node.tag == _TAG + "merge":
                self.errors.append(
                    _err(
                        self.file,
                        kmark,
                        (*path, "<<"),
                        "YAML merge keys (<<) are not supported",
                        "put shared values in deployments/fleet.yaml `defaults` instead",
                    )
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
                if isinstance(key_node, yaml.ScalarNode):
                    message, shown = f"key {_cut(key_node.value)!r} is not a string", _cut(key_node.value)
                else:
                    message, shown = "a key must be a string, not a collection", "?"
                self.errors.append(
                    _err(
                        self.file,
                        kmark,
                        (*path, shown),
                        message,
                        f'quote the key ("{shown}")' if shown != "?" else "use a plain name as key",
                        code="yaml-key",
                    )
                )
                continue
            key = key_node.value
            if key in out:
                first = key_marks[key]
                self.errors.append(
                    _err(
                        self.file,
                        kmark,
                        (*path, key),
                        f"duplicate key {key!r}",
                        f"first set at line {first.line}; YAML would silently keep only the last",
                        code="yaml-duplicate-key",
                    )
                )
                continue
            key_marks[key] = kmark
            out[key] = self.build(value_node, (*path, key))
        return Node(out, mark, key_marks)

    def _scalar(self, node: yaml.ScalarNode, mark: Mark, path: FieldPath) -> Any:
        tag, text = node.tag, node.value
        if tag == _TAG + "str":
            return text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            self._surprise(
                mark,
                path,
                f"{text!r} is read as the boolean {str(text.lower() in _TRUTHY).lower()} by YAML 1.1",
                f'write true or false, or quote it ("{text}") if you meant the string',
            )
            return text
        if tag == _TAG + "int":
            if _PLAIN_INT.match(text) or _HEX_INT.match(text):
                digits = text.replace("_", "").lstrip("+-").removeprefix("0x")
                if len(digits) > MAX_INT_DIGITS:
                    self.errors.append(
                        Diagnostic(
                            mark,
                            path,
                            f"integer of {len(digits)} digits is too large",
                            "yaml-number",
                            hint="no fleetform field takes a number this big",
                        )
                    )
                    return 0
                return int(text.replace("_", ""), 0) if not _PLAIN_INT.match(text) else int(text.replace("_", ""))
            if ":" in text:
                self._surprise(
                    mark,
                    path,
                    f"{text!r} is read as a base-60 number by YAML 1.1",
                    f'quote it ("{text}"), or for a duration write seconds or "1m30s"',
                )
            elif text.lstrip("+-").startswith("0b"):
                self._surprise(mark, path, f"{text!r} is read as a binary number by YAML 1.1", f'quote it ("{text}")')
            else:
                self._surprise(
                    mark,
                    path,
                    f"{text!r} is read as an octal number by YAML 1.1 (leading zero)",
                    f'drop the leading zero, or quote it ("{text}")',
                )
            return text
        if tag == _TAG + "float":
            if ":" in text:
                self._surprise(mark, path, f"{text!r} is read as a base-60 number by YAML 1.1", f'quote it ("{text}")')
                return text
            if _PLAIN_FLOAT.match(text):
                value = float(text.replace("_", ""))
                if not math.isfinite(value):
                    self.errors.append(
                        Diagnostic(
                            mark,
                            path,
                            f"number {_cut(text)} is too large (infinite as a float)",
                            "yaml-number",
                            hint="no fleetform field takes a number this big",
                        )
                    )
                return value
            self._surprise(mark, path, f"{text!r} is read as a special float by YAML 1.1", f'quote it ("{text}")')
            return text
        if tag == _TAG + "timestamp":
            self._surprise(mark, path, f"{text!r} is read as a date by YAML 1.1", f'quote it ("{text}")')
            return text
        self.errors.append(
            _err(
                self.file,
                mark,
                path,
                f"unsupported YAML tag {tag!r}",
                "fleetform files hold plain strings, numbers, booleans, lists and maps",
                code="yaml-tag",
            )
        )
        return text

    def _surprise(self, mark: Mark, path: FieldPath, message: str, hint: str) -> None:
        self.errors.append(Diagnostic(mark, path, message, "yaml-1.1", hint=hint))


_TRUTHY = ("y", "yes", "on", "true")


def _cut(text: str, limit: int = 40) -> str:
    """A long value shortened for a message."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


# What each kind of file holds, for the messages about a file that holds nothing usable.
_WHAT = {
    "deployment": "a deployment needs at least `name`, `model` and `gpu`",
    "fleet": "fleet.yaml holds fleet-wide settings (`defaults`, `environments`, `prices`, `gateway`); "
    "write at least one, or delete the file",
}
_STARTS = {
    "deployment": "a deployment starts with `name:` on the first line",
    "fleet": "fleet.yaml is a mapping such as `defaults:` or `environments:`",
}


def _decode(file: str, raw: bytes, kind: str) -> str:
    if not raw.strip():
        raise LoadError([Diagnostic(Mark(file, 1, 1), (), "file is empty", "empty-file", hint=_WHAT[kind])])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise LoadError(
            [
                Diagnostic(
                    Mark(file, line, col),
                    (),
                    f"not UTF-8: byte 0x{raw[exc.start]:02x} cannot be decoded",
                    "encoding",
                    hint="save the file as UTF-8",
                )
            ]
        ) from None


def _too_deep(file: str, text: str) -> Diagnostic:
    """Where a document nests deeper than `MAX_DEPTH`, found from the parser's events (which do not recurse)."""
    depth, where = 0, Mark(file, 1, 1)
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    where = _mark(file, event.start_mark)
                    break
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        pass
    return Diagnostic(
        where,
        (),
        f"nested more than {MAX_DEPTH} levels deep",
        "yaml-too-deep",
        hint="a deployment nests a few levels; check the brackets",
    )


def load_text(file: str, raw: bytes, kind: str = "deployment") -> Document:
    """Load one YAML document from bytes; `file` names it in diagnostics; `kind` is "deployment" or
    "fleet" (for the hints). Raises LoadError, and nothing else, whatever the bytes."""
    if len(raw) > MAX_BYTES:
        raise LoadError(
            [
                Diagnostic(
                    Mark(file, 1, 1),
                    (),
                    f"file is {len(raw)} bytes, over the 1 MiB limit",
                    "too-large",
                    hint="one deployment a file; a deployment is a page of YAML",
                )
            ]
        )
    text = _decode(file, raw, kind)
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        where = Mark(file, m.line + 1, m.column + 1) if m else Mark(file, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise LoadError([Diagnostic(where, (), f"invalid YAML: {problem}{context}", "yaml-syntax")]) from None
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        raise LoadError([Diagnostic(Mark(file, 1, 1), (), f"invalid YAML: {exc}", "yaml-syntax")]) from None
    except RecursionError:  # the composer recurses once a level: hundreds of levels exhaust Python's stack
        raise LoadError([_too_deep(file, text)]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise LoadError(
            [
                Diagnostic(
                    Mark(file, 1, 1), (), "file holds no YAML document, only comments", "empty-file", hint=_WHAT[kind]
                )
            ]
        )
    if len(nodes) > 1:
        raise LoadError(
            [
                Diagnostic(
                    _mark(file, nodes[1].start_mark),
                    (),
                    "more than one YAML document in the file",
                    "yaml-multi-document",
                    hint="one deployment a file: split at the `---`"
                    if kind == "deployment"
                    else "fleet.yaml is one document: remove the `---`",
                )
            ]
        )
    builder = _Builder(file)
    root = builder.build(nodes[0], ())
    if builder.errors:
        raise LoadError(builder.errors)
    if not isinstance(root.value, dict):
        got = "a list" if isinstance(root.value, list) else _describe_scalar(root.value)
        raise LoadError(
            [Diagnostic(root.mark, (), f"expected a mapping of fields, got {got}", "not-a-mapping", hint=_STARTS[kind])]
        )
    return Document(file, root)


def load_option(option: str, path: FieldPath, text: str) -> Node:
    """A value given on the command line, as the node YAML would make of `text` written at `path`.

    The scalar rules are the files' own (`64` an integer, `0.9` a number, `fp8` a string, `yes`
    refused as YAML 1.1's boolean); every mark names the option (`Mark.option(option)`). Returns the
    tree from the root: `path` ("engine", "max_num_seqs") gives `{engine: {max_num_seqs: 64}}`. Raises
    LoadError when `text` is not one scalar (a list, a mapping, nothing).
    """
    mark = Mark.option(option)
    try:
        node = yaml.compose(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        node = None
    if not isinstance(node, yaml.ScalarNode):
        raise LoadError(
            [
                Diagnostic(
                    mark,
                    tuple(path),
                    f"expected one value, got {text!r}",
                    "option-value",
                    hint="a number or a word, e.g. max_num_seqs=128 or kv_cache_dtype=fp8",
                )
            ]
        )
    builder = _Builder(option)
    leaf = Node(builder._scalar(node, mark, tuple(path)), mark)
    if builder.errors:
        raise LoadError(builder.errors)
    for key in reversed(path):
        leaf = Node({key: leaf}, mark, {key: mark})
    return leaf


def _describe_scalar(value: Any) -> str:
    return "null" if value is None else f"the {type(value).__name__} {_cut(str(value))!r}"


def _kind_of(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def load_file(path: str | Path, kind: str = "deployment") -> Document:
    """Read and load one file. Missing, unreadable or special files (FIFOs, devices: reading them
    could block forever) raise LoadError too; a special file is never opened."""
    name = str(path)

    def fail(message: str, hint: str | None = None) -> LoadError:
        return LoadError([Diagnostic(Mark(name, 1, 1), (), message, "io", hint=hint)])

    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise fail(
                f"broken symbolic link (to {os.readlink(path)})", "point the link at an existing file, or remove it"
            ) from None
        raise fail("no such file") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail("is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        linked = " (through a symbolic link)" if os.path.islink(path) else ""
        raise fail(
            f"is {_kind_of(info.st_mode)}{linked}, not a regular file",
            "fleetform reads only regular YAML files; remove it or rename it so it does not end in .yaml",
        )
    try:
        # O_NONBLOCK: should the file be swapped for a FIFO after the check, opening it still cannot hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise fail("is not a regular file")
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a file") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    return load_text(name, raw, kind)


# --- finding the fleet's files ---------------------------------------------------------------------

FLEET_FILE = "fleet.yaml"
YAML_SUFFIXES = (".yaml", ".yml")
_FLEET_MISSPELT = ("fleet.yml",)


@dataclass(frozen=True)
class FleetFiles:
    """Which files make up a fleet: the optional fleet.yaml and the deployment files, sorted, and
    what discovery itself found wrong (a misnamed fleet file, YAML files it will not read)."""

    fleet: str | None
    deployments: tuple[str, ...]
    problems: tuple[Diagnostic, ...] = ()


def _unread(folder: Path) -> list[Diagnostic]:
    """A warning for every YAML file below `folder` (a subfolder of a fleet folder): none is read."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(YAML_SUFFIXES) and not f.startswith("."):
                out.append(
                    Diagnostic(
                        Mark(os.path.join(dirpath, f), 1, 1),
                        (),
                        f"not read: it is in a subfolder of {folder.parent}",
                        "not-read",
                        Severity.WARNING,
                        hint=f"fleetform reads only the files directly in {folder.parent}; move it "
                        "there, or name it (or its folder) on the command line",
                    )
                )
    return out


def _misnamed_fleet(path: str) -> Diagnostic:
    return Diagnostic(
        Mark(path, 1, 1),
        (),
        "the fleet file must be named fleet.yaml",
        "fleet-file-name",
        hint=f"rename it: mv {path} {os.path.join(os.path.dirname(path), FLEET_FILE)}",
    )


def discover(paths: list[str]) -> FleetFiles:
    """Expand directories into their YAML files; `fleet.yaml` is the fleet file, the rest are deployments.

    A folder contributes the `*.yaml`/`*.yml` entries directly in it (hidden ones aside), whatever
    they are: a broken link or a FIFO is then reported by `load_file`, never skipped in silence.
    YAML files in its subfolders are not read, with a warning each. With only files named, the fleet
    file is the `fleet.yaml` beside the first of them, if any. Missing paths are kept so that
    loading reports them; a file named twice (in any spelling) is read once.
    """
    fleet: str | None = None
    deployments: list[str] = []
    problems: list[Diagnostic] = []

    def take(path: Path) -> None:
        nonlocal fleet
        if path.name == FLEET_FILE:
            if fleet is None:
                fleet = str(path)
            elif os.path.realpath(fleet) != os.path.realpath(path):
                problems.append(
                    Diagnostic(
                        Mark(str(path), 1, 1),
                        (),
                        f"not read: {fleet} is the fleet file",
                        "not-read",
                        Severity.WARNING,
                        hint="a fleet has one fleet.yaml; validate the folders one at a time",
                    )
                )
        elif path.name in _FLEET_MISSPELT:
            problems.append(_misnamed_fleet(str(path)))
        else:
            deployments.append(str(path))

    for p in paths:
        path = Path(p)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    problems.extend(_unread(child))
                elif child.suffix in YAML_SUFFIXES:
                    take(child)
        else:
            take(path)
    if fleet is None and deployments:
        beside = Path(deployments[0]).parent / FLEET_FILE
        if beside.is_file():
            fleet = str(beside)
    seen: set[str] = set()
    unique = []
    for d in deployments:
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return FleetFiles(fleet, tuple(unique), tuple(problems))


@dataclass(frozen=True)
class LoadedFleet:
    fleet: Document | None
    deployments: tuple[Document, ...]
    diagnostics: tuple[Diagnostic, ...]  # errors: files that could not be loaded, a misnamed fleet file
    # the fleet file's path whether or not it loaded: a fleet.yaml that failed to load is not "no
    # fleet.yaml" (its defaults and environments exist, they just cannot be read)
    fleet_path: str | None = None
    # files found but not read (in subfolders...): `resolve` reports them. Apart from `diagnostics`,
    # so that a folder with nothing but such files still has "no deployment files".
    warnings: tuple[Diagnostic, ...] = ()


def load_fleet(paths: list[str]) -> LoadedFleet:
    """Load every file of the fleet, collecting load errors instead of stopping at the first."""
    files = discover(paths)
    diags: list[Diagnostic] = [d for d in files.problems if d.is_error]
    fleet_doc = None
    if files.fleet:
        try:
            fleet_doc = load_file(files.fleet, "fleet")
        except LoadError as exc:
            diags.extend(exc.diagnostics)
    docs = []
    for f in files.deployments:
        try:
            docs.append(load_file(f))
        except LoadError as exc:
            diags.extend(exc.diagnostics)
    return LoadedFleet(
        fleet_doc, tuple(docs), tuple(diags), files.fleet, tuple(d for d in files.problems if not d.is_error)
    )
