"""Stage 4: a resolved `Deployment` -> the text of a Modal app module. Pure: objects in, text out.

Safety: the Jinja environment's `finalize` refuses any value that did not pass through the `py`
filter, which turns a value into a double-quoted Python literal (every quote, backslash, newline
and unprintable character escaped, checked by parsing it back), or the `note` filter, which admits
one line of printable text for a comment. A model id or a name can therefore only ever become a
string constant. Output is deterministic: the same deployment renders to the same bytes, and its
content hash is the sha256 of everything below the header.

The module reads top to bottom like Modal's vLLM example: the pinned constants, the image, the
caches, the vLLM command built from those constants, fleetform's start-up code (the sections of
`runtime.py` this deployment uses, their imports at the top), then the app, whose decorator
names only what differs from Modal's defaults, each with a comment true for its value.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from renderer import __version__
from renderer.codegen.write import HASH_PREFIX
from renderer.config import spec
from renderer.gpus import gpu_info

TEMPLATE = "app.py.j2"
_RUNTIME = Path(__file__).with_name("runtime.py")


class Literal(str):
    """Text the `py` filter made from a value: a valid Python literal."""


class Note(str):
    """One line of printable text, safe inside a `#` comment."""


class Trusted(str):
    """Source code fleetform itself writes (the runtime, references to the module's constants)."""


class RenderError(Exception):
    pass


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(text: str, newlines: bool) -> str:
    """`text` as the inside of a double-quoted literal: backslash and quote escaped, printable
    characters kept, everything else (control characters, NUL, line separators) as an escape."""
    out = []
    for ch in text:
        if ch == "\n" and newlines:
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def _plain(text: str) -> bool:
    """Printable ASCII with nothing to escape: most names, ids and paths, written as they are."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _string(text: str, docstring: bool = False) -> Literal:
    if not docstring and _plain(text):
        return Literal(f'"{text}"')
    literal = f'"""{_escape(text, True)}"""' if docstring else f'"{_escape(text, False)}"'
    if ast.literal_eval(literal) != text:  # cannot happen; a check that costs microseconds
        raise RenderError(f"cannot render {text!r} as a string literal")
    return Literal(literal)


def py(value: Any, docstring: bool = False) -> Literal:
    """The one escaping filter: a value as a Python literal (strings double-quoted; with
    `docstring`, triple-quoted with its newlines kept), or an error for anything else."""
    if isinstance(value, str):
        return _string(value, docstring)
    if docstring:
        raise RenderError(f"a docstring must be text, not {type(value).__name__}")
    if value is None or isinstance(value, bool):
        return Literal(repr(value))
    if isinstance(value, int):
        return Literal(repr(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"cannot render non-finite number {value!r}")
        return Literal(repr(value))
    if isinstance(value, (list, tuple)):
        return Literal("[" + ", ".join(py(v) for v in value) + "]")
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise RenderError(f"cannot render dict key {k!r}")
            items.append(f"{py(k)}: {py(v)}")
        return Literal("{" + ", ".join(items) + "}")
    raise RenderError(f"cannot render {type(value).__name__} as a Python literal")


_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def note(text: str) -> Note:
    if not isinstance(text, str) or not _PRINTABLE.match(text):
        raise RenderError(f"comment text must be one line of printable ASCII: {text!r}")
    return Note(text)


def _finalize(value: Any) -> Any:
    if isinstance(value, (Literal, Note, Trusted)):
        return value
    raise RenderError(f"value {value!r} reached the template without the `py` filter")


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment, configured once. (Only rendering imports this module: `validate`
    never loads jinja2; a test checks what `validate` imports.)"""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters["py"] = py
    env.filters["note"] = note
    return env


# --- the runtime, by sections --------------------------------------------------------------------------

_SECTION = re.compile(r"^# ---- (?P<name>[a-z]+): .* -+$", re.MULTILINE)


@dataclass(frozen=True)
class Runtime:
    """`runtime.py` cut into its sections, and the top-level imports each needs."""

    imports: tuple[tuple[str, str], ...]  # (dotted module name, its `import` line), in the file's order
    sections: dict[str, str]  # name -> its text, from its banner line to the next banner

    def source(self, names: Iterable[str]) -> tuple[Trusted, Trusted]:
        """(the import lines these sections use, their text), both verbatim from `runtime.py`."""
        chosen = [self.sections[n] for n in names]
        text = "\n\n\n".join(chosen)
        used = _dotted_names(ast.parse(text))
        lines = [line for module, line in self.imports if module in used]
        return Trusted("\n".join(lines)), Trusted(text)


@functools.cache
def runtime_source(names: tuple[str, ...]) -> tuple[Trusted, Trusted]:
    """`Runtime.source` for these sections, computed once per process."""
    return runtime().source(names)


def _dotted_names(tree: ast.AST) -> set[str]:
    """Every name, and every `a.b` attribute chain on a name, that the code refers to."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            chain = [node.attr]
            base: ast.AST = node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                parts = [base.id, *reversed(chain)]
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def runtime() -> Runtime:
    return sectioned(_RUNTIME)


@functools.cache
def sectioned(path: Path) -> Runtime:
    """A plain-Python module of fleetform's, copied into rendered modules by sections (`runtime.py`,
    `staging.py`): its `import` lines and its `# ---- NAME: ...` sections."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    imports = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            line = ast.get_source_segment(source, node)
            assert line and len(node.names) == 1 and node.names[0].asname is None, line
            imports.append((node.names[0].name, line))
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path.name}: write `import module`, so each import's use can be found")
    marks = list(_SECTION.finditer(source))
    sections = {}
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        sections[m["name"]] = source[m.start() : nxt.start() if nxt else len(source)].rstrip("\n")
    return Runtime(tuple(imports), sections)


