"""`/v1/ws`: chat and text completions streamed over one WebSocket, several at once.

A transport, not a second API: each request message becomes an ordinary `POST` through the
whole app (its middleware: the API key, limits, usage, request log, drain; then the route,
cache and routing), with the handshake's headers, and the answer's server-sent events
become messages. Nothing the HTTP path does is skipped, and what the HTTP path answers is
what a socket gets.

Client -> server, one JSON object a text message:
    {"id": "r1", "path": "/v1/chat/completions", "body": {...}}  (or /v1/completions;
        `stream` is implied)
    {"id": "r1", "cancel": true}   (the generation stops, as when an HTTP client goes away,
        and {"id": "r1", "cancelled": true} is its last message)
Server -> client:
    {"id": "r1", "chunk": {...}}   each chunk, as the HTTP stream's `data:` events
    {"id": "r1", "done": true, "headers": {...}}   the `x-llm-router-*` headers
    {"id": "r1", "status": 429, "error": {...}, "headers": {...}}   OpenAI's error object,
        the status and headers (`Retry-After`) the HTTP answer had; nothing more for "r1",
        except after a refusal whose code is `duplicate_id` (the running "r1" goes on) or
        `unknown_id` (a cancel of nothing)
At most `MAX_IN_FLIGHT` requests run at once on a socket; ids are the client's, unique among
those running."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.types import Message, Scope

from .asgi import body_once
from .errors import ERROR_TABLE, envelope
from .gateway import key_still_valid

__all__ = ["MAX_IN_FLIGHT", "routes"]

routes = APIRouter()

PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
MAX_IN_FLIGHT = 16
# Headers of the handshake that are not the inner request's (it is a POST of a JSON body;
# each gets its own request id).
_NOT_PASSED = frozenset(
    {
        b"content-length",
        b"content-type",
        b"upgrade",
        b"connection",
        b"transfer-encoding",
        b"x-request-id",
    }
)
Send = Callable[[dict[str, Any]], Awaitable[None]]
# The status an error of a started stream would have had as an answer (its `code` says).
_STATUS_OF = {code: status for status, _, code in ERROR_TABLE.values() if code}


@routes.websocket("/v1/ws")
async def stream_socket(socket: WebSocket) -> None:
    await socket.accept()
    lock = asyncio.Lock()
    running: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
    watch = asyncio.create_task(_close_when_revoked(socket))

    async def send(message: dict[str, Any]) -> None:
        async with lock:  # one frame at a time, from every request's task
            with contextlib.suppress(Exception):  # the socket closed: nobody reads it
                await socket.send_text(json.dumps(message))

    try:
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await _on_message(socket.scope, message, running, send)
    finally:
        watch.cancel()
        for _, gone in running.values():
            gone.set()  # each request sees its client gone: generation stops
        await asyncio.gather(watch, *(t for t, _ in running.values()), return_exceptions=True)


async def _close_when_revoked(socket: WebSocket) -> None:
    """Close the socket (1008) within about a second of its key being revoked or expiring:
    its requests are refused then anyway, but a client should not hold a dead socket."""
    while True:  # a poll: a revocation comes as a refreshed key table, not an event here
        await asyncio.sleep(1.0)
        if not key_still_valid(socket):
            break
    with contextlib.suppress(Exception):
        await socket.close(code=1008, reason="the API key was revoked or has expired")


async def _on_message(
    scope: Scope,
    message: Message,
    running: dict[str, tuple[asyncio.Task[None], asyncio.Event]],
    send: Send,
) -> None:
    try:
        asked = json.loads(message.get("text") or message.get("bytes") or b"")
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        asked = None
    rid = asked.get("id") if isinstance(asked, dict) else None
    if not isinstance(asked, dict) or not isinstance(rid, str) or not rid:
        await _refuse(send, rid, 400, "each message is a JSON object with a string `id`", "id")
        return
    if asked.get("cancel"):
        if rid in running:
            running[rid][1].set()
        else:  # nothing to cancel: said, so a client waiting for the end does not hang
            await _refuse(
                send, rid, 400, f"no request {rid!r} runs on this socket", "id", "unknown_id"
            )
        return
    path, body = asked.get("path", "/v1/chat/completions"), asked.get("body")
    if path not in PATHS:
        await _refuse(send, rid, 400, f"`path` is one of {', '.join(sorted(PATHS))}", "path")
    elif not isinstance(body, dict):
        await _refuse(send, rid, 400, "`body` is the request's JSON object", "body")
    elif rid in running:  # not the running one's end: its code says so
        await _refuse(
            send, rid, 400, f"id {rid!r} is already running on this socket", "id", "duplicate_id"
        )
    elif len(running) >= MAX_IN_FLIGHT:
        await _refuse(
            send,
            rid,
            429,
            f"at most {MAX_IN_FLIGHT} requests run at once on a socket",
            None,
            "rate_limit_exceeded",
            {"retry-after": "1"},
        )
    else:
        gone = asyncio.Event()
        raw = json.dumps({**body, "stream": True}).encode()
        task = asyncio.create_task(_one(scope, rid, path, raw, gone, send))
        running[rid] = (task, gone)

        def forget(_: asyncio.Task[None]) -> None:
            running.pop(rid, None)

        task.add_done_callback(forget)


async def _refuse(
    send: Send,
    rid: Any,
    status: int,
    message: str,
    param: str | None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    kind = "rate_limit_error" if status == 429 else "invalid_request_error"
    error = envelope(message, kind, param, code)["error"]
    await send({"id": rid, "status": status, "error": error, "headers": headers or {}})


async def _one(
    socket_scope: Scope, rid: str, path: str, raw: bytes, gone: asyncio.Event, send: Send
) -> None:
    """One request through the whole app, its answer passed on as messages."""
    headers = [(k, v) for k, v in socket_scope["headers"] if k not in _NOT_PASSED]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
        (b"accept", b"text/event-stream"),
    ]
    scope: Scope = {
        "type": "http",
        "asgi": socket_scope.get("asgi", {"version": "3.0"}),
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https" if socket_scope.get("scheme") == "wss" else "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": socket_scope.get("root_path", ""),
        "query_string": b"",
        "headers": headers,
        "client": socket_scope.get("client"),
        "server": socket_scope.get("server"),
    }

    async def disconnect() -> Message:  # when the socket closes or the client cancels
        await gone.wait()
        return {"type": "http.disconnect"}

    answer = _Answer(rid, send)
    await socket_scope["app"](scope, body_once(raw, disconnect), answer.take)
    if gone.is_set() and not answer.finished:  # cancelled: its last message says so
        await send({"id": rid, "cancelled": True})
        return
    await answer.end()


class _Answer:
    """An HTTP answer read as it is sent: server-sent events become chunk messages, any other
    body (an error before the stream began) one error message."""

    def __init__(self, rid: str, send: Send) -> None:
        self.rid = rid
        self.send = send
        self.status = 0
        self.headers: dict[str, str] = {}
        self.buffer = b""
        self.finished = False

    async def take(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]}
            return
        if message["type"] != "http.response.body":
            return
        self.buffer += message.get("body", b"")
        if self._streaming():
            while (end := self.buffer.find(b"\n\n")) >= 0:
                block, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                await self._event(block.decode())

    def _streaming(self) -> bool:
        return self.status == 200 and self.headers.get("content-type", "").startswith(
            "text/event-stream"
        )

    async def _event(self, block: str) -> None:
        for line in block.split("\n"):
            if not line.startswith("data: ") or self.finished:
                continue  # a ping (a comment line)
            data = line[6:]
            if data == "[DONE]":
                self.finished = True
                await self.send({"id": self.rid, "done": True, "headers": self._ours()})
                continue
            item = json.loads(data)
            if "error" in item:  # after the first byte: the stream ends with it
                self.finished = True
                error = item["error"]
                status = _STATUS_OF.get(error.get("code"), 500)
                await self.send({"id": self.rid, "status": status, "error": error})
            else:
                await self.send({"id": self.rid, "chunk": item})

    def _ours(self) -> dict[str, str]:
        wanted = ("x-llm-router-", "x-ratelimit-", "x-request-id", "retry-after")
        return {k: v for k, v in self.headers.items() if k.startswith(wanted)}

    async def end(self) -> None:
        if self.finished or self._streaming():  # a stream cut short (cancelled) says no more
            return
        try:
            error = json.loads(self.buffer)["error"]
        except (ValueError, KeyError, TypeError):
            error = envelope(f"HTTP {self.status}", "server_error")["error"]
        await self.send(
            {"id": self.rid, "status": self.status, "error": error, "headers": self._ours()}
        )
