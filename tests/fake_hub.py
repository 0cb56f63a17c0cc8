"""A tiny Hugging Face Hub on 127.0.0.1 for the staging tests: the real `huggingface_hub` talks to it.

It serves the two routes staging uses, with what the installed client reads from them:

- `GET /api/models/{repo}/revision/{revision}`: the model's info, `sha` and `siblings` with each
  file's `size` (`HfApi.model_info(files_metadata=True)` asks with `?blobs=True`);
- `HEAD` and `GET /{repo}/resolve/{revision}/{file}`: the file, with `X-Repo-Commit` (the commit),
  `ETag` (the blob's name in the cache) and `Content-Length` (its size), as `hf_hub_download`
  wants them; a `Range: bytes=N-` request gets the rest from N.

`body_requests` counts the file bodies sent (GETs of /resolve/), so a test can tell a download
from a skip. `listed_sizes` makes the API report another size for a file than the one served.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, revision) -> files
        self.listed_sizes: dict[tuple[str, str], int] = {}  # (repo, file) -> size the API reports instead
        self.body_requests: Counter[tuple[str, str]] = Counter()  # (repo, file) -> GETs served
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def add(self, repo: str, revision: str, files: dict[str, bytes]) -> None:
        self.repos[(repo, revision)] = dict(files)

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.urlsplit(handler.path).path
        self.requests.append((handler.command, path))
        if path.startswith("/api/models/"):
            repo, _, revision = path[len("/api/models/") :].partition("/revision/")
            revision = urllib.parse.unquote(revision)
            files = self.repos.get((repo, revision))
            if files is None:
                error = {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Revision Not Found"}
                return self._send(handler, 404, b'{"error": "Revision Not Found"}', error, body)
            siblings = [
                {"rfilename": name, "size": self.listed_sizes.get((repo, name), len(data)), "blobId": _etag(data)}
                for name, data in sorted(files.items())
            ]
            info = {"id": repo, "modelId": repo, "sha": revision, "siblings": siblings, "private": False}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            revision = urllib.parse.unquote(parts[3])
            name = urllib.parse.unquote("/".join(parts[4:]))
            data = self.repos.get((repo, revision), {}).get(name)
            if data is None:
                return self._send(handler, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"}, body)
            headers = {"X-Repo-Commit": revision, "ETag": f'"{_etag(data)}"', "Accept-Ranges": "bytes"}
            status, start = 200, 0
            wanted = handler.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-"):
                start = int(wanted[len("bytes=") : -1])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if body:
                self.body_requests[(repo, name)] += 1
            return self._send(handler, status, data[start:], headers, body)
        self._send(handler, 404, b"not served by the fake hub", {}, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
