"""An OpenAI-compatible upstream (vLLM, llama-server, Ollama, OpenAI, another llm-router) as a
routing target.

Every `RemoteTarget` shares one `httpx.AsyncClient` that its caller owns and closes, so
connections are pooled across targets and requests. Bodies are passed through untouched except
`model` (replaced by the upstream's own name) and `stream`; streamed chunks are handed on one by
one as the upstream sends them, never buffered.

Errors leave in one error tree, translated in one place (`_transport_errors`, `status_error`)
by transport exception class, HTTP status and the structured `code` of the upstream's error
envelope; never by message text. The API key is only ever put in the Authorization header: it
is not logged, not in `repr`, not in any error message.

Cancellation: the HTTP request lives inside `async with client.stream(...)`, so cancelling an
awaiting `chat()` or closing a `stream_chat()` iterator (`aclose()`, or leaving an
`async with aclosing(...)` block) closes the response and its connection at once, and the
upstream sees the client go away. An iterator that is merely dropped is closed only when the
garbage collector finalises it: callers should close what they stop reading."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from .errors import (
    BadRequest,
    ContextLengthExceeded,
    EngineError,
    ModelNotFound,
    QueueFull,
    RouterError,
)

__all__ = ["RemoteTarget", "UpstreamError", "UpstreamUnavailable", "status_error"]

DEFAULT_RETRY_AFTER = 1.0


class UpstreamUnavailable(EngineError):
    """The upstream could not be reached or did not answer in time (connect error, timeout,
    connection dropped mid-answer). Another target, or a later retry, may work."""

    retryable = True


class UpstreamError(EngineError):
    """The upstream answered with a server error (5xx) or refused our credentials (401/403);
    `status` is its HTTP status. Another target may work."""

    retryable = True

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RemoteTarget:
    """One upstream model. `chat`/`complete`/`embed` may be called concurrently; each request
    holds one pooled connection for its duration. `read_timeout` bounds every wait for bytes,
    including the wait for the first token and the gap between two streamed chunks."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.name = name or model
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)

    def __repr__(self) -> str:
        return (
            f"RemoteTarget(name={self.name!r}, base_url={_redact(self.base_url)!r}, "
            f"model={self.model!r})"
        )

    async def chat(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /chat/completions without streaming; the upstream's JSON response."""
        return await self._call("/chat/completions", _body(body, self.model, stream=False))

    def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST /chat/completions streaming; yields each chunk's JSON. Nothing is sent until
        the first `__anext__`, which raises the mapped error if the upstream refuses."""
        return self._stream("/chat/completions", _body(body, self.model, stream=True))

    async def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /completions without streaming."""
        return await self._call("/completions", _body(body, self.model, stream=False))

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
            response = await self._client.get(
                self.base_url + "/models", headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError:
            return False
        return response.is_success

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        with _transport_errors(self.name):
            async with self._send(path, payload) as response:
                await response.aread()
        if response.is_error:
            raise status_error(self.name, response)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"upstream {self.name} answered with no JSON object", status=502)
        return data

    async def _stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        with _transport_errors(self.name):
            async with self._send(path, payload) as response:
                if response.is_error:
                    await response.aread()
                    raise status_error(self.name, response)
                events = _SseData()
                done = False
                async for line in response.aiter_lines():
                    # After [DONE], read on to the end so the connection goes back to the pool.
                    data = None if done else events.feed(line)
                    done = done or data == "[DONE]"
                    if data is not None and not done:
                        yield _chunk(self.name, data)
                if not done and (data := events.flush()) not in (None, "[DONE]"):
                    yield _chunk(self.name, data)

    def _send(
        self, path: str, payload: dict[str, Any]
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        return self._client.stream(
            "POST", self.base_url + path, json=payload, headers=self._headers,
            timeout=self._timeout,
        )  # fmt: skip


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


def _chunk(name: str, data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise UpstreamError(f"upstream {name} streamed an event that is no JSON object", status=502)
    if isinstance(chunk.get("error"), dict) and "choices" not in chunk:
        raise _mid_stream_error(name, chunk["error"])
    return chunk


def _mid_stream_error(name: str, error: dict[str, Any]) -> RouterError:
    message = str(error.get("message") or "error during streaming")
    if error.get("code") == "context_length_exceeded":
        return ContextLengthExceeded(message, param=_str_or_none(error.get("param")))
    return UpstreamError(f"upstream {name} failed while streaming: {message}", status=502)


@contextlib.contextmanager
def _transport_errors(name: str) -> Iterator[None]:
    """Transport failures (connect, timeouts, dropped connections) -> UpstreamUnavailable."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable(f"upstream {name} timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(
            f"upstream {name} is unreachable ({type(exc).__name__}: {exc})"
        ) from exc


def status_error(name: str, response: httpx.Response) -> RouterError:
    """The domain error for an upstream's error response (its body must have been read).
    4xx keep the upstream's message and `param`; 5xx and credential refusals name the target."""
    status = response.status_code
    message, param, code = _envelope(response)
    if status == 429:
        return QueueFull(
            f"upstream {name} is rate limited: {message}", retry_after=_retry_after(response)
        )
    if status >= 500 or status in (401, 403, 407, 408):
        return UpstreamError(f"upstream {name} answered {status}: {message}", status=status)
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, param=param)
    if status == 404:
        return ModelNotFound(message)
    return BadRequest(message, param=param)


def _envelope(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, param, code) from the OpenAI envelope, or the best the body offers."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message") or response.reason_phrase
            return str(message), _str_or_none(error.get("param")), _str_or_none(error.get("code"))
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key], None, None
    text = response.text.strip()[:500]
    return text or response.reason_phrase or f"HTTP {response.status_code}", None, None


def _retry_after(response: httpx.Response) -> float:
    """Retry-After as seconds (a number or an HTTP date); 1 s when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _redact(url: str) -> str:
    """The URL without any user:password part."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url
