"""Stage 1: YAML text -> a tree of nodes that remember where they came from.

PyYAML composes the document (libyaml when available); this module then builds plain values from
the composed nodes itself, so that it can keep every node's file:line:column and refuse what YAML
1.1 would silently turn into something else: `yes`/`no`/`on`/`off` as booleans, `0755` as octal,
`1:30` as sexagesimal, unquoted dates, duplicate keys, merge keys, custom tags. Aliases are
allowed, but a document may expand to at most `MAX_NODES` nodes (the "billion laughs" bomb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from renderer.diagnostics import Diagnostic, Mark, Path as FieldPath

MAX_BYTES = 1 << 20  # 1 MiB: a deployment is a page of YAML; anything bigger is a mistake
MAX_NODES = 100_000

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

    def build(self, node: yaml.Node, path: FieldPath) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise LoadError([_err(self.file, node.start_mark, path,
                                  f"document expands to more than {MAX_NODES} nodes",
                                  "YAML aliases that repeat each other (a 'billion laughs' document) are refused",
                                  code="yaml-too-large")])
        mark = _mark(self.file, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, mark, path)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.build(item, (*path, i)) for i, item in enumerate(node.value)], mark)
        return Node(self._scalar(node, mark, path), mark)

    def _mapping(self, node: yaml.MappingNode, mark: Mark, path: FieldPath) -> Node:
        out: dict[str, Node] = {}
        key_marks: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            kmark = _mark(self.file, key_node.start_mark)
            if key_node.tag == _TAG + "merge":
                self.errors.append(_err(self.file, kmark, path, "YAML merge keys (<<) are not supported",
                                        "put shared values in deployments/fleet.yaml `defaults` instead"))
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a collection"
                self.errors.append(_err(self.file, kmark, path, f"keys must be strings, got {shown!r}",
                                        "quote the key"))
                continue
            key = key_node.value
            if key in out:
                first = key_marks[key]
                self.errors.append(_err(self.file, kmark, (*path, key), f"duplicate key {key!r}",
                                        f"first set at line {first.line}; YAML would silently keep only the last",
                                        code="yaml-duplicate-key"))
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
            self._surprise(mark, path, f"{text!r} is read as the boolean {str(text.lower() in _TRUTHY).lower()} by YAML 1.1",
                           f'write true or false, or quote it ("{text}") if you meant the string')
            return text
        if tag == _TAG + "int":
            if _PLAIN_INT.match(text) or _HEX_INT.match(text):
                return int(text.replace("_", ""), 0) if not _PLAIN_INT.match(text) else int(text.replace("_", ""))
            if ":" in text:
                self._surprise(mark, path, f"{text!r} is read as a base-60 number by YAML 1.1",
                               f'quote it ("{text}"), or for a duration write seconds or "1m30s"')
            elif text.lstrip("+-").startswith("0b"):
                self._surprise(mark, path, f"{text!r} is read as a binary number by YAML 1.1", f'quote it ("{text}")')
            else:
                self._surprise(mark, path, f"{text!r} is read as an octal number by YAML 1.1 (leading zero)",
                               f'drop the leading zero, or quote it ("{text}")')
            return text
        if tag == _TAG + "float":
            if ":" in text:
                self._surprise(mark, path, f"{text!r} is read as a base-60 number by YAML 1.1", f'quote it ("{text}")')
                return text
            if _PLAIN_FLOAT.match(text):
                return float(text.replace("_", ""))
            self._surprise(mark, path, f"{text!r} is read as a special float by YAML 1.1", f'quote it ("{text}")')
            return text
        if tag == _TAG + "timestamp":
            self._surprise(mark, path, f"{text!r} is read as a date by YAML 1.1", f'quote it ("{text}")')
            return text
        self.errors.append(_err(self.file, mark, path, f"unsupported YAML tag {tag!r}",
                                "fleetform files hold plain strings, numbers, booleans, lists and maps",
                                code="yaml-tag"))
        return text

    def _surprise(self, mark: Mark, path: FieldPath, message: str, hint: str) -> None:
        self.errors.append(Diagnostic(mark, path, message, "yaml-1.1", hint=hint))


_TRUTHY = ("y", "yes", "on", "true")


def _decode(file: str, raw: bytes) -> str:
    if not raw.strip():
        raise LoadError([Diagnostic(Mark(file, 1, 1), (), "file is empty", "empty-file",
                                    hint="a deployment needs at least `name`, `model` and `gpu`")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise LoadError([Diagnostic(Mark(file, line, col), (),
                                    f"not UTF-8: byte 0x{raw[exc.start]:02x} cannot be decoded", "encoding",
                                    hint="save the file as UTF-8")]) from None


def load_text(file: str, raw: bytes) -> Document:
    """Load one YAML document from bytes; `file` names it in diagnostics. Raises LoadError."""
    if len(raw) > MAX_BYTES:
        raise LoadError([Diagnostic(Mark(file, 1, 1), (), f"file is {len(raw)} bytes, over the 1 MiB limit",
                                    "too-large", hint="one deployment a file; a deployment is a page of YAML")])
    text = _decode(file, raw)
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
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise LoadError([Diagnostic(Mark(file, 1, 1), (), "file holds no YAML document (only comments?)",
                                    "empty-file")])
    if len(nodes) > 1:
        raise LoadError([Diagnostic(_mark(file, nodes[1].start_mark), (),
                                    "more than one YAML document in the file", "yaml-multi-document",
                                    hint="one deployment a file: split at the `---`")])
    builder = _Builder(file)
    root = builder.build(nodes[0], ())
    if builder.errors:
        raise LoadError(builder.errors)
    if not isinstance(root.value, dict):
        raise LoadError([Diagnostic(root.mark, (), f"expected a mapping of fields, got {type(root.value).__name__}",
                                    "not-a-mapping", hint="a deployment starts with `name:` on the first line")])
    return Document(file, root)


def load_file(path: str | Path) -> Document:
    """Read and load one file. Missing or unreadable files raise LoadError too."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise LoadError([Diagnostic(Mark(name, 1, 1), (), "no such file", "io")]) from None
    except IsADirectoryError:
        raise LoadError([Diagnostic(Mark(name, 1, 1), (), "is a directory, not a file", "io")]) from None
    except OSError as exc:
        raise LoadError([Diagnostic(Mark(name, 1, 1), (), f"cannot read: {exc.strerror}", "io")]) from None
    return load_text(name, raw)


