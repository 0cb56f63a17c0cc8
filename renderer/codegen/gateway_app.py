"""One OpenAI-compatible endpoint for a whole fleet: an ASGI app that routes each request by its `model`.

`fleetform render` copies this file, verbatim, into the rendered gateway module (as `runtime.py`
is copied into every app module), and the tests drive the same code in-process. It therefore
depends on the standard library and aiohttp only (imported when the first request is proxied, so
the rendered module imports anywhere `modal` does), speaks raw ASGI without a web framework, and
keeps to Python 3.10 syntax without `from __future__` (it is pasted mid-module).

What it does:
- `GET /v1/models` lists every served name of every upstream from the static routing table: it
  never calls an upstream, so listing models wakes no GPU.
- `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` go to the deployment that
  serves the request's `model`; the body is forwarded byte for byte and the answer streamed back
  chunk by chunk as it arrives (server-sent events are never buffered).
- Callers authenticate at the gateway with `Authorization: Bearer KEY`, compared in constant time
  with the key from an environment variable (a Modal Secret provides it); without that variable
  every request is refused, never let through.
- The gateway authenticates to each upstream as that deployment expects: Modal proxy-auth headers
  (`Modal-Key` / `Modal-Secret`), a Bearer key, or nothing.
- A scaled-to-zero upstream takes minutes to boot: connection errors and 503 answers are retried
  with exponential backoff until `upstream_timeout` seconds have passed, then the caller gets an
  OpenAI-style 503. Errors always use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""

import asyncio
import hmac
import json
import os
import sys
import time

GATEWAY_KEY_ENV = "FLEETFORM_GATEWAY_API_KEY"
PROXY_TOKEN_ID_ENV = "FLEETFORM_PROXY_TOKEN_ID"
PROXY_TOKEN_SECRET_ENV = "FLEETFORM_PROXY_TOKEN_SECRET"
ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_BODY_BYTES = 32 * 1024 * 1024  # a request body; embeddings of long inputs stay far below
RETRY_STATUSES = (503,)  # Modal's answer while a container is not ready; other statuses are final
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-encoding", "x-request-id", "user-agent")
DROPPED_RESPONSE_HEADERS = ("connection", "keep-alive", "transfer-encoding", "content-length", "proxy-authenticate",
                            "proxy-authorization", "te", "trailer", "upgrade", "server", "date")


class Upstream:
    """One deployment the gateway routes to.

    `url` is its base URL (`https://WORKSPACE--APP-serve.modal.run`); when it is None, `lookup` (an
    async callable returning the URL, such as a Modal SDK lookup) is asked once, on first use.
    `auth` is `proxy` (Modal proxy-auth token from the environment), `api_key` (Bearer key from
    the environment variable `key_env`) or `none`.
    """

    def __init__(self, name, url=None, auth="proxy", key_env=None, lookup=None):
        if auth not in ("proxy", "api_key", "none"):
            raise ValueError(f"upstream {name}: unknown auth {auth!r}")
        if auth == "api_key" and not key_env:
            raise ValueError(f"upstream {name}: auth api_key needs key_env")
        if url is None and lookup is None:
            raise ValueError(f"upstream {name}: needs a url or a lookup")
        self.name = name
        self.url = url.rstrip("/") if url else None
        self.auth = auth
        self.key_env = key_env
        self.lookup = lookup
        self._lock = asyncio.Lock()

    async def base_url(self):
        if self.url is None:
            async with self._lock:
                if self.url is None:
                    found = await self.lookup()
                    if not found:
                        raise LookupError("the deployment has no web URL (is it deployed?)")
                    self.url = str(found).rstrip("/")
        return self.url

    def __repr__(self):
        return f"Upstream({self.name!r}, url={self.url!r}, auth={self.auth!r})"


class GatewayError(Exception):
    """An answer for the caller in OpenAI's error shape."""

    def __init__(self, status, message, type_="invalid_request_error", code=None, param=None, headers=()):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = list(headers)


