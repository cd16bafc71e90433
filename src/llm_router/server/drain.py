"""Draining before a stop (SIGTERM, a rolling update): from the moment `Drain.begin()` is
called, `/health` answers 503 (a load balancer's readiness probe takes this server out of
rotation), every new request is answered 503 with `Retry-After` in the OpenAI error envelope
(and `Connection: close`, so that a client's next attempt opens a connection the balancer can
send elsewhere), and the requests already in flight, streams included, go on to their end.
`Drain.idle()` waits for them; the runner (server/run.py) stops the server after that or
after the grace, whichever comes first.

What is still in flight when the grace is over (or at a second SIGTERM, or Ctrl-C) is ended
by `Drain.stop_all()`: each request is cancelled where it waits (its model's sequence with
it, as for a client that leaves) and answered 503 `server_shutting_down` with `Retry-After`
in the OpenAI envelope, or, for a stream already started, with that envelope as its last
event. Before, uvicorn cancelled them: a plain-text 500, or a stream cut mid-body.

Long-lived subscriptions that never end on their own (`GET /models/events`) are not waited
for: `stop_all` ends them too (their body closes cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ServerStopping
from .asgi import send_json
from .errors import error_json, router_error_response
from .sse import frame

__all__ = ["Drain", "DrainGuard"]

# Not waited for by a drain: subscriptions that never end by themselves, and /v1/ws, whose
# socket is only a transport (each of its requests comes back through here as a POST, waited
# for; an idle socket held every SIGTERM for the whole grace).
UNTRACKED = ("/models/events", "/v1/ws")
HEALTH_PATHS = ("/health", "/v1/health")  # llama-server answers both
STOPPING = ServerStopping(
    "the server stopped before this request ended; retry, and the request goes to a server "
    "that is running"
)


class Drain:
    """Whether the server is draining, and the requests in flight (their tasks). Lives on the
    event loop's thread; `begin` may be called from a signal handler scheduled onto it."""

    def __init__(self, retry_after: int = 1) -> None:
        self.draining = False
        self.stopping = False  # `stop_all` cancelled what was in flight
        self.retry_after = retry_after
        self._idle: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[object]] = set()  # the requests in flight
        self._untracked: set[asyncio.Task[object]] = set()  # subscriptions, not waited for

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def begin(self) -> None:
        self.draining = True
        self._check()

    def enter(self, task: asyncio.Task[object], *, tracked: bool = True) -> None:
        (self._tasks if tracked else self._untracked).add(task)

    def leave(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        self._untracked.discard(task)
        self._check()

    def _check(self) -> None:
        if self.draining and not self._tasks and self._idle is not None:
            self._idle.set()

    async def stop_all(self, timeout: float) -> None:
        """Cancel every request in flight and every subscription (DrainGuard answers each),
        and wait at most `timeout` seconds for them to be gone."""
        self.draining = self.stopping = True
        tasks = self._tasks | self._untracked
        for task in tasks:
            task.cancel("the server is stopping")
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (True), or `timeout` seconds (False)."""
        if not self._tasks:
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

    def __init__(
        self,
        app: ASGIApp,
        drain: Drain,
        untracked: Iterable[str] = UNTRACKED,
        refused: Callable[[Scope, Receive, int], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.drain = drain
        self.untracked = frozenset(untracked)
        self.refused = refused  # told of each refusal first (the gateway's usage record)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        drain = self.drain
        if drain.draining:
            if self.refused is not None and scope["path"] not in HEALTH_PATHS:
                await self.refused(scope, receive, 503)
            await self._refuse(scope, send)
            return
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        drain.enter(task, tracked=scope["path"] not in self.untracked)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not drain.stopping:
                raise
            task.uncancel()  # ours (`stop_all`): answered here, the task ends normally
            with contextlib.suppress(Exception):  # a client gone meanwhile
                await _end(scope, send, scope["path"] not in self.untracked)
        finally:
            drain.leave(task)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["path"] in HEALTH_PATHS:
            payload: object = {
                "status": "draining",
                "in_flight": self.drain.in_flight,
                "pid": os.getpid(),  # which process answered, as /health says when serving
            }
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
        await send_json(send, 503, payload, headers, scope)


async def _end(scope: Scope, send: Send, tracked: bool) -> None:
    """What a request cut by `stop_all` gets: the 503 if its answer has not started (server/
    front.py keeps the start at `scope["state"]["response"]`), else the envelope as a last
    event of a stream (not of a subscription: its body just ends), or the end of the body."""
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1012})  # "service restart"
        return
    started = scope.get("state", {}).get("response")
    if started is None:
        response = router_error_response(STOPPING)
        response.headers["connection"] = "close"
        await response(scope, _nothing, send)
        return
    sse = any(
        k == b"content-type" and v.startswith(b"text/event-stream")
        for k, v in started.get("headers", ())
    )
    body = frame(error_json(STOPPING)) if sse and tracked else b""
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
