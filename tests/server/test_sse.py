"""The SSE response on its own, driven as uvicorn drives it (ASGI receive/send): frames in
order then the end, frames ready together in one write but none held while the producer waits,
a comment ping while the producer is silent, and a disconnect that cancels the producer where
it waits and runs its cleanup, without failing the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from llm_router.server.sse import DisconnectWatch, SSEResponse, frame


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def test_frames_in_order_then_the_end() -> None:
    async def frames() -> AsyncIterator[bytes]:
        for text in ("one", "two"):
            yield frame(text)

    client = Client()
    await SSEResponse(frames())({"type": "http"}, client.receive, client.send)
    assert client.sent[0]["type"] == "http.response.start"
    headers = dict(client.sent[0]["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert b"content-length" not in headers
    # ready together: one write, which also ends the response
    assert client.bodies() == [b"data: one\n\ndata: two\n\n"]
    assert client.sent[-1]["more_body"] is False


async def test_what_is_ready_is_sent_before_the_producer_waits() -> None:
    client = Client()
    seen_while_waiting: list[bytes] = []

    async def frames() -> AsyncIterator[bytes]:
        yield frame("one")
        yield frame("two")
        await asyncio.sleep(0.01)  # e.g. the next decode step
        seen_while_waiting.extend(client.bodies())
        yield frame("three")
        await asyncio.sleep(0)
        yield frame("four")

    await SSEResponse(frames())({"type": "http"}, client.receive, client.send)
    assert seen_while_waiting == [b"data: one\n\ndata: two\n\n"]
    assert client.bodies() == [b"data: one\n\ndata: two\n\n", b"data: three\n\n", b"data: four\n\n"]
    assert b"".join(client.bodies()) == b"".join(frame(t) for t in ("one", "two", "three", "four"))


async def test_a_silent_stream_is_kept_alive_with_comment_pings() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield frame("first")
        await asyncio.sleep(0.35)
        yield frame("late")

    client = Client()
    await SSEResponse(frames(), ping=0.1)({"type": "http"}, client.receive, client.send)
    bodies = client.bodies()
    assert bodies[0] == b"data: first\n\n" and bodies[-1] == b"data: late\n\n"
    assert b": ping\n\n" in bodies[1:-1]


async def test_the_watch_of_the_wait_for_the_first_item_pings_once_the_stream_begins() -> None:
    """The watch made while the first item was awaited (sse_response) waits in `receive` with
    no deadline; handed to the stream, it must wake to ping it."""
    client = Client()
    watch = DisconnectWatch(client.receive)
    await asyncio.sleep(0.01)  # the watch waits in `receive`

    async def frames() -> AsyncIterator[bytes]:
        yield frame("first")
        await asyncio.sleep(0.35)
        yield frame("late")

    response = SSEResponse(frames(), ping=0.1, watch=watch)
    await response({"type": "http"}, client.receive, client.send)
    assert b": ping\n\n" in client.bodies()[1:-1]


async def test_disconnect_cancels_the_producer_and_runs_its_cleanup() -> None:
    cleaned = asyncio.Event()
    client = Client()

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield frame("first")
            client.gone.set()  # the client leaves while we wait for the next token
            await asyncio.sleep(30)
            yield frame("never")
        finally:
            cleaned.set()

    await asyncio.wait_for(SSEResponse(frames())({"type": "http"}, client.receive, client.send), 5)
    assert cleaned.is_set()
    assert client.bodies() == [b"data: first\n\n"]


async def test_disconnect_while_a_write_is_blocked_still_cancels_the_producer() -> None:
    """A slow client: the write blocks (transport flow control) and the client leaves."""
    cleaned = asyncio.Event()
    client = Client()
    real_send = client.send

    async def blocking_send(message: dict[str, Any]) -> None:
        await real_send(message)
        if message.get("body") == b"data: first\n\n":
            client.gone.set()
            await asyncio.sleep(30)  # never drains

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield frame("first")
            await asyncio.sleep(30)
            yield frame("never")
        finally:
            cleaned.set()

    response = SSEResponse(frames())({"type": "http"}, client.receive, blocking_send)
    await asyncio.wait_for(response, 5)
    assert cleaned.is_set()
    assert client.bodies() == [b"data: first\n\n"]
