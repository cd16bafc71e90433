"""An upstream's failures as the router's errors, translated in one place: transport exceptions
by class (`transport_errors`), error responses by HTTP status and the structured `code` of
the upstream's OpenAI envelope (`status_error`, `mid_stream_error`); never by message text."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import aiohttp
from pydantic_core import from_json

from ..errors import (
    BadRequest,
    ContextLengthExceeded,
    RouterError,
    UpstreamBusy,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "Answer",
    "Waiting",
    "mid_stream_error",
    "status_error",
    "transport_errors",
]

log = logging.getLogger("llm_router.routing.upstream")  # the upstream client's (upstream.py)
DEFAULT_RETRY_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's complete response: what error mapping needs, with no connection attached."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def of(cls, response: aiohttp.ClientResponse, body: bytes) -> Answer:
        return cls(response.status, response.reason or "", response.headers, body)


def mid_stream_error(name: str, error: dict[str, Any], streaming: bool = True) -> RouterError:
    """The domain error for an error event in the middle of a stream (or, not `streaming`, an
    error envelope in a 200 answer)."""
    message = str(error.get("message") or "no message")
    if error.get("code") == "context_length_exceeded":
        return ContextLengthExceeded(message, param=_str_or_none(error.get("param")))
    where = "failed while streaming" if streaming else "answered 200 with an error"
    return UpstreamError(f"upstream {name} {where}: {message}", status=502)


class Waiting:
    """What `transport_errors` yields: the caller calls `answered()` once the upstream's
    status and headers came, so that a timeout says whether the answer had begun."""

    __slots__ = ("began",)

    def __init__(self) -> None:
        self.began = False

    def answered(self) -> None:
        self.began = True


@contextlib.contextmanager
def transport_errors(name: str) -> Iterator[Waiting]:
    """Transport failures -> UpstreamTimeout (waiting for bytes; `answered` says whether the
    headers had come) or UpstreamUnavailable (connect errors and timeouts, dropped
    connections: before the answer began, "could not be reached"; after, "broke off"). The client's message names the target only: the details (addresses, the
    library's text) go to the log."""
    waiting = Waiting()
    try:
        yield waiting
    except aiohttp.ConnectionTimeoutError as exc:
        log.warning("upstream %s: connect timed out (%s)", name, exc)
        raise UpstreamUnavailable(f"upstream {name} could not be reached (timed out)") from exc
    except TimeoutError as exc:  # aiohttp's read timeouts, and any other wait for bytes
        log.warning("upstream %s: no bytes within the read timeout (%s)", name, exc)
        if not waiting.began:
            raise UpstreamTimeout(
                f"upstream {name} timed out before its answer began", answered=False
            ) from exc
        raise UpstreamTimeout(f"upstream {name} timed out waiting for its answer") from exc
    except aiohttp.ClientError as exc:
        if waiting.began:  # reached: its answer began, then the connection broke
            log.warning("upstream %s broke off: %s: %s", name, type(exc).__name__, exc)
            raise UpstreamUnavailable(f"upstream {name} broke off mid-answer") from exc
        log.warning("upstream %s unreachable: %s: %s", name, type(exc).__name__, exc)
        raise UpstreamUnavailable(f"upstream {name} could not be reached") from exc


def status_error(name: str, answer: Answer) -> RouterError:
    """The domain error for an upstream's error response. 4xx about the request keep the
    upstream's message and `param` (they are the client's to fix); 5xx and refusals of the
    router's own credentials name the target and status only, their text goes to the log."""
    status = answer.status
    message, param, code = _envelope(answer)
    if status == 429:
        return UpstreamRateLimited(
            f"upstream {name} is rate limited: {message}",
            retry_after=_retry_after(answer.headers.get("retry-after")),
        )
    if status == 503:  # down for now: another target, or this one after its Retry-After
        log.warning("upstream %s answered 503: %s", name, message)
        said = answer.headers.get("retry-after")
        return (UpstreamBusy if said else UpstreamUnavailable)(
            f"upstream {name} is unavailable (HTTP 503)", retry_after=_retry_after(said)
        )
    if status >= 500 or status in (401, 403, 404, 407, 408):
        # 404: the target's `model` or `base_url` is wrong, a fault of its configuration (the
        # model the client named exists here), so another target may serve it
        log.warning("upstream %s answered %d: %s", name, status, message)
        text = _WHAT.get(status, "failed")
        return UpstreamError(f"upstream {name} {text} (HTTP {status})", status=status)
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, param=param)
    return BadRequest(message, param=param)


_CREDENTIALS = "refused the router's credentials"
_WHAT = {401: _CREDENTIALS, 403: _CREDENTIALS, 407: _CREDENTIALS, 404: "does not know its model"}


def _envelope(answer: Answer) -> tuple[str, str | None, str | None]:
    """(message, param, code) from the OpenAI envelope, or the best the body offers."""
    reason = answer.reason or _phrase(answer.status)
    try:
        data = from_json(answer.body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message") or reason
            return str(message), _str_or_none(error.get("param")), _str_or_none(error.get("code"))
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key], None, None
    text = answer.body.decode(errors="replace").strip()[:500]
    return text or reason or f"HTTP {answer.status}", None, None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _retry_after(value: str | None) -> float:
    """Retry-After as seconds (a number or an HTTP date); 1 s when absent or unreadable."""
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
