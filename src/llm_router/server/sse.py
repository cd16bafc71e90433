"""Server-sent events: framing, `[DONE]`, errors after the first byte, and disconnects, all here.

A stream is started only after its first item exists, so an error before that is an ordinary
HTTP error response. An error after it is sent as a `data: {"error": ...}` event (what OpenAI
clients raise on) and the stream ends. When the client goes away the producer is cancelled
where it waits, the wait for the first item too (queued for a slot, a model loading, an
upstream yet to answer: that is a 499, and no fallback is tried for no one); closing our
iterator releases the model slot and cancels the sequence.

`SSEResponse` is ours rather than sse-starlette's: every streamed token passes through it, and
sse-starlette spends more per token (an anyio cancel scope around every send, a task group per
response) than the rest of the router together. Here a token costs at most one `send`; one
`DisconnectWatch` task per request (streaming or not) waits for the disconnect, and for a
stream sends a comment ping after `ping` idle seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ..protocol import RenderedChunk, dump_chunk
from .errors import ClientGone, error_json

__all__ = [
    "DisconnectWatch",
    "SSEResponse",
    "cancel_on_disconnect",
    "events_response",
    "sse_response",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

PING_SECONDS = 15.0
SEND_TIMEOUT = 30.0  # settings.send_timeout
_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no", "connection": "keep-alive"}


def frame(data: str, event: str | None = None) -> bytes:
    """One event; `event` gives it an `event:` line (a stream's own names, as Anthropic's)."""
    if event is not None:
        return b"event: " + event.encode() + b"\ndata: " + data.encode() + b"\n\n"
    return b"data: " + data.encode() + b"\n\n"


def _framed(item: BaseModel | RenderedChunk) -> bytes:
    """A stream item's event; a text chunk (every token's) costs what it cost before names."""
    if isinstance(item, RenderedChunk):
        if item.event is None:
            return b"data: " + item.json.encode() + b"\n\n"
        return frame(item.json, item.event)
    return frame(dump_chunk(item))


class SSEResponse(StreamingResponse):
    """An `text/event-stream` response of already framed events (`frame()`)."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        ping: float = PING_SECONDS,
        send_timeout: float = SEND_TIMEOUT,
        watch: DisconnectWatch | None = None,
    ) -> None:
        """`watch`: the request's watch, already waiting for the disconnect (while the first
        item was awaited); it is stopped with the response, and no second one is made."""
        super().__init__(
            frames, headers={**_HEADERS, **(headers or {})}, media_type="text/event-stream"
        )
        self.ping = ping
        self.frames = frames
        self.send_timeout = send_timeout
        self.watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        pending: list[bytes] = []
        sending: float | None = None  # when the write in progress began

        async def write(message: Message) -> None:
            nonlocal sending
            sending = loop.time()
            await send(message)
            sending = None

        async def flush() -> None:
            nonlocal last
            if pending:
                body = b"".join(pending)
                pending.clear()
                await write({"type": "http.response.body", "body": body, "more_body": True})
                last = loop.time()

        async def ping() -> None:
            if sending is None and loop.time() - last >= self.ping:
                async with asyncio.timeout(self.send_timeout):  # rare: a timer is cheap here
                    await send(
                        {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
                    )

        def stalled() -> bool:
            return sending is not None and loop.time() - sending >= self.send_timeout

        every = min(self.ping, self.send_timeout / 2)
        if self.watch is not None:  # let go of it: its ping holds this response
            watch, self.watch = self.watch.keep_alive(ping, every, stalled), None
        else:
            watch = DisconnectWatch(receive, idle=ping, every=every, stalled=stalled)
        frames = self.frames
        try:
            await write(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            # Frames that are ready together (an upstream's read holding several events, a
            # finish with its usage and [DONE]) go out in one write; none waits for the next.
            while True:
                try:
                    pending.append(await _FlushBeforeWait(anext(frames), flush))
                except StopAsyncIteration:
                    break
            watch.stop()
            await write(
                {"type": "http.response.body", "body": b"".join(pending), "more_body": False}
            )
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.forget()  # the client left: this request is over, the server is not
            if watch.stalled:
                log.warning(
                    "a client read nothing of its stream for %g s: abandoned it, "
                    "its model slot is free",
                    self.send_timeout,
                )
        finally:
            watch.stop()
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()


class DisconnectWatch:
    """Cancels the task that made it when the client disconnects (then `gone` is True), until
    `stop()`. With `idle`, awaits it after each `every` seconds without a message from the
    client (the SSE ping); with `stalled`, asks it then too, and a True (a write to the client
    stuck too long) counts as a disconnect (`gone` and `stalled` True). The request body must
    already be read: after that, `receive` only ever reports the disconnect. One task per
    request, waiting in `receive`."""

    def __init__(
        self,
        receive: Receive,
        idle: Callable[[], Awaitable[None]] | None = None,
        every: float | None = None,
        stalled: Callable[[], bool] | None = None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.gone = False
        self.stalled = False
        self._is_stalled = stalled
        self._task = task
        self._receive = receive
        self._idle = idle
        self._every = every if idle is not None else None
        self._stopped = False
        self._timer: asyncio.Timeout | None = None  # the wait in `receive`, while in it
        self._watcher: asyncio.Future[None] | None = asyncio.ensure_future(self._watch())

    def keep_alive(
        self, idle: Callable[[], Awaitable[None]], every: float, stalled: Callable[[], bool]
    ) -> DisconnectWatch:
        """From now on as if made with these (a stream begins after its first item, awaited
        under this watch). Returns itself."""
        assert asyncio.current_task() is self._task
        self._idle, self._every, self._is_stalled = idle, every, stalled
        if self._timer is not None:  # waiting without a deadline: from now on with one
            self._timer.reschedule(asyncio.get_running_loop().time() + every)
        return self

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._every) as self._timer:  # no task per wait
                    message = await self._receive()
            except TimeoutError:
                self._timer = None
                if self._stopped:
                    continue
                if self._is_stalled is not None and self._is_stalled():
                    return self._lost(stalled=True)
                if self._idle is not None:
                    try:
                        await self._idle()
                    except TimeoutError:  # the ping itself could not be written
                        return self._lost(stalled=True)
                continue
            self._timer = None
            if message["type"] == "http.disconnect":
                return self._lost(stalled=False)

    def _lost(self, *, stalled: bool) -> None:
        if not self._stopped:
            self.gone, self.stalled = True, stalled
            self._task.cancel()

    def forget(self) -> bool:
        """Take back the cancellation the disconnect caused; True if no other is pending."""
        return self._task.uncancel() == 0

    def stop(self) -> None:
        """From now on a disconnect cancels nothing and no ping is sent."""
        self._stopped = True
        self._timer = None  # it holds the watcher's task too
        if self._watcher is not None:
            # let go: the cancelled task keeps its CancelledError, whose traceback holds the
            # frame of `_watch` and so this object: a cycle that left the whole request (its
            # task, context, spans) to the garbage collector instead of being freed at once
            self._watcher.cancel()
            self._watcher = None


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
    receive: Receive,
    headers: Callable[[], Mapping[str, str]] | None = None,
    done: bool = True,
    send_timeout: float = SEND_TIMEOUT,
) -> SSEResponse:
    """`headers` is called once the first item exists (e.g. to name the target that serves).
    A client that leaves before it cancels the wait (ClientGone); one that reads nothing for
    `send_timeout` seconds once the stream began is treated as gone. The request body must
    already be read: the watch made here waits in `receive` until the response ends."""
    watch = DisconnectWatch(receive)
    try:
        first = await anext(stream)
    except BaseException as exc:
        watch.stop()
        gone = isinstance(exc, asyncio.CancelledError) and watch.gone and watch.forget()
        await stream.aclose()  # type: ignore[attr-defined]
        if gone:
            raise ClientGone from None
        raise

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield _framed(first)
            async for item in stream:
                yield _framed(item)
            if done:
                yield b"data: [DONE]\n\n"
        except Exception as exc:  # the response has started: report in-band, then end
            log.warning("stream failed after it started: %s", exc)
            yield frame(error_json(exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    try:
        head = headers() if headers else None
    except BaseException:
        watch.stop()
        raise
    return SSEResponse(frames(), head, send_timeout=send_timeout, watch=watch)


async def events_response(stream: AsyncIterator[str]) -> SSEResponse:
    """An endless stream of JSON events (e.g. model status changes), until the client leaves."""

    async def frames() -> AsyncIterator[bytes]:
        try:
            async for data in stream:
                yield frame(data)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    return SSEResponse(frames())


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work` (a coroutine) in the calling task, cancelling it if the client disconnects
    first (then raise ClientGone). The request body must already be read."""
    watch = DisconnectWatch(receive)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone and watch.forget():
            raise ClientGone from None
        raise
    finally:
        watch.stop()