class GatewayApp:
    """The ASGI callable. `routes` maps each served model name to the `Upstream` that serves it."""

    def __init__(self, routes, *, upstream_timeout=600.0, api_key_env=GATEWAY_KEY_ENV, environ=None,
                 backoff_initial=0.5, backoff_max=5.0, connect_timeout=10.0, read_timeout=600.0, log=None):
        self.routes = dict(routes)
        self.upstream_timeout = float(upstream_timeout)
        self.api_key_env = api_key_env
        self.environ = os.environ if environ is None else environ
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.log = log
        self._session = None

    @classmethod
    def from_table(cls, upstreams, routes, lookup=None, **kwargs):
        """Build from plain data, as the rendered module holds it.

        `upstreams`: deployment name -> {"url", "auth", "key_env", "app", "environment"};
        `routes`: model name -> deployment name; `lookup(app, environment)`: async URL lookup for
        upstreams without a URL.
        """
        built = {}
        for name, u in upstreams.items():
            finder = None
            if not u.get("url") and lookup is not None:
                finder = _bind_lookup(lookup, u.get("app", name), u.get("environment"))
            built[name] = Upstream(name, u.get("url"), u.get("auth", "proxy"), u.get("key_env"), finder)
        return cls({model: built[dep] for model, dep in routes.items()}, **kwargs)

    # --- ASGI --------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        status, model, upstream = 500, None, None
        try:
            status, model, upstream = await self._handle(scope, receive, send)
        except GatewayError as err:
            status = err.status
            await _send_json(send, err.status, err.body, err.headers)
        finally:
            if self.log is not None:
                self.log(json.dumps({"method": scope.get("method"), "path": scope.get("path"), "model": model,
                                     "upstream": upstream, "status": status,
                                     "seconds": round(time.monotonic() - started, 3)}))

    async def _handle(self, scope, receive, send):
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        if path in ("/health", "/healthz"):
            await _send_json(send, 200, {"status": "ok"})
            return 200, None, None
        known = path == "/v1/models" or path.startswith("/v1/models/") or path in ROUTED_PATHS
        if not known:
            raise GatewayError(404, f"unknown route: {method} {path}", code="unknown_route")
        self._authenticate(scope)
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise GatewayError(405, f"{path} takes GET", code="method_not_allowed")
            await _send_json(send, 200, self._models(path[len("/v1/models/"):] if path != "/v1/models" else None))
            return 200, None, None
        if method != "POST":
            raise GatewayError(405, f"{path} takes POST", code="method_not_allowed")
        body = await _read_body(receive)
        if body is None:
            return 499, None, None  # the caller went away
        model = _model_of(body)
        upstream = self.routes.get(model)
        if upstream is None:
            raise GatewayError(404, f"The model `{model}` does not exist. Models served here: "
                                    f"{', '.join(sorted(self.routes)) or 'none'}", param="model", code="model_not_found")
        status = await self._proxy_until_done(upstream, scope, body, receive, send)
        return status, model, upstream.name

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self):
        """Close the upstream connection pool (on shutdown; tests call it)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- pieces ---------------------------------------------------------------------------------------------

    def _authenticate(self, scope):
        expected = self.environ.get(self.api_key_env, "")
        if not expected:
            raise GatewayError(500, f"the gateway's API key is not configured ({self.api_key_env} is not set: "
                                    "check the gateway's Modal Secret)", type_="server_error",
                               code="gateway_misconfigured")
        given = _header(scope, b"authorization")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise GatewayError(401, "Incorrect or missing API key: send `Authorization: Bearer KEY` with the "
                                    "gateway's key", code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])

    def _models(self, one):
        data = [{"id": name, "object": "model", "created": 0, "owned_by": up.name} for name, up in self.routes.items()]
        if one is None:
            return {"object": "list", "data": data}
        for entry in data:
            if entry["id"] == one:
                return entry
        raise GatewayError(404, f"The model `{one}` does not exist", param="model", code="model_not_found")

    def _upstream_headers(self, upstream, scope):
        headers = {}
        for name in FORWARDED_REQUEST_HEADERS:
            value = _header(scope, name.encode())
            if value:
                headers[name] = value
        headers.setdefault("content-type", "application/json")
        headers.setdefault("accept-encoding", "identity")
        if upstream.auth == "proxy":
            key, secret = self.environ.get(PROXY_TOKEN_ID_ENV), self.environ.get(PROXY_TOKEN_SECRET_ENV)
            if not key or not secret:
                raise GatewayError(500, f"upstream {upstream.name} needs a Modal proxy-auth token: set "
                                        f"{PROXY_TOKEN_ID_ENV} and {PROXY_TOKEN_SECRET_ENV} in the gateway's "
                                        "upstream Secret", type_="server_error", code="gateway_misconfigured")
            headers["Modal-Key"], headers["Modal-Secret"] = key, secret
        elif upstream.auth == "api_key":
            key = self.environ.get(upstream.key_env)
            if not key:
                raise GatewayError(500, f"upstream {upstream.name} needs its API key: set {upstream.key_env} in the "
                                        "gateway's upstream Secret", type_="server_error", code="gateway_misconfigured")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _client(self):
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                              sock_read=self.read_timeout),
                connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        return self._session

    async def _proxy_until_done(self, upstream, scope, body, receive, send):
        """Proxy, but stop (and so cancel the upstream request) as soon as the caller disconnects."""
        proxy = asyncio.ensure_future(self._proxy(upstream, scope, body, send))
        gone = asyncio.ensure_future(_until_disconnect(receive))
        done, _ = await asyncio.wait({proxy, gone}, return_when=asyncio.FIRST_COMPLETED)
        if proxy in done:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
            return proxy.result()
        proxy.cancel()
        await asyncio.gather(proxy, return_exceptions=True)
        return 499

    async def _connect(self, upstream, scope, body):
        """The upstream's response (status and headers read), waiting out cold starts until the deadline."""
        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream_timeout
        try:
            base = await asyncio.wait_for(upstream.base_url(), timeout=self.upstream_timeout)
        except Exception as exc:  # noqa: BLE001 - any lookup failure is the same answer for the caller
            raise GatewayError(503, f"cannot find deployment {upstream.name}: {_one_line(exc)}",
                               type_="server_error", code="upstream_unavailable") from None
        query = scope.get("query_string", b"").decode("latin-1")
        target = base + scope["path"] + (f"?{query}" if query else "")
        headers = self._upstream_headers(upstream, scope)
        session = await self._client()
        delay, last = self.backoff_initial, "no attempt"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise GatewayError(503, f"deployment {upstream.name} did not become ready within "
                                        f"{self.upstream_timeout:g} s (last: {last}); it may still be starting: retry",
                                   type_="server_error", code="upstream_unavailable",
                                   headers=[(b"retry-after", b"10")])
            try:
                response = await asyncio.wait_for(session.post(target, data=body, headers=headers), timeout=remaining)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                last = _one_line(exc) or type(exc).__name__
            else:
                if response.status not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status}"
                response.release()
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, self.backoff_max)

    async def _proxy(self, upstream, scope, body, send):
        import aiohttp

        response = await self._connect(upstream, scope, body)
        try:
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                       if k.lower() not in DROPPED_RESPONSE_HEADERS]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Headers are gone: the status cannot change. Tell a streaming client in-band, as vLLM does.
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    err = {"error": {"message": f"deployment {upstream.name} stopped mid-stream: {_one_line(exc)}",
                                     "type": "server_error", "param": None, "code": "upstream_disconnected"}}
                    await send({"type": "http.response.body", "body": f"data: {json.dumps(err)}\n\n".encode(),
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status
        finally:
            response.release()


# --- helpers -----------------------------------------------------------------------------------------------


def _bind_lookup(lookup, app, environment):
    async def find():
        return await lookup(app, environment)

    return find


def _header(scope, name):
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


async def _read_body(receive):
    """The whole request body, or None if the caller disconnected first. Bounded by MAX_BODY_BYTES."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise GatewayError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _model_of(body):
    try:
        data = json.loads(body)
    except ValueError:
        raise GatewayError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "you must provide a model parameter", param="model", code="missing_model")
    return model


async def _until_disconnect(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _send_json(send, status, body, extra_headers=()):
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + list(extra_headers)})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def print_log(line):
    """One JSON line a request, to stderr (Modal keeps container logs)."""
    print(line, file=sys.stderr, flush=True)
