"""One OpenAI-compatible endpoint for a whole fleet: an ASGI app that routes each request by its `model`.

`fleetform render` copies this file, verbatim, into the rendered gateway module (as `runtime.py`
is copied into every app module), and the tests drive the same code in-process. It therefore
depends on the standard library and aiohttp only (imported when the first request is proxied, so
the rendered module imports anywhere `modal` does), speaks raw ASGI without a web framework, and
keeps to Python 3.10 syntax without `from __future__` (it is pasted mid-module).

What it does:
- `GET /v1/models` lists every served name of every upstream from the static routing table: it
  never calls an upstream, so listing models wakes no GPU.
- Every OpenAI-compatible route vLLM serves (`ROUTED_PATHS`) goes to the deployment that serves the
  request's `model`; the body is forwarded byte for byte and the answer streamed back chunk by
  chunk as it arrives (server-sent events are never buffered). `model` is found by scanning the
  body's top-level keys, never by parsing it whole: the scan yields to the event loop every
  `SCAN_SLICE` bytes, so a 30 MB prompt does not stall the other streams.
- Callers authenticate at the gateway with `Authorization: Bearer KEY`, compared in constant time
  with the key from an environment variable (a Modal Secret provides it); without that variable
  every request is refused, never let through.
- The gateway authenticates to each upstream as that deployment expects: Modal proxy-auth headers
  (`Modal-Key` / `Modal-Secret`), a Bearer key, or nothing.
- A scaled-to-zero upstream takes minutes to boot: connection errors and 503 answers are retried
  with exponential backoff until `upstream_timeout` seconds have passed, then the caller gets an
  OpenAI-style 503 (generic text; the details go to the log). Once an upstream has the request,
  its status may take up to `read_timeout` (a long generation is not a cold start). A pooled
  connection the upstream closed is retried at once, without backoff.
- Errors always use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`; a body that
  cannot be read is a 400, never a 500. An answer cut short keeps its `Content-Length` (or, when
  chunked, never gets its last chunk): the caller sees the truncation.
- `GET /metrics` (Prometheus text; the gateway key, or FLEETFORM_GATEWAY_METRICS_KEY when set):
  per model and upstream, requests by status, in-flight, time to the first upstream byte, time per
  output token of streamed answers, bytes. `log` gets one JSON line a request: model, upstream,
  status, ttft, tpot, seconds, bytes, error.
- CORS (optional): `cors_origins` lists the browser origins allowed (`*`: any).
- Weighted routing (a canary rollout): `splits` gives a deployment several upstreams with weights;
  each request to one of its models goes to one of them, chosen at random in proportion to the
  weights (`rng`, a `random.Random`, is injectable for tests). `/v1/models` is unchanged: a name is
  listed once, owned by the deployment. `/metrics` says the weights in force
  (`fleetform_gateway_route_weight`, percent) and labels every figure with the upstream chosen.
"""

import asyncio
import hmac
import json
import os
import random
import re
import sys
import time

GATEWAY_KEY_ENV = "FLEETFORM_GATEWAY_API_KEY"
METRICS_KEY_ENV = "FLEETFORM_GATEWAY_METRICS_KEY"  # optional: a key that may read /metrics only
PROXY_TOKEN_ID_ENV = "FLEETFORM_PROXY_TOKEN_ID"
PROXY_TOKEN_SECRET_ENV = "FLEETFORM_PROXY_TOKEN_SECRET"

