"""What an editor shows, from the real yaml-language-server (2.0.0, the engine of VS Code's YAML
extension), driven over stdio as an editor drives it: the schemas `fleetform schema` writes put each
problem on the line `fleetform validate` puts it, in words close to fleetform's, and completion in a
new file inserts usable bodies.

The server is an npm package: `.ci/run` installs it into `build/editor` (or set YAML_LANGUAGE_SERVER
to its `bin/yaml-language-server`). Without node or the package these tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli

VERSION = "2.0.0"
DEFAULT_SERVER = REPO / "build/editor/node_modules/yaml-language-server/bin/yaml-language-server"


def _server() -> Path:
    path = Path(os.environ.get("YAML_LANGUAGE_SERVER") or DEFAULT_SERVER)
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the editor's language server cannot run")
    if not path.is_file():
        pytest.skip(
            f"yaml-language-server is not installed at {path}: "
            f"`npm install --prefix build/editor yaml-language-server@{VERSION}` (.ci/run does)"
        )
    package = json.loads((path.parent.parent / "package.json").read_text())
    if package.get("version") != VERSION:
        pytest.skip(f"yaml-language-server {package.get('version')} is installed; these tests pin {VERSION}")
    return path


class LanguageServer:
    """A minimal LSP client: JSON-RPC over the server's stdin and stdout, with a deadline on every read."""

    def __init__(self, server: Path, root: Path) -> None:
        self.proc = subprocess.Popen(
            ["node", str(server), "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""
        self.ids = 0
        self.diagnostics: dict[str, list[dict]] = {}
        capabilities = {"textDocument": {"completion": {"completionItem": {"snippetSupport": True}}}}
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": capabilities})
        self.notify("initialized", {})
        self.configure({})

    def configure(self, schemas: dict) -> None:
        """The editor's `yaml.*` settings, with `yaml.schemas` (schema -> globs), as the server pulls them."""
        yaml = {"validate": True, "completion": True, "schemaStore": {"enable": False}, "schemas": schemas}
        self.settings = {"yaml": yaml}
        self.notify("workspace/didChangeConfiguration", {"settings": self.settings})
        self._until(lambda m: m.get("method") == "workspace/configuration")  # pulled, and answered
        self.request("fleetform/barrier", {})  # any answer comes after the server applied them

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.selector.close()

    def _send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict) -> object:
        self.ids += 1
        self._send({"id": self.ids, "method": method, "params": params})
        return self._until(lambda m: m.get("id") == self.ids and "method" not in m).get("result")

    def _read(self, deadline: float) -> dict:
        while b"\r\n\r\n" not in self.buffer or len(self.buffer) < self._needed():
            if not self.selector.select(timeout=max(deadline - time.monotonic(), 0)):
                raise TimeoutError("the language server did not answer in time")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("the language server exited")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        size = self._length(head)
        self.buffer = rest[size:]
        return json.loads(rest[:size])

    def _length(self, head: bytes) -> int:
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                return int(value)
        raise ValueError(f"no Content-Length in {head!r}")

    def _needed(self) -> int:
        head, _, _ = self.buffer.partition(b"\r\n\r\n")
        return len(head) + 4 + self._length(head)

    def _until(self, done, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message.get("method") == "textDocument/publishDiagnostics":
                self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
            elif message.get("method") == "workspace/configuration":  # the server pulls its settings
                items = message["params"]["items"]
                self._send({"id": message["id"], "result": [self.settings.get(i.get("section")) for i in items]})
            elif "id" in message and "method" in message:  # another request from the server
                self._send({"id": message["id"], "result": None})
            if done(message):
                return message

    def open(self, path: Path) -> list[dict]:
        """Open a document; the diagnostics the server publishes for it."""
        uri = path.resolve().as_uri()
        self.diagnostics.pop(uri, None)
        document = {"uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text()}
        self.notify("textDocument/didOpen", {"textDocument": document})
        self._until(lambda m: uri in self.diagnostics)
        return self.diagnostics[uri]

    def complete(self, path: Path, line: int, character: int) -> dict[str, str]:
        """Completion at a 0-based position: label -> the text it inserts."""
        uri = path.resolve().as_uri()
        where = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
        result = self.request("textDocument/completion", where)
        items = result["items"] if isinstance(result, dict) else result
        return {i["label"]: i.get("insertText") or i.get("textEdit", {}).get("newText", i["label"]) for i in items}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fleet repository's layout: schema/ as `fleetform schema` writes it, and one folder a case."""
    root = tmp_path_factory.mktemp("editor")
    result = run_cli("schema", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def editor(workspace):
    server = LanguageServer(_server(), workspace)
    yield server
    server.close()


HEADER = "# yaml-language-server: $schema=../schema/{schema}.schema.json\n"
DEPLOYMENT = """\
name: {name}
model:
  id: Qwen/Qwen2.5-7B-Instruct
  revision: a09a35458c702b33eeacc393d103063234e8bc28
gpu:
  type: H100
"""

# name -> (file in its folder, text after the $schema line, words the editor's message must hold)
CASES = {
    "bad-duration": ("d.yaml", DEPLOYMENT + "scaling:\n  scaledown_window: 15x\n", 'a duration such as 900, "15m"'),
    "scaledown-over-an-hour": ("d.yaml", DEPLOYMENT + "scaling:\n  scaledown_window: 99999\n", "maximum of 3600"),
    "scaledown-under-2s": ("d.yaml", DEPLOYMENT + "scaling:\n  scaledown_window: 1\n", "minimum of 2"),
    "startup-over-a-day": ("d.yaml", DEPLOYMENT + "scaling:\n  startup_timeout: 86401\n", "maximum of 86400"),
    "not-a-duration": ("d.yaml", DEPLOYMENT + "scaling:\n  startup_timeout: true\n", "Incorrect type"),
    "gpu-typo": ("d.yaml", DEPLOYMENT.replace("type: H100", "type: H10"), "Value is not accepted"),
    "gpu-count": ("d.yaml", DEPLOYMENT + "  count: 9\n", "maximum of 8"),
    "name-not-dns": ("d.yaml", DEPLOYMENT.replace("{name}", "Demo_App"), "lowercase DNS-safe name"),
    "revision-branch": (
        "d.yaml",
        DEPLOYMENT.replace("a09a35458c702b33eeacc393d103063234e8bc28", "main"),
        "40-character",
    ),
    "misplaced-field": ("d.yaml", DEPLOYMENT + "scaledown_window: 15m\n", "not allowed"),
    "missing-revision": (
        "d.yaml",
        DEPLOYMENT.replace("  revision: a09a35458c702b33eeacc393d103063234e8bc28\n", ""),
        "revision",
    ),
    "fleet-without-modal-environment": (
        "fleet.yaml",
        "environments:\n  dev:\n    overrides: {}\n",
        "modal_environment",
    ),
    "fleet-bad-duration": ("fleet.yaml", "defaults:\n  scaling:\n    scaledown_window: 2h\n", None),
}


def _write(workspace: Path, case: str) -> Path:
    file, body, _ = CASES[case]
    schema = "fleet" if file == "fleet.yaml" else "deployment"
    path = workspace / case / file
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEADER.format(schema=schema) + body.replace("{name}", "demo"))
    if file == "fleet.yaml":  # a fleet has deployments; this one is valid
        (path.parent / "d.yaml").write_text(HEADER.format(schema="deployment") + DEPLOYMENT.replace("{name}", "demo"))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_editor_flags_each_problem_on_fleetforms_line(workspace, editor, case):
    path = _write(workspace, case)
    result = run_cli("validate", str(path.parent), "--format", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    fleetform = [d for d in json.loads(result.stdout)["diagnostics"] if d["file"].endswith(path.name)]
    assert fleetform, result.stdout
    shown = editor.open(path)
    words = CASES[case][2]
    if words is None:  # a range in the string form: only fleetform can check it, the editor stays quiet
        assert shown == [], shown
        return
    assert sorted({d["range"]["start"]["line"] + 1 for d in shown}) == sorted({d["line"] for d in fleetform}), (
        shown,
        fleetform,
    )
    assert any(words in d["message"] for d in shown), [d["message"] for d in shown]


def test_a_bad_duration_reads_as_a_duration_not_as_a_wrong_type(workspace, editor):
    shown = editor.open(_write(workspace, "bad-duration"))
    assert [d["message"] for d in shown] == ['a duration such as 900, "15m", "1h30m" or "90s"']


def test_the_valid_examples_show_nothing(workspace, editor):
    result = run_cli("init", "repo", cwd=workspace)
    assert result.returncode == 0, result.stderr
    for path in sorted((workspace / "repo/deployments").glob("*.yaml")):
        assert editor.open(path) == [], path


def test_completion_in_a_new_file_inserts_bodies(workspace, editor):
    path = workspace / "new" / "fresh.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEADER.format(schema="deployment") + "\n")
    editor.open(path)
    items = editor.complete(path, 1, 0)
    assert "id" in items["model"] and "revision" in items["model"], items["model"]
    assert "type" in items["gpu"], items["gpu"]


def test_completion_of_tensor_parallel_size_inserts_one_gpu(workspace, editor):
    path = workspace / "new" / "gpu.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEADER.format(schema="deployment") + "gpu:\n  \n")
    editor.open(path)
    assert editor.complete(path, 2, 2)["tensor_parallel_size"] == "tensor_parallel_size: 1"


def test_the_documented_vscode_settings_map_each_file_to_its_schema(workspace, editor):
    """docs/editor.md's `yaml.schemas` snippet, as written: files without a `$schema` comment get the
    right schema, and fleet.yaml only the fleet schema."""
    text = (REPO / "docs/editor.md").read_text()
    snippet = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    root = workspace / "mapped"
    (root / "deployments").mkdir(parents=True)
    assert run_cli("schema", "--out", str(root / "schema")).returncode == 0
    fleet = root / "deployments/fleet.yaml"
    fleet.write_text("environments:\n  dev:\n    modal_environment: fleet-dev\n    overides: {}\n")
    deployment = root / "deployments/d.yaml"
    deployment.write_text(DEPLOYMENT.replace("{name}", "demo").replace("type: H100", "type: H10"))
    server = LanguageServer(_server(), root)
    try:
        server.configure(snippet["yaml.schemas"])
        assert [(d["range"]["start"]["line"], d["message"]) for d in server.open(fleet)] == [
            (3, "Property overides is not allowed.")
        ]
        assert [d["range"]["start"]["line"] for d in server.open(deployment)] == [5]
    finally:
        server.close()
