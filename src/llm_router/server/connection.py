"""An HTTP/1.1 connection: uvicorn's httptools protocol (the one uvicorn picks itself, since
`uvicorn[standard]` brings httptools), given to uvicorn as `http=` (server/run.py), with a
deadline for each request's head and the protocol's own answers in the OpenAI envelope.

The deadline: a request's line and headers must all arrive within `header_timeout` seconds,
counted from the connection's opening for its first request, and from the first byte of the
next one on a kept-alive connection (while it is idle, uvicorn's keep-alive timeout holds).
A connection that sent nothing, or half a request line, was held for good, and about a
thousand of them filled `max_connections`: every other client, `/health` included, was then
answered 503 for as long as the sender liked, no key needed (found from outside). A head not
whole at its deadline is answered 408 and its connection closed; one with no byte of a head
is closed without an answer. Bytes that come after an answer given before its request's body
was read (a 401 or a 413 to an upload) count as the next head's: a body that trickles on
after its answer holds the connection no longer than a head would.

The answers uvicorn gives without calling the app were text/plain; they are the envelope
here: 503 `server_busy` with `Retry-After` when `max_connections` are open (uvicorn's
`limit_concurrency`, checked as uvicorn checks it: the connections open, this one included,
or the requests in flight), 400 for bytes that are no HTTP request, and the 408 above.

All of it runs on the event loop's thread, in the protocol's callbacks and one timer a
server that looks at every connection's head awaited a fraction of `header_timeout`: a
request only notes when its head began (a timer armed and cancelled a request cost more);
nothing here races."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..logs import Occasional
from .asgi import send_json

__all__ = ["Connection", "connection_class"]

log = logging.getLogger(__name__)

RETRY_BUSY = b"1"  # seconds a client told 503 for max_connections waits before trying again


def connection_class(header_timeout: float) -> type[Connection]:
    """The protocol class uvicorn makes each connection with, for one server: its deadline
    for a request's head, and one rate-limited warning for all its refusals (`busy_log`)."""
    attrs = {"header_timeout": header_timeout, "busy_log": Occasional(log), "sweeping": False}
    return type("Connection", (Connection,), attrs)


def _every(timeout: float) -> float:
    """Seconds between the looks at the heads awaited: a head is late by at most this."""
    return min(1.0, timeout / 4)


def _envelope(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class Connection(HttpToolsProtocol):
    header_timeout: float  # both set by connection_class
    busy_log: Occasional
    sweeping: bool  # this server's looks at the heads awaited are scheduled (`_sweep`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most = self.limit_concurrency  # max_connections: checked here, see on_headers_complete
        self.limit_concurrency = None
        self.head_since: float | None = None  # when the head awaited began to be awaited
        self.head_begun = False  # a byte of the head awaited has arrived (408, not a silent close)

    # -- the deadline ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # between requests (no response under way): whatever came belongs to the next head,
        # or is the end of a body answered without being read, which counts as it (see above)
        if self.head_since is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_begun = True
        if self.head_since is None:  # the next request's head, sent while a response is under way
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self.head_begun = False
        upgrade = (
            self.parser.should_upgrade() and self._should_upgrade()
        )  # not limited, as in uvicorn
        busy = (
            self.most is not None
            and not upgrade
            and (len(self.connections) >= self.most or len(self.tasks) >= self.most)
        )
        if not busy:
            super().on_headers_complete()
            return
        self.busy_log.warning(
            "max_connections (%d) reached: requests answered 503 until connections close",
            self.most,
        )
        app, self.app = self.app, self._busy
        try:
            super().on_headers_complete()  # the request, answered by _busy instead of the app
        finally:
            self.app = app

    def _arm(self) -> None:
        if not self.transport.is_closing() and self.transport.get_protocol() is self:
            self.head_since = self.loop.time()  # a moment on the request path; no timer
            cls = type(self)
            if not cls.sweeping:
                cls.sweeping = True
                self.loop.call_later(_every(cls.header_timeout), cls._sweep, self.connections)

    def _disarm(self) -> None:
        self.head_since = None

    @classmethod
    def _sweep(cls, connections: set[Any]) -> None:
        """One look a fraction of `header_timeout` at this server's connections (one timer for
        all, not one a request): those whose head is late are `_late`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(connections):
            since = getattr(conn, "head_since", None)
            if since is not None and now - since >= cls.header_timeout:
                conn.head_since = None
                conn._late()
        if connections:
            loop.call_later(_every(cls.header_timeout), cls._sweep, connections)
        else:  # the next connection starts the looks again
            cls.sweeping = False

    def _late(self) -> None:
        """The head awaited has not all arrived at its deadline."""
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or a WebSocket's now
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a response under way ends first, then the connection
            return
        if self.head_begun:
            message = (
                f"the request line and headers did not all arrive within {self.header_timeout:g} "
                "s (`header_timeout`)"
            )
            self._answer(408, _envelope(message, "invalid_request_error", "request_timeout"))
        self.transport.close()

    # -- answers without the app -------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """Bytes that are no HTTP/1.1 request (httptools' parser refused them)."""
        message = f"the bytes received are not an HTTP/1.1 request ({msg.rstrip('.')})"
        self._answer(400, _envelope(message, "invalid_request_error", None))
        self.transport.close()

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = (
            f"the server has {self.most} connections open, its limit (`max_connections`); "
            f"retry in {RETRY_BUSY.decode()} s"
        )
        headers = [(b"retry-after", RETRY_BUSY), (b"connection", b"close")]
        await send_json(send, 503, _envelope(message, "server_error", "server_busy"), headers)
