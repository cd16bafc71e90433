"""Guards every request passes before any route, as plain ASGI middleware (a few microseconds
each; see BENCHMARKS.md): the Host header (DNS rebinding), the Content-Type of bodies (a web
page's no-preflight form POST), and the body size, counted as it arrives whatever the route.

Each answers its refusal itself, as the OpenAI error envelope, without calling the app; the
body limit, which can only be known once the body is being read, raises `BodyTooLarge` into
the route instead, which the app's exception handlers turn into the same envelope."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ClientGone

__all__ = [
    "BodyGuard",
    "BodyTimeout",
    "BodyTooLarge",
    "HostGuard",
    "ServerApp",
    "UnexpectedErrors",
    "body_once",
    "loopback_hosts",
    "send_json",
]

log = logging.getLogger(__name__)

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def loopback_hosts() -> set[str]:
    return set(LOOPBACK)


class BodyTooLarge(HTTPException):
    """A request body went over the limit while it was being read: a 413 (an HTTPException,
    so that FastAPI's own body parsing passes it on instead of calling it a bad body)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")
        self.limit = limit


class BodyTimeout(HTTPException):
    """A request body had not all arrived `seconds` after its route began to read it (a
    client that sent it too slowly, or part of it and stopped): a 408."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body had not all arrived {seconds:g} s after it was first read "
            "(`body_timeout`): it was sent too slowly, or stopped",
        )


def body_once(body: bytes, then: Receive) -> Receive:
    """A `receive` that gives `body` whole as the request's, then waits on `then` (the
    client's own receive, for its disconnect; or another end)."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


async def send_json(
    send: Send,
    status: int,
    payload: object,
    headers: Iterable[tuple[bytes, bytes]] = (),
    scope: Scope | None = None,
) -> None:
    """A whole JSON response, sent by a guard that answers without calling the app. For a
    WebSocket handshake (`scope`), the same answer in place of the upgrade where the server
    can send one (ASGI's websocket.http.response); else the socket is closed (uvicorn then
    answers a bare 403, whatever the reason)."""
    body = json.dumps(payload).encode()
    prefix = "http."
    if scope is not None and scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1013 if status == 503 else 1008})
            return
        prefix = "websocket.http."
    await send(
        {
            "type": prefix + "response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": prefix + "response.body", "body": body})


async def _refuse(
    send: Send,
    status: int,
    message: str,
    code: str | None = None,
    type_: str = "invalid_request_error",
) -> None:
    error = {"message": message, "type": type_, "param": None, "code": code}
    await send_json(send, status, {"error": error})


def _host_name(value: str) -> str:
    """The host part of a Host header: `[::1]:8080` -> `::1`, `Example.COM.:80` -> `example.com`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostGuard:
    """421 for a request whose Host header names a host other than a loopback name, an IP
    address or one of `allowed` (`*` allows any): a page that re-points its own DNS name at
    this server (DNS rebinding) reaches it with that name as Host, and is refused. An IP
    address cannot be rebound (the page would have to come from this server itself)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        names = {a.lower().rstrip(".") for a in allowed}
        self.any = "*" in names
        self.allowed = loopback_hosts() | names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        value = next((v for k, v in scope["headers"] if k == b"host"), None)
        refusal = self.refusal(value)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await refusal(send)

    def refusal(self, value: bytes | None) -> Callable[[Send], Awaitable[None]] | None:
        """None when a request with this Host header (its first; None: none) is served,
        else what answers it (server/front.py checks it in its own pass over the headers)."""
        if self.any:
            return None
        host = _host_name(value.decode("latin-1")) if value is not None else ""
        if host in self.allowed or _is_ip(host):
            return None
        message = (
            f"the Host {host or '(none)'!r} is not served here; to serve "
            "it, add it to `allowed_hosts` in the configuration"
        )
        return lambda send: _refuse(send, 421, message, "host_not_allowed")