@dataclass(frozen=True)
class RenderedApp:
    deployment: spec.Deployment
    text: str
    content_hash: str  # "sha256:<hex>" of the body below the header

    @property
    def name(self) -> str:
        """The Modal app name; the gateway module (`RenderedGateway`) has one too."""
        return self.deployment.name

    @property
    def filename(self) -> str:
        return f"{self.deployment.name}.py"

    @property
    def short_hash(self) -> str:
        return self.content_hash.split(":", 1)[1][:12]


def _gpu_note(d: spec.Deployment) -> str:
    info = gpu_info(d.gpu.type)
    what = f"{d.gpu.count} x {info.name} ({info.memory_gib:g} GB each)"
    if d.gpu.type.endswith("!"):
        what += ", never upgraded"
    if d.gpu.fallbacks:
        what += "; then " + ", ".join(d.gpu.fallbacks) + " if short"
    return what


def _plural(n: float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def _duration(seconds: int) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return _plural(seconds // 3600, "hour")
    if seconds >= 60 and seconds % 60 == 0:
        return _plural(seconds // 60, "minute")
    return _plural(seconds, "second")


# `@app.server`'s defaults in the modal release fleetform renders for (a test reads them from the
# installed package's signature): an argument equal to its default is left out of the module.
# The template writes the rest: `port=VLLM_PORT` and `startup_timeout=STARTUP_TIMEOUT` always
# (the runtime uses the same constants), `secrets` when there are any, the snapshot flags in
# snapshot mode.
SERVER_DEFAULTS: dict[str, Any] = {
    "min_containers": None,
    "max_containers": None,
    "buffer_containers": None,
    "target_concurrency": None,
    "max_concurrency": None,
    "scaledown_window": None,
    "unauthenticated": False,
    "routing_region": "us-east",
    "compute_region": None,
}


@dataclass(frozen=True)
class ServerArg:
    """One `@app.server` keyword argument: its value as code, and a comment true for that value."""

    key: Trusted
    value: Literal | Trusted
    note: Note | None = None


def _server_args(d: spec.Deployment) -> list[ServerArg]:
    """The autoscaling and access arguments that differ from Modal's defaults, each explained.

    `min_containers` is always written (0 included): it is the one choice between paying for idle
    GPUs and cold starts, and the reader should not have to know Modal's default to see it.
    """
    s = d.scaling
    args: list[tuple[str, Any, str | None]] = [
        (
            "scaledown_window",
            s.scaledown_window,
            f"an idle container stops after {_duration(s.scaledown_window)}: cost vs cold starts",
        ),
        (
            "min_containers",
            s.min_containers,
            "scales to zero when idle: no cost, but the next request waits for a cold start"
            if s.min_containers == 0
            else f"{_plural(s.min_containers, 'container')} kept warm around the clock, billed while idle",
        ),
        (
            "max_containers",
            s.max_containers,
            f"at most {_plural(s.max_containers or 0, 'container')}: a ceiling on cost and GPU quota",
        ),
        (
            "buffer_containers",
            s.buffer_containers or None,
            f"{_plural(s.buffer_containers, 'spare container')} started ahead of demand while under load",
        ),
        (
            "target_concurrency",
            s.target_concurrency,
            f"another container starts when each has {s.target_concurrency} requests in flight",
        ),
        (
            "max_concurrency",
            s.max_concurrency or None,
            f"hard cap of {s.max_concurrency} requests a container; above it callers get HTTP 429",
        ),
    ]
    if d.auth.mode == "api_key":
        args.append(("unauthenticated", True, "no Modal proxy auth: vLLM checks VLLM_API_KEY (the Secret's) on /v1"))
    elif d.auth.mode == "none":
        args.append(("unauthenticated", True, "OPEN TO ANYONE: auth.mode is none"))
    args.append(("routing_region", d.routing_region, "requests enter Modal's network here"))
    args.append(("compute_region", list(d.region) if d.region else None, "containers run only here"))
    out = []
    for key, value, why in args:
        if key == "min_containers" or value != SERVER_DEFAULTS[key]:
            out.append(ServerArg(Trusted(key), py(value), note(why) if why else None))
    return out


def _auth_summary(d: spec.Deployment) -> str:
    if d.auth.mode == "proxy":
        return "Callers need Modal proxy-auth tokens (Modal-Key and Modal-Secret headers)."
    if d.auth.mode == "api_key":
        return "Callers need the API key (Authorization: Bearer KEY) that the Secret holds as VLLM_API_KEY."
    return "Open to anyone on the internet (auth.mode: none)."


# --- the vLLM command, in terms of the module's constants --------------------------------------------------


def _constants(d: spec.Deployment) -> dict[str, Any]:
    """The pinned constants at the top of the module, by name (the names `spec.Arg.names` use)."""
    return {
        "APP_NAME": d.name,
        "MODEL_ID": d.model.id,
        "MODEL_REVISION": d.model.revision,
        "SERVED_MODEL_NAMES": list(d.model.served_model_names),
        "VLLM_PORT": d.engine.port,
    }


def _command_line(arg: spec.Arg, constants: dict[str, Any]) -> Trusted:
    """One group of vLLM tokens as Python list items: literals, or the constant that holds them
    (`MODEL_ID`, `*SERVED_MODEL_NAMES` for a run of a list's items, `str(VLLM_PORT)` for an int).

    Checks that each constant yields exactly the tokens it stands for, so the command the module
    runs is `Deployment.argv`, token for token.
    """
    names = arg.names or (None,) * len(arg.tokens)
    if len(names) != len(arg.tokens):
        raise RenderError(f"vLLM argument {arg.tokens!r} names {len(names)} constants for {len(arg.tokens)} tokens")
    items: list[str] = []
    i = 0
    while i < len(arg.tokens):
        name = names[i]
        if name is None:
            items.append(py(arg.tokens[i]))
            i += 1
            continue
        if name not in constants:
            raise RenderError(f"vLLM argument {arg.tokens!r} names an unknown constant {name!r}")
        value = constants[name]
        if isinstance(value, list):
            run = list(arg.tokens[i : i + len(value)])
            ok, code, width = run == value and all(n == name for n in names[i : i + len(value)]), f"*{name}", len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            ok, code, width = arg.tokens[i] == str(value), f"str({name})", 1
        else:
            ok, code, width = arg.tokens[i] == value, name, 1
        if not ok:
            raise RenderError(f"vLLM argument {arg.tokens!r}: constant {name} does not hold the tokens it stands for")
        items.append(code)
        i += width
    return Trusted(", ".join(items) + ",")


def display_source(path: str) -> str:
    """The YAML's path as the header shows it, never relative to the working directory: relative to
    the repository that holds it (the nearest folder above it with a `.git`), else to the folder
    above the file's own; forward slashes. So one checkout renders the same bytes from anywhere."""
    absolute = Path(os.path.abspath(path))
    return absolute.relative_to(_project_root(absolute.parent)).as_posix()


@functools.cache
def _project_root(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder.parent


def content_hash(body: str) -> str:
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


def render(d: spec.Deployment) -> RenderedApp:
    """Render one deployment. Raises RenderError if a value cannot be rendered safely."""
    constants = _constants(d)
    imports, runtime_text = runtime_source(("process", "snapshot") if d.snapshot else ("process",))
    summary = f"{d.name}: {d.model.id} on {_gpu_note(d).split(';')[0]}, served by vLLM {d.engine.vllm_version}."
    # Not the description: it never changes what runs, so it must not change the module's hash.
    docstring = f"{summary}\n\n{_auth_summary(d)}\n"
    context = {
        "version": __version__,
        "d": d,
        "source": display_source(d.source),
        "docstring": docstring,
        "constants": constants,
        "executable": spec.VLLM_EXECUTABLE,
        "command": [(_command_line(arg, constants), arg.why) for arg in d.vllm_args],
        "image_env": {"HF_XET_HIGH_PERFORMANCE": "1"},
        "hf_cache_path": spec.HF_CACHE_PATH,
        "vllm_cache_path": spec.VLLM_CACHE_PATH,
        "startup_note": f"{_duration(d.scaling.startup_timeout)} to download, load, compile and capture graphs",
        "gpu_note": _gpu_note(d),
        "server_args": _server_args(d),
        "lora_adapters": [a.to_runtime() for a in d.model.lora_adapters],
        "app_tags": {"managed-by": "fleetform"},
        "runtime_imports": imports,
        "runtime": runtime_text,
        "hash": Trusted("{hash}"),
    }
    text, digest = render_module(TEMPLATE, context, f"{d.name}.py", d.source, trusted=(runtime_text,))
    return RenderedApp(d, text, digest)


def render_module(
    template: str, context: dict[str, Any], filename: str, what: str, trusted: Sequence[str] = ()
) -> tuple[str, str]:
    """Render a module template and seal it: (text, content hash).

    The template's first two lines are the header; the second carries a `{hash}` placeholder that
    becomes the sha256 of everything below the header. The result must parse as Python: a module
    that does not is a bug in fleetform, never in the user's YAML.
    """
    try:
        text = environment().get_template(template).render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"{what}: template error: {exc}") from None
    first = text.index("\n") + 1
    second = text.index("\n", first) + 1
    header, body = text[:second], text[second:]
    assert header.splitlines()[1].startswith(HASH_PREFIX), "template header lacks the hash line"
    digest = content_hash(body)
    text = header.replace("{hash}", digest) + body
    try:
        _parses(text, trusted)
    except (SyntaxError, ValueError) as exc:
        raise RenderError(f"rendered module {filename!r} does not parse: {exc}") from None
    return text, digest


def _parses(text: str, trusted: Sequence[str]) -> None:
    """Raise SyntaxError unless `text` parses as Python. A top-level block of fleetform's own source
    (`trusted`, e.g. the runtime: most of every module's text) is parsed once per process; the text
    before and after it is parsed on its own. Pieces that each parse as whole statements, split at
    line ends, make a module that parses; a block inside an expression leaves a piece that does not."""
    pieces = [text]
    for block in trusted:
        last = pieces[-1]
        at = last.find(block) if block else -1
        if at < 0 or (at and last[at - 1] != "\n"):
            continue
        _parse_once(block)
        pieces[-1:] = [last[:at], last[at + len(block) :]]
    for piece in pieces:
        ast.parse(piece)


@functools.cache
def _parse_once(block: str) -> None:
    ast.parse(block)


def render_fleet(deployments: Iterable[spec.Deployment]) -> list[RenderedApp]:
    return [render(d) for d in deployments]
