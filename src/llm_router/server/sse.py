"""Server-sent events: framing, `[DONE]`, errors after the first byte, and disconnects, all here.

A stream is started only after its first item exists, so an error before that is an ordinary
HTTP error response. An error after it is sent as a `data: {"error": ...}` event (what OpenAI
clients raise on) and the stream ends. When the client goes away, sse-starlette cancels the
producer; closing our iterator releases the model slot and cancels the sequence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse

from .errors import error_json

__all__ = ["cancel_on_disconnect", "sse_response"]

log = logging.getLogger(__name__)


def _dump(item: BaseModel) -> str:
    exclude = {"usage"} if getattr(item, "usage", 0) is None else None
    return item.model_dump_json(exclude=exclude)


async def sse_response(
    stream: AsyncIterator[BaseModel],
    headers: Callable[[], Mapping[str, str]] | None = None,
    done: bool = True,
) -> EventSourceResponse:
    """`headers` is called once the first item exists (e.g. to name the target that serves)."""
    try:
        first = await anext(stream)
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def frames() -> AsyncIterator[str]:
        try:
            yield _dump(first)
            async for item in stream:
                yield _dump(item)
            if done:
                yield "[DONE]"
        except Exception as exc:  # the response has started: report in-band, then end
            log.warning("stream failed after it started: %s", exc)
            yield error_json(exc)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return EventSourceResponse(frames(), headers=headers() if headers else None, sep="\n", ping=15)


async def events_response(stream: AsyncIterator[str]) -> EventSourceResponse:
    return EventSourceResponse(stream, sep="\n", ping=15)


async def cancel_on_disconnect(receive: Any, work: Any) -> Any:
    """Await `work` (a coroutine), cancelling it if the client disconnects first. The request
    body must already be read: after that, `receive` only ever reports the disconnect."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()