# The OpenAI-compatible routes vLLM's API server serves that name a `model` in their body, and how
# the body carries it. Taken from vLLM's router modules (vllm/entrypoints/openai/api_server.py
# `build_app` and the routers it attaches: openai/chat_completion, openai/completion,
# openai/responses, serve/tokenize, serve/render, pooling/{embed,classify,pooling,scoring},
# speech_to_text/{transcription,translation}), read at the 0.26 line. Left out on purpose:
# `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` (no model to route by: a response id
# lives in one deployment's memory), the Anthropic `/v1/messages` route, vLLM's own admin and dev
# routes (`/sleep`, `/load_lora_adapter`, ...) and the realtime WebSocket.
ROUTED_PATHS = {
    "/v1/chat/completions": "json",
    "/v1/completions": "json",
    "/v1/responses": "json",
    "/v1/embeddings": "json",
    "/v1/chat/completions/render": "json",
    "/v1/completions/render": "json",
    "/tokenize": "json",
    "/detokenize": "json",
    "/pooling": "json",
    "/classify": "json",
    "/score": "json",
    "/v1/score": "json",
    "/rerank": "json",
    "/v1/rerank": "json",
    "/v2/rerank": "json",
    "/v1/audio/transcriptions": "multipart",
    "/v1/audio/translations": "multipart",
}
MAX_BODY_BYTES = 32 * 1024 * 1024  # one request body; the longest prompts vLLM takes stay below
# All bodies held at once (a body is held until the upstream has it): with the 1024 MB the module asks
# for and ~60 MB of baseline RSS, 256 MB of bodies (8 of the largest at once) leaves room for the streams.
MAX_BUFFERED_BYTES = 256 * 1024 * 1024
SCAN_SLICE = 256 * 1024  # bytes of body scanned between two yields to the event loop
MAX_TOP_KEYS = 1000  # top-level keys of a JSON body (an OpenAI request has a few dozen)
MAX_MODEL_BYTES = 4096  # a longer `model` is no served name: routed as unknown, never decoded
ECHO_CHARS = 80  # at most this much of an unknown model name goes back in the 404
RETRY_STATUSES = (503,)  # Modal's answer while a container is not ready; other statuses are final
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "accept-encoding", "x-request-id", "user-agent")
DROPPED_RESPONSE_HEADERS = (
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "server",
    "date",
)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Seconds per output token of a streamed answer. Decoding one sequence takes about 5-15 ms a token for
# 7-8B models on an H100 and 25-50 ms for 70B ones, more as the batch grows: fine steps there (vLLM's
# own histogram starts at 10 ms, too coarse to tell an 8B canary 20% slower), coarse ones beyond.
TPOT_BUCKETS = tuple(ms / 1000 for ms in (2.5, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000))
CORS_METHODS = b"GET, POST, OPTIONS"
CORS_HEADERS = b"authorization, content-type, accept, x-request-id"


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
    """An answer for the caller in OpenAI's error shape; `detail` goes to the log only."""

    def __init__(self, status, message, type_="invalid_request_error", code=None, param=None, headers=(), detail=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = list(headers)
        self.detail = detail


class _Events:
    """Server-sent events of one streamed answer, counted as they are relayed: a `data:` at the start of
    a line (JSON escapes every newline inside an event, so none hides in a token), without parsing.
    vLLM writes one `data:` line an event and `data: [DONE]` last, which `per_token` leaves out. A
    `data:` cut in two by a chunk boundary (`\nda` | `ta:`) is missed: events are written whole, and
    a miss only lengthens one answer's figure."""

    __slots__ = ("count", "first", "last", "before", "last_count", "tail", "line_start")

    def __init__(self):
        self.count = self.last_count = 0
        self.first = self.last = self.before = 0.0
        self.tail = b""
        self.line_start = True  # the stream's start is a line start

    def see(self, chunk):
        n = chunk.count(b"\ndata:")
        if self.line_start and chunk.startswith(b"data:"):
            n += 1
        self.line_start = chunk.endswith(b"\n")
        if n:
            now = time.monotonic()
            if not self.count:
                self.first = now
            self.count += n
            self.before, self.last, self.last_count, self.tail = self.last, now, n, chunk

    def per_token(self):
        """(arrival of the last event - the first's) / (events - 1), or None below two events."""
        count, last = self.count, self.last
        if count and self.tail.rstrip().endswith(b"[DONE]"):
            count -= 1
            if self.last_count == 1:  # [DONE] came alone: the last token's event is the chunk before
                last = self.before
        if count < 2:
            return None
        return (last - self.first) / (count - 1)


class UpstreamBroken(Exception):
    """The upstream's answer broke after its status went out: the connection to the caller must be
    dropped (the ASGI server does that when the app raises), so the truncation shows."""


class _Request:
    """What one request's log line and metrics say about it."""

    __slots__ = (
        "started",
        "model",
        "upstream",
        "status",
        "ttft",
        "tpot",
        "bytes_in",
        "bytes_out",
        "error",
        "body",
        "held",
        "answered",
    )

    def __init__(self, started):
        self.started = started
        self.model = self.upstream = self.ttft = self.tpot = self.error = self.body = None
        self.status = 500
        self.bytes_in = self.bytes_out = self.held = 0
        self.answered = False  # the status went out


class Metrics:
    """Counters for `/metrics`, labelled by served model and deployment only (an unknown model name a
    caller sends is never a label: one series can not be multiplied by callers)."""

    def __init__(self):
        self.started = time.time()
        # Each container counts its own requests: a scrape through the public URL reaches one of them,
        # so every scrape says which one (Modal's task id) and since when, for rates across scrapes.
        self.container = os.environ.get("MODAL_TASK_ID", "") or f"pid-{os.getpid()}"
        self.requests = {}  # (model, upstream, status) -> count
        self.in_flight = {}  # (model, upstream) -> requests now
        self.ttft = {}  # (model, upstream) -> [bucket counts..., count, sum]
        self.tpot = {}  # the same, for seconds per output token of streamed answers
        self.bytes_in = {}
        self.bytes_out = {}
        self.weights = {}  # (deployment, upstream) -> percent of the deployment's requests routed there

    def enter(self, model, upstream):
        key = (model, upstream)
        self.in_flight[key] = self.in_flight.get(key, 0) + 1

    def leave(self, req):
        key = (req.model, req.upstream) if req.upstream is not None else ("", "")
        if req.upstream is not None:
            self.in_flight[key] -= 1
        skey = key + (str(req.status),)
        self.requests[skey] = self.requests.get(skey, 0) + 1
        self.bytes_in[key] = self.bytes_in.get(key, 0) + req.bytes_in
        self.bytes_out[key] = self.bytes_out.get(key, 0) + req.bytes_out
        if req.ttft is not None:
            _observe(self.ttft, TTFT_BUCKETS, key, req.ttft)
        if req.tpot is not None:
            _observe(self.tpot, TPOT_BUCKETS, key, req.tpot)

    def text(self):
        out = [
            "# HELP fleetform_gateway_info The container these counters are from (each counts its own).",
            "# TYPE fleetform_gateway_info gauge",
            f"fleetform_gateway_info{{container={_quote(self.container)}}} 1",
            "# HELP fleetform_gateway_start_time_seconds When this container's counters started (Unix time).",
            "# TYPE fleetform_gateway_start_time_seconds gauge",
            f"fleetform_gateway_start_time_seconds {self.started:.3f}",
            "# HELP fleetform_gateway_requests_total Requests answered, by served model, deployment and status.",
            "# TYPE fleetform_gateway_requests_total counter",
        ]
        for (model, up, status), n in sorted(self.requests.items()):
            out.append(f'fleetform_gateway_requests_total{{{_labels(model, up)},status="{status}"}} {n}')
        out += [
            "# HELP fleetform_gateway_in_flight Requests being proxied now.",
            "# TYPE fleetform_gateway_in_flight gauge",
        ]
        out += [f"fleetform_gateway_in_flight{{{_labels(*k)}}} {n}" for k, n in sorted(self.in_flight.items())]
        out += [
            "# HELP fleetform_gateway_route_weight Percent of a deployment's requests routed to each upstream.",
            "# TYPE fleetform_gateway_route_weight gauge",
        ]
        out += [
            f"fleetform_gateway_route_weight{{deployment={_quote(d)},upstream={_quote(u)}}} {w:g}"
            for (d, u), w in sorted(self.weights.items())
        ]
        out += _histogram(
            "fleetform_gateway_upstream_ttft_seconds",
            "From the request to the upstream's first body byte, as the gateway saw it.",
            self.ttft,
            TTFT_BUCKETS,
        )
        out += _histogram(
            "fleetform_gateway_upstream_tpot_seconds",
            "Streamed answers: (last event's arrival - first's) / (events - 1), events being data: lines "
            "other than [DONE].",
            self.tpot,
            TPOT_BUCKETS,
        )
        for name, table, what in (
            ("received", self.bytes_in, "Request body bytes received"),
            ("sent", self.bytes_out, "Answer body bytes relayed"),
        ):
            out += [
                f"# HELP fleetform_gateway_bytes_{name}_total {what}.",
                f"# TYPE fleetform_gateway_bytes_{name}_total counter",
            ]
            out += [f"fleetform_gateway_bytes_{name}_total{{{_labels(*k)}}} {n}" for k, n in sorted(table.items())]
        return "\n".join(out) + "\n"


class GatewayApp:
    """The ASGI callable. `routes` maps each served model name to the `Upstream` that serves it.

    `upstream_timeout`: how long a request waits for a cold deployment (connection errors and 503s are
    retried until then); `read_timeout`: how long an upstream that has the request may take to send
    its status (a whole non-streamed generation); `cors_origins`: browser origins allowed (`*`: any).
    `splits`: deployment name (the name of an `Upstream` in `routes`) -> [(Upstream, weight), ...]:
    its requests go to one of these, drawn with `rng` in proportion to the (positive) weights."""

    def __init__(
        self,
        routes,
        *,
        upstream_timeout=600.0,
        api_key_env=GATEWAY_KEY_ENV,
        environ=None,
        backoff_initial=0.5,
        backoff_max=5.0,
        connect_timeout=10.0,
        read_timeout=3600.0,
        log=None,
        cors_origins=(),
        max_body_bytes=MAX_BODY_BYTES,
        max_buffered_bytes=MAX_BUFFERED_BYTES,
        splits=None,
        rng=None,
    ):
        self.routes = dict(routes)
        self.splits = _splits(self.routes, splits or {})
        self.rng = rng if rng is not None else random.Random()
        self.upstream_timeout = float(upstream_timeout)
        self.api_key_env = api_key_env
        self.environ = os.environ if environ is None else environ
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.log = log
        self.cors_origins = tuple(cors_origins)
        self.max_body_bytes = max_body_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0  # bytes of request bodies held right now
        self.metrics = Metrics()
        for up in {u.name: u for u in self.routes.values()}.values():
            split = self.splits.get(up.name)
            if split is None:
                self.metrics.weights[(up.name, up.name)] = 100.0
            else:
                ups, cumulative, total = split
                for u, before, upto in zip(ups, (0,) + cumulative[:-1], cumulative, strict=True):
                    self.metrics.weights[(up.name, u.name)] = 100.0 * (upto - before) / total
        self._session = None

    @classmethod
    def from_table(cls, upstreams, routes, lookup=None, splits=None, **kwargs):
        """Build from plain data, as the rendered module holds it.

        `upstreams`: upstream name -> {"url", "auth", "key_env", "app", "modal_env"} (a deployment,
        or a deployment's canary); `routes`: model name -> deployment name; `lookup(app, modal_env)`:
        async URL lookup for upstreams without a URL; `splits`: deployment name -> [[upstream name,
        weight], ...].
        """
        built = {}
        for name, u in upstreams.items():
            finder = None
            if not u.get("url") and lookup is not None:
                finder = _bind_lookup(lookup, u.get("app", name), u.get("modal_env"))
            built[name] = Upstream(name, u.get("url"), u.get("auth", "proxy"), u.get("key_env"), finder)
        unknown = sorted({dep for dep in routes.values() if dep not in built})
        unknown += sorted({n for entries in (splits or {}).values() for n, _ in entries if n not in built})
        if unknown:
            raise ValueError(f"no upstream named {', '.join(map(repr, unknown))} in the upstream table")
        weighted = {dep: [(built[n], w) for n, w in entries] for dep, entries in (splits or {}).items()}
        return cls({model: built[dep] for model, dep in routes.items()}, splits=weighted, **kwargs)

    # --- ASGI --------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        req = _Request(time.monotonic())
        cors = self._cors_headers(scope)
        try:
            await self._handle(scope, receive, send, req, cors)
        except GatewayError as err:
            req.status, req.error = err.status, err.detail or err.body["error"]["message"]
            await _send_json(send, err.status, err.body, err.headers + cors)
        except UpstreamBroken as exc:
            req.error = str(exc)
            raise
        except asyncio.CancelledError:
            req.status, req.error = 499, "cancelled"
            raise
        except Exception as exc:  # a bug must still answer in OpenAI's shape, and say where
            req.status, req.error = 500, f"{type(exc).__name__}: {_one_line(exc)}"
            if req.answered:
                raise  # the status already went out: the server must drop the connection
            await _send_json(
                send,
                500,
                {
                    "error": {
                        "message": "internal gateway error",
                        "type": "server_error",
                        "param": None,
                        "code": "internal_error",
                    }
                },
                cors,
            )
        finally:
            self.metrics.leave(req)
            if self.log is not None:
                self.log(
                    json.dumps(
                        {
                            "method": scope.get("method"),
                            "path": _bounded(scope.get("path") or ""),
                            "model": req.model,
                            "upstream": req.upstream,
                            "status": req.status,
                            "ttft": None if req.ttft is None else round(req.ttft, 4),
                            "tpot": None if req.tpot is None else round(req.tpot, 5),
                            "seconds": round(time.monotonic() - req.started, 4),
                            "bytes_in": req.bytes_in,
                            "bytes_out": req.bytes_out,
                            "error": req.error,
                        }
                    )
                )

    async def _handle(self, scope, receive, send, req, cors):
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        if path in ("/health", "/healthz"):
            req.status = 200
            await _send_json(send, 200, {"status": "ok"})
            return
        if method == "OPTIONS" and cors:  # a browser's preflight: no key on it, by the CORS rules
            req.status = 204
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": cors
                    + [
                        (b"access-control-allow-methods", CORS_METHODS),
                        (b"access-control-allow-headers", CORS_HEADERS),
                        (b"access-control-max-age", b"600"),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        models = path == "/v1/models" or path.startswith("/v1/models/")
        kind = ROUTED_PATHS.get(path)
        if not models and kind is None and path != "/metrics":
            raise GatewayError(404, f"unknown route: {method} {_bounded(path)}", code="unknown_route")
        if path == "/metrics":
            self._authenticate(scope, also=self.environ.get(METRICS_KEY_ENV, ""))
            if method != "GET":
                raise GatewayError(405, "/metrics takes GET", code="method_not_allowed")
            data = self.metrics.text().encode()
            req.status = 200
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                        (b"content-length", str(len(data)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        self._authenticate(scope)
        if models:
            if method != "GET":
                raise GatewayError(405, f"{path} takes GET", code="method_not_allowed")
            req.status = 200
            await _send_json(
                send, 200, self._models(path[len("/v1/models/") :] if path != "/v1/models" else None), cors
            )
            return
        if method != "POST":
            raise GatewayError(405, f"{path} takes POST", code="method_not_allowed")
        req.body = await self._read_body(scope, receive, req)
        try:
            if req.body is None:
                req.status = 499  # the caller went away
                return
            if kind == "multipart":
                model = _multipart_model(req.body, _header(scope, b"content-type"))
            else:
                model = await _json_model(req.body)
            upstream = self.routes.get(model)
            req.model = _bounded(model, ECHO_CHARS)
            if upstream is None:
                raise GatewayError(
                    404,
                    f"The model `{_bounded(model, ECHO_CHARS)}` does not exist: "
                    "GET /v1/models lists the models served here",
                    param="model",
                    code="model_not_found",
                )
            if self.splits:
                split = self.splits.get(upstream.name)
                if split is not None:
                    upstream = self._pick(split)
            req.model, req.upstream = model, upstream.name
            self.metrics.enter(model, upstream.name)
            req.status = await self._proxy_until_done(upstream, scope, receive, send, req, cors)
        finally:
            self._release(req)

    def _pick(self, split):
        """One upstream of a split, with probability weight / total."""
        upstreams, cumulative, total = split
        x = self.rng.random() * total
        for upstream, upto in zip(upstreams, cumulative, strict=True):
            if x < upto:
                return upstream
        return upstreams[-1]

    def _release(self, req):
        """The request's body is no longer held: drop it and its share of `max_buffered_bytes`."""
        self.buffered -= req.held
        req.held, req.body = 0, None

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._client()  # its TLS context takes ~60 ms to build: not on a request's path
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

    def _authenticate(self, scope, also=""):
        expected = self.environ.get(self.api_key_env, "")
        if not expected:
            raise GatewayError(
                500,
                f"the gateway's API key is not configured ({self.api_key_env} is not set: "
                "check the gateway's Modal Secret)",
                type_="server_error",
                code="gateway_misconfigured",
            )
        given = _header(scope, b"authorization")
        token = (given[7:].strip() if given[:7].lower() == "bearer " else "").encode()
        ok = hmac.compare_digest(token, expected.encode())
        if also:
            ok = hmac.compare_digest(token, also.encode()) | ok
        if not ok:
            raise GatewayError(
                401,
                "Incorrect or missing API key: send `Authorization: Bearer KEY` with the gateway's key",
                code="invalid_api_key",
                headers=[(b"www-authenticate", b"Bearer")],
            )

    def _cors_headers(self, scope):
        if not self.cors_origins:
            return []
        origin = _header(scope, b"origin")
        if not origin:
            return []
        if "*" in self.cors_origins:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self.cors_origins:
            return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        return []

    def _models(self, one):
        data = [{"id": name, "object": "model", "created": 0, "owned_by": up.name} for name, up in self.routes.items()]
        if one is None:
            return {"object": "list", "data": data}
        for entry in data:
            if entry["id"] == one:
                return entry
        raise GatewayError(
            404, f"The model `{_bounded(one, ECHO_CHARS)}` does not exist", param="model", code="model_not_found"
        )

    async def _read_body(self, scope, receive, req):
        """The whole request body, or None if the caller disconnected first. Bounded per request and, for
        all requests together, by what the container's memory affords; counted in `self.buffered` until
        `_release`."""
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise GatewayError(413, f"request body over {self.max_body_bytes} bytes", code="request_too_large")
        body, size = b"", 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                self.buffered += len(chunk)
                if size > self.max_body_bytes:
                    raise GatewayError(413, f"request body over {self.max_body_bytes} bytes", code="request_too_large")
                if self.buffered > self.max_buffered_bytes:
                    raise GatewayError(
                        503,
                        "The gateway is busy: retry",
                        type_="server_error",
                        code="overloaded",
                        headers=[(b"retry-after", b"1")],
                        detail=f"request bodies held would pass {self.max_buffered_bytes} bytes",
                    )
                if chunk:  # grown in place (Linux moves big buffers without copying): no long join
                    if not body:
                        body = chunk
                    else:
                        if isinstance(body, bytes):
                            body = bytearray(body)
                        body += chunk
                if not message.get("more_body", False):
                    req.bytes_in = req.held = size
                    size = 0  # from here `_release` gives it back
                    return body
        finally:
            self.buffered -= size

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
                raise GatewayError(
                    500,
                    f"upstream {upstream.name} needs a Modal proxy-auth token: set "
                    f"{PROXY_TOKEN_ID_ENV} and {PROXY_TOKEN_SECRET_ENV} in the gateway's "
                    "upstream Secret",
                    type_="server_error",
                    code="gateway_misconfigured",
                )
            headers["Modal-Key"], headers["Modal-Secret"] = key, secret
        elif upstream.auth == "api_key":
            key = self.environ.get(upstream.key_env)
            if not key:
                raise GatewayError(
                    500,
                    f"upstream {upstream.name} needs its API key: set {upstream.key_env} in the "
                    "gateway's upstream Secret",
                    type_="server_error",
                    code="gateway_misconfigured",
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _client(self):
        if self._session is None:
            import aiohttp

            # No sock_read timer: aiohttp would re-arm it on every chunk (about 6% of the CPU a relayed
            # event costs). The wait for the status is bounded in `_connect`; a stream that goes silent
            # ends with the request's own timeout (the Modal function's).
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=None),
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
            )
        return self._session

    async def _proxy_until_done(self, upstream, scope, receive, send, req, cors):
        """Proxy, but stop (and so cancel the upstream request) as soon as the caller disconnects."""
        proxy = asyncio.ensure_future(self._proxy(upstream, scope, send, req, cors))
        gone = asyncio.ensure_future(_until_disconnect(receive))
        done, _ = await asyncio.wait({proxy, gone}, return_when=asyncio.FIRST_COMPLETED)
        if proxy in done:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
            return proxy.result()
        proxy.cancel()
        await asyncio.gather(proxy, return_exceptions=True)
        return 499

    def _unavailable(self, upstream, model_detail):
        return GatewayError(
            503,
            "The model is not available right now (its deployment may be starting): retry",
            type_="server_error",
            code="upstream_unavailable",
            headers=[(b"retry-after", b"10")],
            detail=f"deployment {upstream.name}: {model_detail}",
        )

    async def _connect(self, upstream, scope, req):
        """The upstream's response (status and headers read). Cold starts (connection refused, 503) are
        waited out until `upstream_timeout`; once the upstream has the request, its answer may take
        `read_timeout`; a pooled connection the upstream had closed is retried at once."""
        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.upstream_timeout
        try:
            base = await asyncio.wait_for(upstream.base_url(), timeout=self.upstream_timeout)
        except Exception as exc:  # noqa: BLE001 - any lookup failure is the same answer for the caller
            raise self._unavailable(upstream, f"lookup failed: {_one_line(exc)}") from None
        query = scope.get("query_string", b"").decode("latin-1")
        target = base + scope["path"] + (f"?{query}" if query else "")
        headers = self._upstream_headers(upstream, scope)
        headers["content-length"] = str(len(req.body))  # kept when a big body goes in slices
        session = await self._client()
        delay, last, stale_retried = self.backoff_initial, "no attempt", False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._unavailable(upstream, f"not ready within {self.upstream_timeout:g} s (last: {last})")
            timeout = aiohttp.ClientTimeout(
                total=None, connect=remaining, sock_connect=min(remaining, self.connect_timeout), sock_read=None
            )
            try:
                response = await asyncio.wait_for(
                    session.post(target, data=_upload(req.body), headers=headers, timeout=timeout), self.read_timeout
                )
            except aiohttp.ClientConnectorError as exc:  # nothing listens (yet): a cold start
                last = _one_line(exc)
            except aiohttp.ConnectionTimeoutError as exc:
                last = _one_line(exc) or "connect timeout"
            except TimeoutError:  # connected, request sent, no status within read_timeout
                raise GatewayError(
                    504,
                    "The model did not answer in time",
                    type_="server_error",
                    code="upstream_timeout",
                    detail=f"deployment {upstream.name}: silent for {self.read_timeout:g} s",
                ) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Most often a pooled keep-alive connection the upstream closed as we reused it: retry at once.
                last = _one_line(exc) or type(exc).__name__
                if not stale_retried:
                    stale_retried = True
                    continue
            else:
                if response.status not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status}"
                response.release()
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            delay = min(delay * 2, self.backoff_max)

    async def _proxy(self, upstream, scope, send, req, cors):
        import aiohttp

        response = await self._connect(upstream, scope, req)
        self._release(req)  # the upstream has the body: it is no longer held here
        try:
            headers = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.items()
                if k.lower() not in DROPPED_RESPONSE_HEADERS
            ]
            req.status, req.answered = response.status, True
            await send({"type": "http.response.start", "status": response.status, "headers": headers + cors})
            content, sent, first = response.content, 0, True
            events = _Events() if response.headers.get("content-type", "").startswith("text/event-stream") else None
            try:
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    if first:
                        req.ttft, first = time.monotonic() - req.started, False
                    sent += len(chunk)
                    if events is not None:
                        events.see(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, aiohttp.ClientError) as exc:
                req.bytes_out = sent
                if events is not None:
                    req.tpot = events.per_token()
                detail = f"deployment {upstream.name} broke off its answer after {sent} bytes: {_one_line(exc)}"
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamBroken(detail) from None
                # An event stream's client reads errors in-band, as vLLM sends them: say it, then end.
                req.error = detail
                err = {
                    "error": {
                        "message": "The model's answer broke off: retry",
                        "type": "server_error",
                        "param": None,
                        "code": "upstream_disconnected",
                    }
                }
                await send(
                    {"type": "http.response.body", "body": f"data: {json.dumps(err)}\n\n".encode(), "more_body": True}
                )
            req.bytes_out = sent
            if events is not None:
                req.tpot = events.per_token()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status
        finally:
            response.release()


# --- helpers -----------------------------------------------------------------------------------------------


def _bind_lookup(lookup, app, environment):
    async def find():
        return await lookup(app, environment)

    return find


def _splits(routes, splits):
    """`splits` checked against `routes` -> deployment -> (upstreams, cumulative weights, total)."""
    deployments = {u.name for u in routes.values()}
    out = {}
    for name, entries in splits.items():
        if name not in deployments:
            raise ValueError(f"split for {name!r}: no model routes to a deployment of that name")
        entries = list(entries)
        if not entries or not all(_positive(w) for _, w in entries):
            raise ValueError(f"split for {name!r}: needs one or more upstreams, each with a positive weight")
        if len({u.name for u, _ in entries}) != len(entries):
            raise ValueError(f"split for {name!r}: an upstream is named twice")
        cumulative, total = [], 0
        for _, weight in entries:
            total += weight
            cumulative.append(total)
        out[name] = (tuple(u for u, _ in entries), tuple(cumulative), total)
    return out


def _positive(weight):
    """A finite number above 0 (not a bool; NaN fails every comparison, so it fails this one)."""
    return not isinstance(weight, bool) and isinstance(weight, (int, float)) and 0 < weight < float("inf")


def _header(scope, name):
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _upload(body):
    """The body for aiohttp: as it is when small; a big one in SCAN_SLICE slices of one memoryview, so
    that handing it to the socket neither copies it whole nor holds the event loop."""
    if len(body) <= 4 * SCAN_SLICE:
        return bytes(body) if isinstance(body, bytearray) else body

    async def slices():
        view = memoryview(body)
        for at in range(0, len(view), SCAN_SLICE):
            yield view[at : at + SCAN_SLICE]

    return slices()


def _bounded(text, limit=200):
    """`text` cut to `limit` characters, for an answer that would otherwise echo whatever it was sent."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _observe(table, buckets, key, value):
    """One observation into a histogram of `table`: [cumulative count per bucket..., count, sum]."""
    hist = table.get(key)
    if hist is None:
        hist = table[key] = [0] * (len(buckets) + 2)
    for i, bound in enumerate(buckets):
        if value <= bound:
            hist[i] += 1
    hist[-2] += 1
    hist[-1] += value


def _histogram(name, what, table, buckets):
    """A histogram family's lines, one series a (model, upstream)."""
    out = [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
    for key, hist in sorted(table.items()):
        labels = _labels(*key)
        out += [f'{name}_bucket{{{labels},le="{b:g}"}} {hist[i]}' for i, b in enumerate(buckets)]
        out += [
            f'{name}_bucket{{{labels},le="+Inf"}} {hist[-2]}',
            f"{name}_count{{{labels}}} {hist[-2]}",
            f"{name}_sum{{{labels}}} {hist[-1]:.6f}",
        ]
    return out


def _labels(model, upstream):
    return f"model={_quote(model)},upstream={_quote(upstream)}"


def _quote(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# --- reading `model` without parsing the body -----------------------------------------------------------------

_WS = re.compile(rb"[ \t\r\n]*")
# Inside an array or object: any run of characters other than brackets and quotes, and whole strings.
_INSIDE = re.compile(rb'(?:[^"\[\]{}]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.DOTALL)
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)  # the inside of a JSON string, escapes and all
_SCALAR = re.compile(rb"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)(?=[,}\]\s]|$)")


def _bad_json(at, why):
    return GatewayError(400, f"request body is not valid JSON ({why} at byte {at})", code="invalid_json")


async def _string_end(body, at):
    """Index just past the JSON string starting at `at` (its opening quote); yields every SCAN_SLICE."""
    pos, end = at + 1, len(body)
    while True:
        stop = min(end, pos + max(SCAN_SLICE, 2))  # a backslash and what it escapes fit in any slice
        pos = _STRING_BODY.match(body, pos, stop).end()
        if pos < stop and body[pos] == 0x22:  # the closing quote
            return pos + 1
        # Else the slice ended inside the string, or cut a backslash from what it escapes (`pos` is that
        # backslash, and the next slice starts there).
        if stop == end:
            raise _bad_json(at, "unterminated string")
        await asyncio.sleep(0)


async def _value_end(body, at):
    """Index just past the JSON value at `at`, found without building it: strings are skipped whole,
    arrays and objects by counting brackets (no recursion, so depth costs nothing)."""
    end = len(body)
    if at >= end:
        raise _bad_json(at, "missing value")
    first = body[at]
    if first == 0x22:
        return await _string_end(body, at)
    if first not in (0x5B, 0x7B):  # a number, true, false or null
        found = _SCALAR.match(body, at, min(end, at + 4096))
        if found is None:
            raise _bad_json(at, "unexpected value")
        return found.end()
    depth, pos, budget = 0, at, SCAN_SLICE
    while True:
        # One C call skips everything up to the next bracket, whole strings included (a million short
        # strings cost one call, not a million steps here).
        stop = min(end, pos + SCAN_SLICE)
        skipped = _INSIDE.match(body, pos, stop).end()
        budget -= skipped - pos + 64
        pos = skipped
        if pos == stop:
            if stop == end:
                raise _bad_json(at, "unterminated array or object")
            await asyncio.sleep(0)
            continue
        ch = body[pos]
        if ch == 0x22:  # a string the slice cut, or a long one
            pos = await _string_end(body, pos)
        else:
            pos += 1
            depth += 1 if ch in (0x5B, 0x7B) else -1
            if depth == 0:
                return pos
        if budget <= 0:
            budget = SCAN_SLICE
            await asyncio.sleep(0)


async def _json_model(body):
    """The `model` of a JSON request body, read by walking its top-level keys only; the last `model`
    wins, as in the JSON parser of the upstream. Every malformation it meets is a 400."""
    end = len(body)
    pos = _WS.match(body, 0).end()
    if pos >= end or body[pos] != 0x7B:
        raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
    pos = _WS.match(body, pos + 1).end()
    model, found, keys = None, False, 0
    if pos < end and body[pos] == 0x7D:
        pos += 1
    else:
        while True:
            keys += 1
            if keys > MAX_TOP_KEYS:  # a request has a few dozen; this many only costs CPU to walk
                raise GatewayError(400, f"request body has over {MAX_TOP_KEYS} top-level keys", code="invalid_json")
            if pos >= end or body[pos] != 0x22:
                raise _bad_json(pos, "expected a key")
            key_end = await _string_end(body, pos)
            key = body[pos:key_end]
            pos = _WS.match(body, key_end).end()
            if pos >= end or body[pos] != 0x3A:
                raise _bad_json(pos, "expected ':'")
            pos = _WS.match(body, pos + 1).end()
            value_end = await _value_end(body, pos)
            if key == b'"model"' or (b"\\" in key and len(key) < 64 and _decoded(key, pos) == "model"):
                found, model = True, (pos, value_end)
            pos = _WS.match(body, value_end).end()
            if pos < end and body[pos] == 0x2C:
                pos = _WS.match(body, pos + 1).end()
                continue
            if pos < end and body[pos] == 0x7D:
                pos += 1
                break
            raise _bad_json(pos, "expected ',' or '}'")
    if _WS.match(body, pos).end() != end:
        raise _bad_json(pos, "extra data after the object")
    if not found:
        raise GatewayError(400, "you must provide a model parameter", param="model", code="missing_model")
    start, stop = model
    if body[start] != 0x22:
        raise GatewayError(400, "model must be a string", param="model", code="invalid_model")
    if stop - start > MAX_MODEL_BYTES:
        return f"(a name of {stop - start} bytes)"  # served names are short: this one is unknown
    name = _decoded(body[start:stop], start)
    if not name:
        raise GatewayError(400, "you must provide a model parameter", param="model", code="missing_model")
    return name


def _decoded(raw, at):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # bad escapes, bad UTF-8 (UnicodeDecodeError is a ValueError)
        raise _bad_json(at, "bad string") from None


def _multipart_model(body, content_type):
    """The `model` field of a multipart/form-data body (the audio routes), found with byte searches."""
    boundary = None
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise GatewayError(400, "this route takes multipart/form-data with a boundary", code="invalid_body")
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    while pos >= 0:
        head_start = pos + len(delimiter)
        if body[head_start : head_start + 2] == b"--":
            break  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end < 0:
            break
        nxt = body.find(b"\r\n" + delimiter, head_end)
        if nxt < 0:
            break
        head = body[head_start:head_end].lower()
        if re.search(rb'content-disposition:[^\r\n]*;\s*name="model"', head):
            value = body[head_end + 4 : nxt]
            if len(value) > MAX_MODEL_BYTES:
                return f"(a name of {len(value)} bytes)"
            try:
                return value.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise GatewayError(400, "model is not UTF-8", param="model", code="invalid_model") from None
        pos = nxt + 2
    raise GatewayError(400, "you must provide a model parameter", param="model", code="missing_model")


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
