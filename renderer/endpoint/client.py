"""HTTP client for the OpenAI-compatible server vLLM runs in each deployment.

Used by ``fleetform test`` (a smoke test of one deployed model) and by
``fleetform bench`` (see :mod:`renderer.endpoint.bench`, which reuses the streaming
request and the error taxonomy defined here).

Every failure becomes a :class:`ClientError` carrying a :class:`FailureKind`
and a one-line message that says what to do about it, so the CLI can print it
without a traceback and the benchmark can count failures by kind.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import aiohttp

from renderer.endpoint import AUTH_KINDS  # the one list of auth kinds (the CLI offers it as choices)

PROXY_TOKEN_ID_VAR = "MODAL_PROXY_TOKEN_ID"
PROXY_TOKEN_SECRET_VAR = "MODAL_PROXY_TOKEN_SECRET"
DEFAULT_API_KEY_VAR = "FLEETFORM_API_KEY"

PIRATE = "You are a pirate who can't help but drop sly reminders that he went to Harvard."
JAR_JAR = "You are Jar Jar Binks."
SVD = "Explain the singular value decomposition."
# The reference example's prompts: (system prompt, user prompt).
DEFAULT_PROMPTS: tuple[tuple[str | None, str], ...] = ((PIRATE, SVD), (JAR_JAR, SVD))

# Longest error body quoted back to the user.
_MAX_ERROR_CHARS = 300


class FailureKind(str, Enum):
    """Why a request failed; the benchmark counts failures per kind."""

    CONNECT = "connect"  # refused, DNS, connection dropped mid-response
    AUTH = "auth"  # 401/403, or credentials missing from the environment
    NOT_FOUND = "not_found"  # 404: unknown model or route
    BAD_REQUEST = "bad_request"  # other 4xx, e.g. prompt longer than the context
    SERVER_ERROR = "server_error"  # 5xx, or an error object inside the stream
    BAD_STREAM = "bad_stream"  # malformed/truncated SSE or JSON
    TIMEOUT = "timeout"  # connect, idle (hung stream) or total timeout
    OTHER = "other"


class ClientError(Exception):
    """A failed interaction with the server, with a message fit for users."""

    def __init__(self, kind: FailureKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


# --------------------------------------------------------------------------- auth


def auth_headers(
    kind: str, env: Mapping[str, str] | None = None, *, api_key_var: str = DEFAULT_API_KEY_VAR
) -> dict[str, str]:
    """Build request headers for an auth kind from environment variables.

    ``proxy``: Modal proxy auth (``Modal-Key``/``Modal-Secret`` from
    MODAL_PROXY_TOKEN_ID/MODAL_PROXY_TOKEN_SECRET); ``api_key``: vLLM's
    ``--api-key`` (``Authorization: Bearer`` from ``api_key_var``); ``none``.
    Raises ClientError(AUTH) naming the variables to set when some are missing.
    """
    env = os.environ if env is None else env
    if kind == "none":
        return {}
    if kind == "proxy":
        missing = [v for v in (PROXY_TOKEN_ID_VAR, PROXY_TOKEN_SECRET_VAR) if not env.get(v)]
        if missing:
            raise ClientError(
                FailureKind.AUTH,
                f"Modal proxy auth needs {' and '.join(missing)} in the environment "
                "(create a proxy auth token in the Modal dashboard settings)",
            )
        return {"Modal-Key": env[PROXY_TOKEN_ID_VAR], "Modal-Secret": env[PROXY_TOKEN_SECRET_VAR]}
    if kind == "api_key":
        if not env.get(api_key_var):
            raise ClientError(FailureKind.AUTH, f"API key auth needs {api_key_var} set in the environment")
        return {"Authorization": f"Bearer {env[api_key_var]}"}
    raise ClientError(FailureKind.OTHER, f"unknown auth kind {kind!r}; use one of {', '.join(AUTH_KINDS)}")


def _auth_hint(kind: str, api_key_var: str) -> str:
    if kind == "proxy":
        return f"set {PROXY_TOKEN_ID_VAR}/{PROXY_TOKEN_SECRET_VAR} to a valid Modal proxy auth token"
    if kind == "api_key":
        return f"set {api_key_var} to the key the server was started with"
    return "the server wants credentials: use proxy auth (Modal) or an API key"


@dataclass(frozen=True)
class Endpoint:
    """Where a deployment's OpenAI-compatible server lives and how to authenticate."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    # What to tell the user on a 401/403 (which variables to set).
    auth_hint: str = field(default_factory=lambda: _auth_hint("none", DEFAULT_API_KEY_VAR))

    @classmethod
    def from_env(
        cls,
        base_url: str,
        auth: str = "none",
        env: Mapping[str, str] | None = None,
        *,
        api_key_var: str = DEFAULT_API_KEY_VAR,
    ) -> Endpoint:
        """An endpoint whose auth headers come from the environment (see auth_headers)."""
        headers = auth_headers(auth, env, api_key_var=api_key_var)
        return cls(base_url, headers, _auth_hint(auth, api_key_var))

    auth_headers = staticmethod(auth_headers)

    def url(self, path: str) -> str:
        """Absolute URL of an API path; tolerates a base URL ending in / or /v1."""
        base = self.base_url.rstrip("/")
        base = base.removesuffix("/v1")
        return base + path