class BodyGuard:
    """For HTTP requests with a body: 415 unless the Content-Type is JSON (`application/json`
    or `application/*+json`), 413 when the Content-Length says the body is over `limit`, and
    from `receive`, while the body is being read: for a body sent without one (chunked),
    BodyTooLarge once the bytes received go over it; BodyTimeout when it has not all come
    `timeout` seconds after the first read; ClientGone when the client closes (or half-closes)
    the connection before it is whole (it was starlette's ClientDisconnect: a 500 and a
    traceback). Once the body is whole, `receive` is the server's own (a later disconnect is
    the routes' to watch). Raised where the body is read: in a route, the app's handlers
    answer them; in a middleware before it (the gateway buffers bodies), here.

    An HTTP/1.x request with neither a Content-Length nor a Transfer-Encoding has no body and
    passes as it is: `curl -X PUT` on a GET route was a 415 about a body it did not send,
    where the route's answer is a 405 with `Allow`. Not so a POST from a web page (it says its
    `Origin`): without JSON it is a 415 too, as a page sends it without asking first."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 60.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = content_type = b""
        chunked = from_page = False
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"content-type":
                content_type = value
            elif key == b"transfer-encoding":
                chunked = True
            elif key == b"origin":
                from_page = True
        if from_page and scope["method"] == "POST" and not _is_json(content_type):
            # A page's POST without a body (or an empty one) is sent without the browser asking
            # the server first (no preflight): any site could `POST /admin/reload` (found from
            # outside). From a browser, a POST must say JSON, body or not.
            shown = content_type.decode("latin-1") or "none"
            await _refuse(
                send,
                415,
                f"a POST from a web page must say JSON, with a body or without: Content-Type "
                f"is {shown!r}, not 'application/json'",
                "unsupported_media_type",
            )
            return
        if not (length or chunked) and scope.get("http_version", "1.1") in ("1.1", "1.0"):
            # no body (HTTP/2 has neither header for one): the route's to answer (405, 400)
            await self.app(scope, receive, send)
            return
        if length.isdigit() and int(length) > self.limit:
            await _refuse(
                send,
                413,
                f"request body of {int(length)} bytes is over the limit of {self.limit} bytes",
                "body_too_large",
            )
            return
        if length != b"0" and not _is_json(content_type):
            shown = content_type.decode("latin-1") or "none"
            await _refuse(
                send,
                415,
                f"request bodies must be JSON: Content-Type is {shown!r}, "
                "not 'application/json' (with curl: -H 'Content-Type: "
                "application/json')",
                "unsupported_media_type",
            )
            return
        if length == b"0":
            await self.app(scope, receive, send)
            return
        # the server reads at most a Content-Length: counted only without one
        limit = None if length.isdigit() else self.limit
        try:
            await self.app(scope, _body_reader(receive, limit, self.timeout), send)
        except ClientGone:  # as the app's handler answers it: 499, to no one
            await send({"type": "http.response.start", "status": 499, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        except BodyTimeout as exc:  # the response has not begun: the body was not read yet
            await _refuse(send, 408, str(exc.detail), "request_timeout")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _body_reader(receive: Receive, limit: int | None, timeout: float) -> Receive:
    """`receive` as BodyGuard says. One timer a read until the body is whole (mostly one
    read): nothing after it."""
    received = 0
    whole = False
    deadline: float | None = None

    async def read() -> Message:
        nonlocal received, whole, deadline
        if whole:
            return await receive()
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(timeout) from None
        if message["type"] != "http.request":  # http.disconnect
            raise ClientGone
        whole = not message.get("more_body", False)
        if limit is not None:
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return read


class UnexpectedErrors:
    """The innermost guard: an exception no handler took (a bug) is logged once, with its
    traceback, and answered with a bare 500 envelope, the details kept from the client. If
    the response had started (a stream), the connection is closed instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not started:
                await _refuse(send, 500, "internal server error", None, "server_error")


class ServerApp(FastAPI):
    """The FastAPI application with a short path for the hot routes (chat, completions,
    embeddings): every request passes the middleware added with `add_middleware` (the guards
    above; auth and limits go there), then a hot route goes straight to its handler through
    the app's exception handlers, and any other request through FastAPI's own stack (its
    server-error guard, telemetry, body limit, exception handlers, exit stack, routing).

    FastAPI's layers cost ~0.3 ms of CPU a request, more than the rest of what the router
    does for a request to a fast upstream (measured: 533 -> 887 us a request when the hot
    routes went through them, bench/overhead.py's stub, BENCHMARKS.md)."""

    def __init__(self, *args: Any, hot: Iterable[Route] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_routes = list(hot)
        self._hot_paths = frozenset(r.path for r in self.hot_routes)
        self.quiet_refusals = False  # see _refusal_untold
        self.router.routes.extend(self.hot_routes)  # listed and documented like any other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._hot_paths:
            # FastAPI's own __call__ asks OpenTelemetry (3 environment lookups) on every
            # request whether to trace it; the hot routes do not go through its tracing.
            await Starlette.__call__(self, scope, receive, send)
        elif scope["type"] == "lifespan" and self.quiet_refusals:
            await super().__call__(scope, receive, self._refusal_untold(send))
        else:
            await super().__call__(scope, receive, send)

    def _refusal_untold(self, send: Send) -> Send:
        """A start refused for the configuration (`state.refused`, a ConfigError the lifespan
        raised) fails without starlette's traceback in the message uvicorn logs, when whoever
        runs the app says the error itself (`quiet_refusals`: run.run_one raises it, and the
        command says it in one line; a Ray Serve replica logs the message)."""

        async def send_lifespan(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and hasattr(self.state, "refused"):
                message = {"type": "lifespan.startup.failed"}
            await send(message)

        return send_lifespan

    def build_middleware_stack(self) -> ASGIApp:
        user, self.user_middleware = self.user_middleware, []
        try:
            rest = super().build_middleware_stack()  # FastAPI's own stack, without ours
        finally:
            self.user_middleware = user
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = _HotSwitch(
            {r.path: ExceptionMiddleware(r.handle, handlers=handlers) for r in self.hot_routes},
            rest,
        )
        for cls, args, kwargs in reversed(user):
            app = cls(app, *args, **kwargs)
        return app


class _HotSwitch:
    def __init__(self, hot: dict[str, ASGIApp], rest: ASGIApp) -> None:
        self.hot = hot
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.hot.get(scope["path"]) if scope["type"] == "http" else None
        if app is None and scope["type"] == "http" and scope["method"] == "HEAD":
            await self.rest({**scope, "method": "GET"}, receive, _headers_only(send))
            return
        await (app or self.rest)(scope, receive, send)


def _headers_only(send: Send) -> Send:
    """HEAD wherever GET is served (FastAPI's routes answer GET only; `curl -I`, uptime
    monitors and Ollama's clients' `HEAD /` got a 405): the GET's status and headers, its
    body dropped here (the server drops it too, but not every ASGI client does)."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
