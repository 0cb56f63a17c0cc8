"""Stage 4: a resolved `Deployment` -> the text of a Modal app module. Pure: objects in, text out.

Safety: the Jinja environment's `finalize` refuses any value that did not pass through the `py`
filter, which turns a value into a Python literal (`repr` for strings, so quotes, backslashes and
newlines are escaped), or the `note` filter, which admits one line of printable text for a
comment. A model id or a name can therefore only ever become a string constant. Output is
deterministic: the same deployment renders to the same bytes, and its content hash is the
sha256 of everything below the header.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2

from renderer import __version__

from renderer.config import spec
from renderer.gpus import gpu_info
from renderer.codegen.write import HASH_PREFIX, stale, write_all  # noqa: F401 (write_all, stale: callers' old home)

TEMPLATE = "app.py.j2"
_RUNTIME = Path(__file__).with_name("runtime.py")


class Literal(str):
    """Text the `py` filter made from a value: a valid Python literal."""


class Note(str):
    """One line of printable text, safe inside a `#` comment."""


class Trusted(str):
    """Source code fleetform itself ships (the runtime module), placed verbatim."""


class RenderError(Exception):
    pass


def py(value: Any) -> Literal:
    """The one escaping filter: a value as a Python literal, or an error for anything else."""
    if value is None or isinstance(value, (bool, str)):
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
def environment() -> "jinja2.Environment":
    """The one Jinja environment (imported here, not at the top: validating a fleet never needs it)."""
    import jinja2

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


@functools.cache
def runtime_source() -> Trusted:
    return Trusted(_RUNTIME.read_text(encoding="utf-8").rstrip("\n"))


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


def _auth_note(d: spec.Deployment) -> tuple[bool, str]:
    if d.auth.mode == "proxy":
        return False, "callers need Modal proxy-auth tokens (Modal-Key / Modal-Secret headers)"
    if d.auth.mode == "api_key":
        return True, "vLLM checks the API key (VLLM_API_KEY from the Secret) on /v1 routes"
    return True, "OPEN TO ANYONE: auth.mode is none"


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
    unauthenticated, auth_note = _auth_note(d)
    image_env = {"HF_XET_HIGH_PERFORMANCE": "1"}
    context = {
        "version": __version__,
        "d": d,
        "source": display_source(d.source),
        "docstring": f"{d.name}: {d.model.id} on {_gpu_note(d).split(';')[0]}, served by vLLM {d.engine.vllm_version}.",
        "executable": spec.VLLM_EXECUTABLE,
        "image_env": image_env,
        "hf_cache_path": spec.HF_CACHE_PATH,
        "vllm_cache_path": spec.VLLM_CACHE_PATH,
        "gpu_note": _gpu_note(d),
        "unauthenticated": unauthenticated,
        "auth_note": auth_note,
        "compute_region": list(d.region) if d.region else None,
        "lora_adapters": [a.to_runtime() for a in d.model.lora_adapters],
        "app_tags": {"managed-by": "fleetform"},
        "runtime_source": runtime_source(),
        "hash": Trusted("{hash}"),
    }
    text, digest = render_module(TEMPLATE, context, f"{d.name}.py", d.source)
    return RenderedApp(d, text, digest)


def render_module(template: str, context: dict[str, Any], filename: str, what: str) -> tuple[str, str]:
    """Render a module template and seal it: (text, content hash).

    The template's first two lines are the header; the second carries a `{hash}` placeholder that
    becomes the sha256 of everything below the header. The result must parse as Python: a module
    that does not is a bug in fleetform, never in the user's YAML.
    """
    import jinja2  # loaded by environment() already; named here for its exception type

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
        ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise RenderError(f"rendered module {filename} does not parse: {exc}") from None
    return text, digest


def render_fleet(deployments: Iterable[spec.Deployment]) -> list[RenderedApp]:
    return [render(d) for d in deployments]