def open_session(endpoint: Endpoint, limit: int = 10) -> aiohttp.ClientSession:
    """One session (connection pool of ``limit``, 0 = unbounded) for many requests.

    Timeouts are given per request, so the session has none of its own.
    """
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(
        connector=connector,
        headers=endpoint.headers,
        timeout=aiohttp.ClientTimeout(total=None),
    )


# --------------------------------------------------------------------------- errors


def _server_message(body: str) -> str:
    """The human part of an error body: OpenAI/vLLM/FastAPI JSON, or the text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    text = " ".join(body.split())
    return text[:_MAX_ERROR_CHARS] + ("..." if len(text) > _MAX_ERROR_CHARS else "")


def http_error(status: int, body: str, endpoint: Endpoint, what: str) -> ClientError:
    """Turn a non-200 answer to ``what`` (e.g. "GET /health") into a ClientError."""
    msg = _server_message(body)
    detail = f": {msg}" if msg else ""
    if status in (401, 403):
        return ClientError(
            FailureKind.AUTH,
            f"authentication failed (HTTP {status}) for {what}: {endpoint.auth_hint}",
            status=status,
        )
    if status == 404:
        return ClientError(FailureKind.NOT_FOUND, f"{what} -> HTTP 404{detail}", status=status)
    if 400 <= status < 500:
        return ClientError(FailureKind.BAD_REQUEST, f"{what} -> HTTP {status}{detail}", status=status)
    if status >= 500:
        return ClientError(FailureKind.SERVER_ERROR, f"server error: {what} -> HTTP {status}{detail}", status=status)
    return ClientError(FailureKind.OTHER, f"{what} -> unexpected HTTP {status}{detail}", status=status)


async def _error_from_response(resp: aiohttp.ClientResponse, endpoint: Endpoint, what: str) -> ClientError:
    try:
        body = (await resp.read()).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        body = ""
    return http_error(resp.status, body, endpoint, what)


def classify_exception(exc: BaseException, what: str) -> ClientError:
    """Map a transport-level exception raised while doing ``what`` to a ClientError."""
    if isinstance(exc, ClientError):
        return exc
    # aiohttp's timeout errors are also ClientConnectionErrors: test them first.
    if isinstance(exc, asyncio.TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            reason = "connecting took too long"
        elif isinstance(exc, aiohttp.SocketTimeoutError):
            reason = "the server stopped sending data (idle timeout)"
        else:
            reason = "no complete answer in time"
        return ClientError(FailureKind.TIMEOUT, f"timed out: {what}: {reason}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return ClientError(
            FailureKind.CONNECT,
            f"cannot connect to {exc.host}:{exc.port} ({reason}): is the app deployed and the URL right?",
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ClientError(FailureKind.CONNECT, f"{what}: the server closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ClientError(FailureKind.CONNECT, f"{what}: connection lost mid-response")
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return ClientError(FailureKind.CONNECT, f"{what}: connection error: {exc}")
    return ClientError(FailureKind.OTHER, f"{what}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- requests


async def list_models(session: aiohttp.ClientSession, endpoint: Endpoint, timeout: float = 30.0) -> list[str]:
    """Ids the server serves (``GET /v1/models``)."""
    what = "GET /v1/models"
    try:
        async with session.get(endpoint.url("/v1/models"), timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise await _error_from_response(resp, endpoint, what)
            try:
                data = await resp.json(content_type=None)
                return [str(m["id"]) for m in data["data"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise ClientError(FailureKind.BAD_STREAM, f"{what}: not an OpenAI model list") from exc
    except Exception as exc:
        raise classify_exception(exc, what) from exc


async def check_health(session: aiohttp.ClientSession, endpoint: Endpoint, timeout: float) -> None:
    """One ``GET /health``; raises ClientError unless it answers 200."""
    what = "GET /health"
    try:
        async with session.get(endpoint.url("/health"), timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise await _error_from_response(resp, endpoint, what)
            await resp.read()
    except Exception as exc:
        raise classify_exception(exc, what) from exc


# Failures that waiting will not cure: stop polling /health at once.
_FATAL_FOR_HEALTH = (FailureKind.AUTH, FailureKind.NOT_FOUND)


async def wait_for_health(
    endpoint: Endpoint,
    timeout: float = 600.0,
    interval: float = 2.0,
    *,
    session: aiohttp.ClientSession | None = None,
) -> float:
    """Poll ``GET /health`` until it answers 200; return the seconds waited.

    Cold Modal containers (and vLLM loading weights) answer slowly or with
    5xx for a while, so those and connection errors are retried until
    ``timeout``. Auth failures and 404s are raised at once. On timeout the
    ClientError carries the kind of the last failure (e.g. CONNECT if the
    server never accepted a connection), else TIMEOUT.
    """
    if session is None:
        async with open_session(endpoint, limit=1) as own:
            return await wait_for_health(endpoint, timeout, interval, session=own)
    start = time.monotonic()
    deadline = start + timeout
    last: ClientError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            await check_health(session, endpoint, remaining)
            return time.monotonic() - start
        except ClientError as exc:
            if exc.kind in _FATAL_FOR_HEALTH:
                raise
            last = exc
        await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))
    kind = last.kind if last is not None else FailureKind.TIMEOUT
    reason = f"; last error: {last.message}" if last is not None else ""
    raise ClientError(kind, f"server not healthy after {timeout:g}s{reason}")


@dataclass(slots=True)
class StreamResult:
    """Client-side timing of one streamed chat completion (vLLM bench semantics).

    A token chunk is one carrying choices, except the role-only opener (see
    ``_role_only``). ``ttft``: send -> first token chunk; ``itl``: gaps
    between successive token chunks; ``latency``: send -> last token chunk
    (the trailing usage chunk and ``[DONE]`` are not tokens). All in seconds.
    Token counts are the server's usage figures, None if it reported none.
    """

    start: float
    ttft: float
    latency: float
    itl: list[float]
    prompt_tokens: int | None
    output_tokens: int | None
    text: str


CHAT_PATH = "/v1/chat/completions"
_STREAM_WHAT = f"POST {CHAT_PATH} (stream)"


async def stream_chat(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    payload: dict[str, Any],
    *,
    timeout: aiohttp.ClientTimeout,
    keep_text: bool = True,
) -> StreamResult:
    """POST a streaming chat completion and time its server-sent events.

    ``payload`` must ask for ``stream: true`` (and ``stream_options.include_usage``
    for token counts). Raises ClientError on any failure; a stream must end
    with ``data: [DONE]`` and every chunk must be a ``chat.completion.chunk``.
    """
    start = time.perf_counter()
    try:
        async with session.post(endpoint.url(CHAT_PATH), json=payload, timeout=timeout) as resp:
            if resp.status != 200:
                raise await _error_from_response(resp, endpoint, _STREAM_WHAT)
            return await _read_events(resp, start, keep_text)
    except Exception as exc:
        raise classify_exception(exc, _STREAM_WHAT) from exc


def _bad_stream(message: str) -> ClientError:
    return ClientError(FailureKind.BAD_STREAM, f"bad stream from {CHAT_PATH}: {message}")


class _EventParser:
    """Token timings of one SSE stream, fed line by line (see StreamResult)."""

    __slots__ = ("keep_text", "first", "last", "got_token", "done", "itl", "parts", "usage")

    def __init__(self, keep_text: bool) -> None:
        self.keep_text = keep_text
        self.first = self.last = 0.0
        self.got_token = self.done = False
        self.itl: list[float] = []
        self.parts: list[str] = []
        self.usage: dict[str, Any] = {}

    def line(self, line: bytes) -> bool:
        """Handle one line; True once ``data: [DONE]`` arrived. Only ``data:``
        lines matter: blank separators, comments and event:/id: fields don't."""
        if not line.startswith(b"data:"):
            return False
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(data.decode())  # str: spares json its encoding sniffing
        except ValueError:  # includes UnicodeDecodeError
            raise _bad_stream(f"chunk is not JSON: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise _bad_stream(f"chunk is not a JSON object: {data[:120]!r}")
        if "error" in chunk or chunk.get("object") == "error":
            raise ClientError(
                FailureKind.SERVER_ERROR,
                f"server error inside the stream: {_server_message(data.decode('utf-8', 'replace'))}",
            )
        if chunk.get("object") != "chat.completion.chunk":
            raise _bad_stream(f"chunk object is {chunk.get('object')!r}, not 'chat.completion.chunk'")
        choices = chunk.get("choices")
        if choices and not _role_only(choices[0]):
            now = time.perf_counter()
            if self.got_token:
                self.itl.append(now - self.last)
            else:
                self.got_token, self.first = True, now
            self.last = now
            if self.keep_text:
                content = (choices[0].get("delta") or {}).get("content")
                if content:
                    self.parts.append(content)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        return False

    def result(self, start: float) -> StreamResult:
        if not self.done:
            raise _bad_stream("ended without `data: [DONE]` (truncated)")
        if not self.got_token:
            raise _bad_stream("no chunk carried any choices")
        return StreamResult(
            start=start,
            ttft=self.first - start,
            latency=self.last - start,
            itl=self.itl,
            prompt_tokens=self.usage.get("prompt_tokens"),
            output_tokens=self.usage.get("completion_tokens"),
            text="".join(self.parts),
        )


async def _read_events(resp: aiohttp.ClientResponse, start: float, keep_text: bool) -> StreamResult:
    """Split the body into lines as bytes arrive: one await per network read,
    not one per line, which keeps the client cheap at thousands of chunks/s."""
    parser = _EventParser(keep_text)
    pending = b""
    async for block in resp.content.iter_any():
        lines = (pending + block).split(b"\n")
        pending = lines.pop()
        if any(parser.line(line) for line in lines):
            break
    else:
        if pending:
            parser.line(pending)  # a last line without its newline
    result = parser.result(start)
    await _drain(resp)
    return result


def _role_only(choice: dict[str, Any]) -> bool:
    """True for the chunk vLLM opens a stream with: a role, no token.

    vLLM's bench counts it as the first token; it is sent right before the
    first real token, so counting it only adds a ~0 ms ITL sample per request.
    We skip it, so TTFT is the first content token and sum(ITL) = latency - TTFT.
    """
    delta = choice.get("delta")
    if not isinstance(delta, dict) or "role" not in delta or choice.get("finish_reason"):
        return False
    return not any(value for key, value in delta.items() if key != "role")


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Consume the end of the chunked body so the connection can be reused."""
    if not resp.content.at_eof():
        try:
            await asyncio.wait_for(resp.content.read(), 1.0)
        except (TimeoutError, aiohttp.ClientError):
            pass


# --------------------------------------------------------------------------- smoke test


@dataclass
class StepResult:
    """Outcome of one smoke-test step."""

    name: str
    ok: bool
    status: int | None = None
    seconds: float | None = None
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: str = ""
    failure: FailureKind | None = None
    error: str | None = None
    system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failure"] = self.failure.value if self.failure else None
        return data


@dataclass
class SmokeReport:
    """All smoke-test steps against one endpoint; ``ok`` if every step passed."""

    base_url: str
    model: str
    steps: list[StepResult] = field(default_factory=list)
    available_models: list[str] = field(default_factory=list)
    missing_models: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "ok": self.ok,
            "available_models": self.available_models,
            "missing_models": self.missing_models,
            "steps": [s.to_dict() for s in self.steps],
        }


def _failed(name: str, exc: ClientError, seconds: float | None = None, **extra: Any) -> StepResult:
    return StepResult(name, False, status=exc.status, seconds=seconds, failure=exc.kind, error=exc.message, **extra)


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def _normalize_prompts(
    prompts: Sequence[str | tuple[str | None, str]] | None,
) -> list[tuple[str | None, str]]:
    if not prompts:
        return list(DEFAULT_PROMPTS)
    return [(None, p) if isinstance(p, str) else (p[0], p[1]) for p in prompts]


def _with_model_list(exc: ClientError, model: str, available: list[str]) -> ClientError:
    """Name the served models in a 404 so the user sees what to ask for."""
    if exc.kind is not FailureKind.NOT_FOUND or not available:
        return exc
    msg = f"{exc.message} (model {model!r}; the server serves: {', '.join(available)})"
    return ClientError(exc.kind, msg, status=exc.status)


async def _step_models(
    session: aiohttp.ClientSession, endpoint: Endpoint, names: Sequence[str], report: SmokeReport
) -> StepResult:
    t0 = time.perf_counter()
    try:
        available = await list_models(session, endpoint)
    except ClientError as exc:
        return _failed("models", exc, time.perf_counter() - t0)
    report.available_models = available
    report.missing_models = [n for n in names if n not in available]
    seconds = time.perf_counter() - t0
    if report.missing_models:
        exc = ClientError(
            FailureKind.NOT_FOUND,
            f"the server does not serve {', '.join(report.missing_models)}; "
            f"it serves: {', '.join(available) or '(nothing)'}",
            status=200,
        )
        return _failed("models", exc, seconds)
    return StepResult("models", True, status=200, seconds=seconds, text=", ".join(available))


async def _step_chat(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    model: str,
    prompt: tuple[str | None, str],
    max_tokens: int,
    timeout: float,
    available: list[str],
) -> StepResult:
    """One non-streaming chat completion."""
    what = f"POST {CHAT_PATH}"
    payload = {"model": model, "messages": _messages(*prompt), "max_tokens": max_tokens, "stream": False}
    t0 = time.perf_counter()
    try:
        async with session.post(
            endpoint.url(CHAT_PATH), json=payload, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                raise await _error_from_response(resp, endpoint, what)
            try:
                data = await resp.json(content_type=None)
                if data.get("object") != "chat.completion":
                    raise ValueError(f"object is {data.get('object')!r}")
                text = data["choices"][0]["message"]["content"] or ""
                usage = data.get("usage") or {}
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                raise ClientError(
                    FailureKind.BAD_STREAM, f"{what}: malformed chat completion ({exc})", status=200
                ) from exc
    except Exception as exc:
        err = _with_model_list(classify_exception(exc, what), model, available)
        return _failed("chat", err, time.perf_counter() - t0, system_prompt=prompt[0])
    seconds = time.perf_counter() - t0
    completion = usage.get("completion_tokens")
    return StepResult(
        "chat",
        True,
        status=200,
        seconds=seconds,
        tokens_per_s=completion / seconds if completion and seconds > 0 else None,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=completion,
        text=text,
        system_prompt=prompt[0],
    )


async def _step_stream(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    model: str,
    prompt: tuple[str | None, str],
    max_tokens: int,
    timeout: float,
    available: list[str],
    name: str,
) -> StepResult:
    """One streaming chat completion with usage; tokens/s is decode speed (1/TPOT)."""
    payload = {
        "model": model,
        "messages": _messages(*prompt),
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    limits = aiohttp.ClientTimeout(total=timeout, sock_read=timeout)
    try:
        res = await stream_chat(session, endpoint, payload, timeout=limits)
    except ClientError as exc:
        return _failed(name, _with_model_list(exc, model, available), system_prompt=prompt[0])
    n = res.output_tokens
    decode = res.latency - res.ttft
    return StepResult(
        name,
        True,
        status=200,
        seconds=res.latency,
        ttft_s=res.ttft,
        tokens_per_s=(n - 1) / decode if n and n > 1 and decode > 0 else None,
        prompt_tokens=res.prompt_tokens,
        completion_tokens=n,
        text=res.text,
        system_prompt=prompt[0],
    )


async def smoke_test(
    endpoint: Endpoint,
    served_model_names: Sequence[str],
    *,
    prompts: Sequence[str | tuple[str | None, str]] | None = None,
    health_timeout: float = 600.0,
    request_timeout: float = 120.0,
    max_tokens: int = 256,
    health_interval: float = 2.0,
) -> SmokeReport:
    """Check a deployment end to end and report each step; never raises ClientError.

    Steps: wait for ``GET /health`` = 200 (up to ``health_timeout``, to ride
    out a cold start), ``GET /v1/models`` lists every served name, one
    non-streaming chat completion, then one streaming completion per prompt.
    ``prompts`` are user strings or (system, user) pairs; default: the
    reference example's pirate and Jar Jar Binks prompts. The chat steps use
    the first served name. Later steps are skipped if /health fails. With no
    ``served_model_names``, the names are those ``GET /v1/models`` lists (as
    ``bench`` does); a server that lists none fails the models step.
    """
    model = served_model_names[0] if served_model_names else ""
    chosen = _normalize_prompts(prompts)
    report = SmokeReport(base_url=endpoint.base_url, model=model)
    async with open_session(endpoint, limit=2) as session:
        t0 = time.perf_counter()
        try:
            await wait_for_health(endpoint, health_timeout, health_interval, session=session)
        except ClientError as exc:
            report.steps.append(_failed("health", exc, time.perf_counter() - t0))
            return report
        report.steps.append(StepResult("health", True, status=200, seconds=time.perf_counter() - t0))
        report.steps.append(await _step_models(session, endpoint, served_model_names, report))
        available = report.available_models
        if not model:
            if not available:
                if report.steps[-1].ok:
                    report.steps[-1] = _failed(
                        "models",
                        ClientError(FailureKind.NOT_FOUND, "the server lists no model at /v1/models", status=200),
                        report.steps[-1].seconds,
                    )
                return report
            model = report.model = available[0]
        report.steps.append(
            await _step_chat(session, endpoint, model, chosen[0], max_tokens, request_timeout, available)
        )
        for i, prompt in enumerate(chosen, 1):
            name = "stream" if len(chosen) == 1 else f"stream {i}"
            report.steps.append(
                await _step_stream(session, endpoint, model, prompt, max_tokens, request_timeout, available, name)
            )
    return report


def run_smoke(endpoint: Endpoint, served_model_names: Sequence[str], **kwargs: Any) -> SmokeReport:
    """Blocking wrapper around :func:`smoke_test` for the CLI."""
    return asyncio.run(smoke_test(endpoint, served_model_names, **kwargs))
