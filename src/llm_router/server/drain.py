"""Draining before a stop (SIGTERM, a rolling update): from the moment `Drain.begin()` is
called, `/health` answers 503 (a load balancer's readiness probe takes this server out of
rotation), every new request is answered 503 with `Retry-After` in the OpenAI error envelope
(and `Connection: close`, so that a client's next attempt opens a connection the balancer can
send elsewhere), and the requests already in flight, streams included, go on to their end.
`Drain.idle()` waits for them; the runner (server/run.py) stops the server after that or
after the grace, whichever comes first.

Long-lived subscriptions that never end on their own (`GET /models/events`) are not waited
for: they end when the server stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from .asgi import send_json

__all__ = ["Drain", "DrainGuard"]

UNTRACKED = ("/models/events",)


class Drain:
    """Whether the server is draining, and how many requests are in flight. Lives on the
    event loop's thread; `begin` may be called from a signal handler scheduled onto it."""

    def __init__(self, retry_after: int = 1) -> None:
        self.draining = False
        self.in_flight = 0
        self.retry_after = retry_after
        self._idle: asyncio.Event | None = None

    def begin(self) -> None:
        self.draining = True
        self._check()

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._check()

    def _check(self) -> None:
        if self.draining and self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (True), or `timeout` seconds (False)."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return self.in_flight == 0
        return True


class DrainGuard:
    """Counts the requests in flight and, once draining, refuses new ones (see the module's
    docstring). A plain ASGI middleware: it runs on the hot routes too."""

    def __init__(self, app: ASGIApp, drain: Drain, untracked: Iterable[str] = UNTRACKED) -> None:
        self.app = app
        self.drain = drain
        self.untracked = frozenset(untracked)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        drain = self.drain
        if drain.draining:
            await self._refuse(scope, send)
            return
        if scope["path"] in self.untracked:
            await self.app(scope, receive, send)
            return
        drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            drain.leave()

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # "try again later"
            return
        if scope["path"] == "/health":
            payload: object = {"status": "draining", "in_flight": self.drain.in_flight}
        else:
            payload = {
                "error": {
                    "message": "the server is shutting down and takes no new requests; "
                    "retry, and the request goes to a server that is running",
                    "type": "server_error",
                    "param": None,
                    "code": "server_draining",
                }
            }
        headers = [
            (b"retry-after", str(self.drain.retry_after).encode()),
            (b"connection", b"close"),
        ]
        await send_json(send, 503, payload, headers)
