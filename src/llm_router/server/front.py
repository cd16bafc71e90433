"""The outermost layer every request passes: its id, the Host check, its trace span and its log
line, in one ASGI middleware with one `send` wrapper.

These were three layers (the request log, the trace span, the Host guard), each wrapping
`send` and scanning the headers; one pass costs less on every request (BENCHMARKS.md, "What
observability costs"). What each does is unchanged:

- the request id is the client's `x-request-id` when it is sane (request_log.py), else a new
  one, kept at `scope["state"]["request_id"]` and returned in the response's `x-request-id`;
- the response's start is kept at `scope["state"]["response"]` (its status, for the layers
  inside, which so need no `send` wrapper of their own), with the headers of
  `scope["state"]["response_headers"]()` added when an inner layer set it (the gateway's
  `x-ratelimit-*`);
- a Host header naming a host other than a loopback name, an IP address or an allowed one is
  answered 421 (asgi.HostGuard: DNS rebinding);
- with tracing on, the request's server span is current for the app (server/tracing.py), and
  gets the route's record and the status at the end;
- with the request log on, one line at the end (request_log.py), with the span's ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..metrics import Metrics
from ..tracing import Tracing, activate
from .asgi import HostGuard
from .request_log import SANE_ID, Texts, write_line
from .tracing import finish_span, open_span, route_template

__all__ = ["Front"]


class Front:
    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] = (),
        log_requests: bool = True,
        log_prompts: bool = False,
        tracing: Tracing | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.hosts = HostGuard(app, allowed_hosts)
        self.log_requests = log_requests
        self.log_prompts = log_prompts
        self.tracing = tracing
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.hosts(scope, receive, send)  # websockets: the Host check alone
            return
        request_id = host = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                if request_id is None:
                    text = value.decode("latin-1")
                    request_id = text if SANE_ID.fullmatch(text) else ""
            elif key == b"host" and host is None:
                host = value
        request_id = request_id or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        raw_id = request_id.encode()
        started = time.perf_counter()
        status = 0
        texts = Texts() if self.log_prompts else None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                more = state.get("response_headers")  # an inner layer's (server/gateway.py)
                message = {
                    **message,
                    "headers": [
                        *message["headers"],
                        (b"x-request-id", raw_id),
                        *(more() if more is not None else ()),
                    ],
                }
                state["response"] = message  # its status for inner layers; what must end it
            elif texts is not None and message["type"] == "http.response.body":
                texts.answer(message.get("body", b""))
            await send(message)

        async def receiving() -> Message:
            message = await receive()
            if texts is not None and message["type"] == "http.request":
                texts.request(message.get("body", b""))
            return message

        refusal = self.hosts.refusal(host)
        inner = receiving if texts is not None else receive
        span = None
        try:
            if self.tracing is None:
                await (self.app(scope, inner, sending) if refusal is None else refusal(sending))
            else:
                span = open_span(self.tracing, scope)
                with activate(span):
                    try:
                        await (
                            self.app(scope, inner, sending) if refusal is None else refusal(sending)
                        )
                    finally:
                        finish_span(span, state, status, scope)
        finally:
            if self.log_requests:
                write_line(scope, state, status, started, request_id, texts, span)
            if (status >= 400 or not status) and self.metrics is not None:
                route = route_template(scope) or "unmatched"  # bounded: never a client's path
                self.metrics.http_errors.labels(route, str(status or 499)).inc()

    @staticmethod
    def options(
        settings: Any, tracing: Tracing | None, metrics: Metrics | None = None
    ) -> dict[str, Any]:
        """The keyword arguments for `app.add_middleware(Front, ...)` from the settings."""
        return {
            "allowed_hosts": settings.allowed_hosts,
            "log_requests": settings.log_requests,
            "log_prompts": settings.log_prompts,
            "tracing": tracing,
            "metrics": metrics,
        }
