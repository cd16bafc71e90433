"""Server-sent events: framing, `[DONE]`, errors after the first byte, and disconnects, all here.

A stream is started only after its first item exists, so an error before that is an ordinary
HTTP error response. An error after it is sent as a `data: {"error": ...}` event (what OpenAI
clients raise on) and the stream ends. When the client goes away the producer is cancelled
where it waits; closing our iterator releases the model slot and cancels the sequence.

`SSEResponse` is ours rather than sse-starlette's: every streamed token passes through it, and
sse-starlette spends more per token (an anyio cancel scope around every send, a task group per
response) than the rest of the router together. Here a token costs at most one `send`; one watcher
task per stream waits for the disconnect and sends a comment ping after `ping` idle seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..protocol import RenderedChunk, dump_chunk
from .errors import ClientGone, error_json

__all__ = ["SSEResponse", "cancel_on_disconnect", "events_response", "sse_response"]

log = logging.getLogger(__name__)
T = TypeVar("T")

PING_SECONDS = 15.0
_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no", "connection": "keep-alive"}


def frame(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """An `text/event-stream` response of already framed events (`frame()`)."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        ping: float = PING_SECONDS,
    ) -> None:
        super().__init__(frames, headers={**_HEADERS, **(headers or {})},
                         media_type="text/event-stream")  # fmt: skip
        self.ping = ping
        self.frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        state = {"last": loop.time(), "gone": False, "ended": False}

        async def watch() -> None:
            """Cancels the producer when the client disconnects; pings while it is silent."""
            while True:
                try:
                    async with asyncio.timeout(self.ping):  # no task per wait, as wait_for makes
                        message = await receive()
                except TimeoutError:
                    if not state["ended"] and loop.time() - state["last"] >= self.ping:
                        await send({"type": "http.response.body", "body": b": ping\n\n",
                                    "more_body": True})  # fmt: skip
                    continue
                if message["type"] == "http.disconnect":
                    if not state["ended"]:
                        state["gone"] = True
                        task.cancel()
                    return

        pending: list[bytes] = []

        async def flush() -> None:
            if pending:
                body = b"".join(pending)
                pending.clear()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                state["last"] = loop.time()

        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})  # fmt: skip
        watcher = asyncio.ensure_future(watch())
        frames = self.frames
        try:
            # Frames that are ready together (an upstream's read holding several events, a
            # finish with its usage and [DONE]) go out in one write; none waits for the next.
            while True:
                try:
                    pending.append(await _FlushBeforeWait(anext(frames), flush))
                except StopAsyncIteration:
                    break
            state["ended"] = True
            await send({"type": "http.response.body", "body": b"".join(pending),
                        "more_body": False})  # fmt: skip
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client left: this request is over, the server is not
        finally:
            state["ended"] = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()


class _FlushBeforeWait(Generic[T]):
    """Awaits `step`; if it is about to wait (for the network, a decode step, anything),
    awaits `flush()` first. So what is ready is written together, and nothing ready is held."""

    __slots__ = ("flush", "step")

    def __init__(self, step: Awaitable[T], flush: Callable[[], Awaitable[None]]) -> None:
        self.step = step
        self.flush = flush

    def __await__(self) -> Generator[Any, Any, T]:
        inner = self.step.__await__()
        flush: Callable[[], Awaitable[None]] | None = self.flush
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                waiting = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as stop:
                return cast(T, stop.value)
            value = error = None
            if flush is not None:
                first, flush = flush, None
                try:
                    yield from first().__await__()
                except BaseException as exc:  # e.g. cancelled meanwhile: the step gets it
                    error = exc
                    continue
            try:
                value = yield waiting
            except BaseException as exc:  # cancellation, thrown in by the task
                error = exc


async def sse_response(
    stream: AsyncIterator[BaseModel | RenderedChunk],
    headers: Callable[[], Mapping[str, str]] | None = None,
    done: bool = True,
) -> SSEResponse:
    """`headers` is called once the first item exists (e.g. to name the target that serves)."""
    try:
        first = await anext(stream)
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield frame(dump_chunk(first))
            async for item in stream:
                yield frame(dump_chunk(item))
            if done:
                yield b"data: [DONE]\n\n"
        except Exception as exc:  # the response has started: report in-band, then end
            log.warning("stream failed after it started: %s", exc)
            yield frame(error_json(exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return SSEResponse(frames(), headers() if headers else None)


async def events_response(stream: AsyncIterator[str]) -> SSEResponse:
    """An endless stream of JSON events (e.g. model status changes), until the client leaves."""

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for data in stream:
                yield frame(data)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return SSEResponse(frames())


async def cancel_on_disconnect(receive: Any, work: Any) -> Any:
    """Await `work` (a coroutine), cancelling it if the client disconnects first (then raise
    ClientGone). The request body must already be read: after that, `receive` only ever
    reports the disconnect. `work` runs in the calling task; only the watcher is a task."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