# --- finding the fleet's files ---------------------------------------------------------------------

FLEET_FILE = "fleet.yaml"
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class FleetFiles:
    """Which files make up a fleet: the optional fleet.yaml and the deployment files, sorted."""

    fleet: str | None
    deployments: tuple[str, ...]


def discover(paths: list[str]) -> FleetFiles:
    """Expand directories into their YAML files; `fleet.yaml` is the fleet file, the rest are deployments.

    With only files named, the fleet file is the `fleet.yaml` beside the first of them, if any.
    Missing paths are kept so that loading reports them.
    """
    fleet: str | None = None
    deployments: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.suffix in YAML_SUFFIXES and child.is_file():
                    if child.name == FLEET_FILE:
                        fleet = fleet or str(child)
                    else:
                        deployments.append(str(child))
        elif path.name == FLEET_FILE:
            fleet = fleet or str(path)
        else:
            deployments.append(str(path))
    if fleet is None and deployments:
        beside = Path(deployments[0]).parent / FLEET_FILE
        if beside.is_file():
            fleet = str(beside)
    seen: set[str] = set()
    unique = [d for d in deployments if not (d in seen or seen.add(d))]
    return FleetFiles(fleet, tuple(unique))


@dataclass(frozen=True)
class LoadedFleet:
    fleet: Document | None
    deployments: tuple[Document, ...]
    diagnostics: tuple[Diagnostic, ...]  # files that could not be loaded


def load_fleet(paths: list[str]) -> LoadedFleet:
    """Load every file of the fleet, collecting load errors instead of stopping at the first."""
    files = discover(paths)
    diags: list[Diagnostic] = []
    fleet_doc = None
    if files.fleet:
        try:
            fleet_doc = load_file(files.fleet)
        except LoadError as exc:
            diags.extend(exc.diagnostics)
    docs = []
    for f in files.deployments:
        try:
            docs.append(load_file(f))
        except LoadError as exc:
            diags.extend(exc.diagnostics)
    return LoadedFleet(fleet_doc, tuple(docs), tuple(diags))
