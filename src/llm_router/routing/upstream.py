"""An OpenAI-compatible upstream (vLLM, llama-server, Ollama, OpenAI, another llm-router) as a
routing target.

Every `Upstream` shares one `aiohttp.ClientSession` that its caller owns and closes, so
connections are pooled across targets and requests. aiohttp rather than httpx: its client path
costs about a third of httpx's CPU per request (measured against the overhead benchmark's
stub: ~220 us vs ~720 us), and that difference was most of the latency the router added.
Bodies are passed through untouched except `model` (replaced by the upstream's own name) and
`stream`; streamed chunks are handed on one by one as the upstream sends them, never buffered.

Errors leave in one error tree, translated in one place (upstream_errors.py) by transport
exception class, HTTP status and the structured `code` of the upstream's error envelope; never
by message text. The API key is only ever put in the Authorization header: it is not logged,
not in `repr`, not in any error message.

Cancellation: the HTTP request lives inside `async with session.post(...)`, so cancelling an
awaiting `chat()` or closing a `stream_chat()` iterator (`aclose()`, or leaving an
`async with aclosing(...)` block) releases the response before its body is complete, which
closes the connection at once, and the upstream sees the client go away. An iterator that is
merely dropped is closed only when the garbage collector finalises it: callers should close
what they stop reading."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies_environment, proxy_bypass

import aiohttp
from pydantic_core import from_json, to_json

from .. import tracing
from ..errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .upstream_errors import Answer, mid_stream_error, status_error, transport_errors

__all__ = [
    "Upstream",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "env_proxy",
    "status_error",
]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 2**20  # an upstream's whole answer, or one line of its stream: more is refused


class Upstream:
    """One upstream model. `chat`/`complete`/`embed` may be called concurrently; each request
    holds one pooled connection for its duration. `read_timeout` bounds every wait for bytes,
    and on a stream the wait for its first event with content (text, a tool call, a finish
    or usage) and the gap between two of them: keep-alives (SSE comments, empty or role-only
    chunks) do not make it wait longer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        proxy: str | None = None,
    ) -> None:
        self.name = name or model
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._session = session
        self._proxy = proxy
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # sock_read bounds every wait for bytes; no total, since a stream may run for minutes.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        parts = urlsplit(self.base_url)
        # its client spans' attributes (HTTP and GenAI conventions), made once
        self._traced_as = {
            "http.request.method": "POST",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
            "gen_ai.provider.name": "openai",  # its API, whoever serves it
            "gen_ai.request.model": self.model,
        }

    def __repr__(self) -> str:
        return (
            f"Upstream(name={self.name!r}, base_url={_redact(self.base_url)!r}, "
            f"model={self.model!r})"
        )

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /chat/completions without streaming; the upstream's JSON response (an
        UpstreamError when it holds no choices: a 200 carrying an error, or nothing)."""
        data = await self._call("/chat/completions", _body(body, self.model, stream=False))
        return _with_choices(self.name, data)

    def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST /chat/completions streaming; yields each chunk's JSON. Nothing is sent until
        the first `__anext__`, which raises the mapped error if the upstream refuses."""
        return self._stream("/chat/completions", _body(body, self.model, stream=True))

    async def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /completions without streaming; as `chat`."""
        data = await self._call("/completions", _body(body, self.model, stream=False))
        return _with_choices(self.name, data)

    def stream_complete(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST /completions streaming; as `stream_chat`."""
        return self._stream("/completions", _body(body, self.model, stream=True))

    async def embed(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /embeddings."""
        return await self._call("/embeddings", _body(body, self.model, stream=None))

    async def health(self) -> bool:
        """GET /models answers 2xx. Waits at most the connect + read timeouts; upstream trouble
        is False, never an exception (cancellation still propagates)."""
        try:
            async with self._session.get(
                self.base_url + "/models",
                headers=self._headers,
                timeout=self._timeout,
                proxy=self._proxy,
            ) as response:
                await response.read()
                return response.ok
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        span = self._span(path)
        try:
            with transport_errors(self.name) as waiting:
                async with self._send(path, payload, span) as response:
                    waiting.answered()
                    answer = Answer.of(response, await _read(self.name, response.content))
        except BaseException as exc:
            tracing.end(span, error=exc)
            raise
        if span is not None:
            _answered(span, answer.status)
            span.end()
        if answer.status >= 400:
            raise status_error(self.name, answer)
        return _json_object(self.name, answer.body)

    def _stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        span = self._span(path)
        if span is None:
            return self._chunks(path, payload, None)
        return self._traced(self._chunks(path, payload, span), span)

    @staticmethod
    async def _traced(
        chunks: AsyncIterator[dict[str, Any]], span: Any
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:
            tracing.end(span, error=exc)
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        tracing.end(span)

    def _span(self, path: str) -> Any:
        """The client span of one upstream call (None when tracing is off)."""
        span = tracing.start(f"POST {path}", self._traced_as, client=True)
        if span is not None:
            span.attributes["gen_ai.operation.name"] = _OPERATIONS[path]
        return span

    async def _chunks(
        self, path: str, payload: dict[str, Any], span: Any
    ) -> AsyncIterator[dict[str, Any]]:
        patience = _Patience(self.name, self._timeout.sock_read)
        with transport_errors(self.name) as waiting:
            async with self._send(path, payload, span) as response:
                waiting.answered()
                if span is not None:
                    _answered(span, response.status)
                if response.status >= 400:
                    body = await _read(self.name, response.content)
                    raise status_error(self.name, Answer.of(response, body))
                if _is_json(response.content_type):  # the upstream ignored `stream`
                    whole = _json_object(self.name, await _read(self.name, response.content))
                    yield _as_chunk(_with_choices(self.name, whole))
                    return
                events = _SseData()
                done = finished = False
                async for line in _lines(self.name, response.content, patience):
                    # After [DONE], read on to the end so the connection goes back to the pool.
                    data = None if done else events.feed(line)
                    done = done or data == "[DONE]"
                    if data is not None and not done:
                        chunk = _chunk(self.name, data)
                        finished = finished or _has_finish_reason(chunk)
                        patience.moved = patience.moved or _carries(chunk)
                        yield chunk
                if not done and (data := events.flush()) not in (None, "[DONE]"):
                    chunk = _chunk(self.name, data)
                    finished = finished or _has_finish_reason(chunk)
                    yield chunk
                if not (done or finished):  # a cut answer must not pass for a whole one
                    raise UpstreamError(
                        f"upstream {self.name} ended its stream before the answer was done "
                        "(no finish_reason and no [DONE])",
                        status=502,
                    )

    def _send(
        self, path: str, payload: dict[str, Any], span: Any = None
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """POST `payload`; with tracing on, the W3C `traceparent` of `span` (or of the request's
        span, when it is not sampled) goes along."""
        return self._session.post(
            self.base_url + path,
            data=to_json(payload),
            headers=tracing.inject(self._headers, span),
            timeout=self._timeout,
            proxy=self._proxy,
        )


_OPERATIONS = {
    "/chat/completions": "chat",
    "/completions": "text_completion",
    "/embeddings": "embeddings",
}


def _answered(span: tracing.Span, status: int) -> None:
    """The upstream's HTTP status on its client span: an error from 400 up, as the HTTP
    conventions want of a client (a server span leaves 4xx unset)."""
    span.attributes["http.response.status_code"] = status
    if status >= 400:
        span.attributes["error.type"] = str(status)
        span.set_error(None)


def env_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY / NO_PROXY pick for `url`, as curl would, looked up once per
    target: aiohttp's own `trust_env` repeats the lookup (in a thread) on every request."""
    parts = urlsplit(url)
    if parts.hostname is None or proxy_bypass(parts.netloc.rsplit("@", 1)[-1]):
        return None
    return getproxies_environment().get(parts.scheme)


async def _read(name: str, content: aiohttp.StreamReader) -> bytes:
    """The whole body, refused past MAX_BODY (a broken or hostile upstream cannot fill the
    router's memory)."""
    parts, size = [], 0
    async for block in content.iter_any():
        size += len(block)
        if size > MAX_BODY:
            raise UpstreamError(f"upstream {name} answered more than {MAX_BODY} bytes", status=502)
        parts.append(block)
    return b"".join(parts)


class _Patience:
    """How long a stream may go without progress: an event with content, a tool call, a
    finish or usage (`moved`, set by the reader of the events). aiohttp's read timeout ends
    at any byte, and SSE comments or empty and role-only chunks (the keep-alives of gateways
    that queue a request) held a stream for ever with no token. A read after one that
    brought progress is bounded by the read timeout alone (no timer of ours on the common
    path); a read after one that brought none, by `seconds` from the last progress (or from
    the request)."""

    __slots__ = ("deadline", "moved", "name", "seconds")

    def __init__(self, name: str, seconds: float | None) -> None:
        self.name = name
        self.seconds = seconds
        self.moved = False
        self.deadline = None if seconds is None else _now() + seconds

    def bound(self) -> float | None:
        """The loop time the next read must come by; None: the read timeout's alone."""
        if self.seconds is None:
            return None
        if self.moved:
            self.moved = False
            self.deadline = _now() + self.seconds
            return None
        return self.deadline

    def expired(self) -> UpstreamTimeout:
        log.warning("upstream %s: no token within %g s, keep-alives only", self.name, self.seconds)
        return UpstreamTimeout(
            f"upstream {self.name} sent no token within its timeout ({self.seconds:g} s)"
        )


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _lines(
    name: str, content: aiohttp.StreamReader, patience: _Patience | None = None
) -> AsyncIterator[str]:
    """The body as lines (LF, CRLF or CR ends one), however the bytes were split across
    reads; a line longer than MAX_BODY is refused. Each read is searched once for line ends,
    and a line's parts are joined once, when it ends: a line of n bytes costs O(n), however
    many reads it takes (it was searched and copied whole at each one: quadratic). With
    `patience`, each read is bounded by it."""
    parts: list[bytes] = []  # the line so far: no end in them
    size = 0
    cr = False  # the last read ended with a CR: an LF first in the next ends no other line
    reads = aiter(content.iter_any())
    while True:
        deadline = patience.bound() if patience is not None else None
        timer = None
        try:
            if deadline is None:
                block = await anext(reads)
            else:
                async with asyncio.timeout_at(deadline) as timer:
                    block = await anext(reads)
        except StopAsyncIteration:
            break
        except TimeoutError:
            if patience is not None and timer is not None and timer.expired():
                raise patience.expired() from None
            raise  # aiohttp's read timeout
        if cr and block.startswith(b"\n"):
            block = block[1:]
        cr = block.endswith(b"\r")
        *ended, tail = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if ended:
            parts.append(ended[0])
            yield b"".join(parts).decode(errors="replace")
            for line in ended[1:]:
                yield line.decode(errors="replace")
            parts, size = [], 0
        if tail:
            parts.append(tail)
            size += len(tail)
        if size > MAX_BODY:
            raise UpstreamError(
                f"upstream {name} streamed a line of more than {MAX_BODY} bytes", status=502
            )
    if parts:
        yield b"".join(parts).decode(errors="replace")


def _body(body: Mapping[str, Any], model: str, *, stream: bool | None) -> dict[str, Any]:
    payload = {**body, "model": model}
    payload.pop("stream", None)
    if stream is not None:
        payload["stream"] = stream
    if not stream:
        payload.pop("stream_options", None)  # OpenAI refuses it on non-streaming requests
    return payload


class _SseData:
    """Server-sent events, line by line: returns an event's data (multi-line data joined by
    newlines) at the blank line that ends it; other fields and comments are ignored."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def feed(self, line: str) -> str | None:
        if line:
            if line.startswith("data:"):
                value = line[5:]
                self._lines.append(value[1:] if value.startswith(" ") else value)
            return None
        return self.flush()

    def flush(self) -> str | None:
        if not self._lines:
            return None
        data, self._lines = "\n".join(self._lines), []
        return data


def _json_object(name: str, body: bytes | str, what: str = "answered with") -> dict[str, Any]:
    """An upstream's whole answer (or one streamed event) as a JSON object, else an
    UpstreamError."""
    try:
        data = from_json(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamError(f"upstream {name} {what} no JSON object", status=502)
    return data


def _with_choices(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data`, a completion with at least one choice; else the error it carries (a 200 with an
    error envelope), or an UpstreamError: an empty answer must not pass for a real one (it
    would be cached, and outvote real answers in an ensemble)."""
    choices = data.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices):
        return data
    if isinstance(data.get("error"), dict):
        raise mid_stream_error(name, data["error"], streaming=False)
    raise UpstreamError(f"upstream {name} answered with no choices", status=502)


def _as_chunk(data: dict[str, Any]) -> dict[str, Any]:
    """A whole completion as the one chunk of a stream (an upstream that does not stream)."""
    choices = [
        {**c, "delta": c["message"]} if isinstance(c.get("message"), dict) else c
        for c in data["choices"]
    ]
    return {**data, "choices": choices}


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _carries(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk is progress (_Patience): usage, a finish, text, or a delta
    field besides `role` that is not empty (a tool call, reasoning, a refusal)."""
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key, value in delta.items():
                if key != "role" and value not in (None, "", [], {}):
                    return True
    return False


def _has_finish_reason(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") for c in choices
    )


def _chunk(name: str, data: str) -> dict[str, Any]:
    chunk = _json_object(name, data, "streamed an event that is")
    if isinstance(chunk.get("error"), dict) and "choices" not in chunk:
        raise mid_stream_error(name, chunk["error"])
    return chunk


def _redact(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
