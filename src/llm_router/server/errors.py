"""Every error leaves the server here, as the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`. One table maps the domain error classes to a
status and an OpenAI type/code; lookups walk the class's MRO, so subclasses inherit a row."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from .. import errors as e
from ..protocol.invalid import describe_invalid
from .headers import header_text

__all__ = [
    "ClientGone",
    "envelope",
    "error_json",
    "handler_for",
    "install",
    "retry_after",
    "status_of",
]

log = logging.getLogger(__name__)

ERROR_TABLE: dict[type[e.RouterError], tuple[int, str, str | None]] = {
    e.RouterError: (500, "server_error", None),
    e.BadRequest: (400, "invalid_request_error", None),
    e.ContextLengthExceeded: (400, "invalid_request_error", "context_length_exceeded"),
    e.Unsupported: (400, "invalid_request_error", "unsupported_value"),
    e.ModelNotLoaded: (400, "invalid_request_error", "model_not_loaded"),
    e.ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    e.QueueFull: (429, "rate_limit_error", "rate_limit_exceeded"),
    e.ServerBusy: (503, "server_error", "server_busy"),
    e.ServerStopping: (503, "server_error", "server_shutting_down"),
    e.RateLimited: (429, "rate_limit_error", "rate_limit_exceeded"),
    e.QuotaExceeded: (429, "insufficient_quota", "insufficient_quota"),
    e.AuthenticationFailed: (401, "invalid_request_error", "invalid_api_key"),
    e.PermissionDenied: (403, "invalid_request_error", "insufficient_permissions"),
    e.InsufficientMemory: (507, "server_error", "insufficient_memory"),
    e.ModelLoadFailed: (500, "server_error", "model_load_failed"),
    e.LoadInterrupted: (503, "server_error", "model_load_interrupted"),
    e.InvalidModelFile: (500, "server_error", "invalid_model_file"),
    e.EngineUnavailable: (501, "server_error", "engine_unavailable"),
    e.EngineError: (500, "server_error", "engine_error"),
    e.WorkerDied: (503, "server_error", "worker_died"),
    e.ModelUnloaded: (503, "server_error", "model_unloaded"),
    e.ConfigError: (500, "server_error", "config_error"),
    e.ReloadRejected: (400, "invalid_request_error", "config_error"),
    e.UpstreamUnavailable: (503, "server_error", "upstream_unavailable"),
    e.DatabaseUnavailable: (503, "server_error", "database_unavailable"),
    e.Conflict: (409, "invalid_request_error", "conflict"),
    e.UpstreamError: (502, "server_error", "upstream_error"),
}


def status_of(exc: e.RouterError) -> tuple[int, str, str | None]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[e.RouterError]


def envelope(
    message: str, type_: str, param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, rounded up (a client that waits that long has
    waited the whole wait: 9 s of a 9.06 s one was too soon), at least 1."""
    return str(max(1, math.ceil(seconds)))


def router_error_response(exc: e.RouterError) -> JSONResponse:
    status, type_, code = status_of(exc)
    headers = {}
    if isinstance(exc, e.QueueFull):
        if exc.retry_after is not None:
            headers["Retry-After"] = retry_after(exc.retry_after)
        else:  # no wait helps (a request too large): OpenAI's clients then do not retry
            headers["x-should-retry"] = "false"
    if isinstance(exc, e.UpstreamUnavailable | e.DatabaseUnavailable):
        headers["Retry-After"] = retry_after(exc.retry_after)
    elif isinstance(exc, e.WorkerDied | e.LoadInterrupted):
        headers["Retry-After"] = "1"
    elif isinstance(exc, e.ModelLoadFailed | e.InvalidModelFile | e.InsufficientMemory):
        # sticky until its files (or the budget, the pins) change: OpenAI's clients retry
        # anything from 500 up, and asked twice more for the same answer
        headers["x-should-retry"] = "false"
    return JSONResponse(envelope(exc.message, type_, exc.param, code), status, headers)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # the parser's own words: where, and what
        why = (first.get("ctx") or {}).get("error") or first.get("msg")
        message = f"We could not parse the JSON body of your request: {why}"
        loc: tuple[Any, ...] = tuple(first.get("loc") or ())
        param = loc[1] if len(loc) == 2 and isinstance(loc[1], str) else None  # parse_body's
        return JSONResponse(envelope(message, "invalid_request_error", param), 400)
    if first.get("type") == "missing" and tuple(first.get("loc") or ()) == ("body",):
        # FastAPI's words were "Field required" with param null: the whole body is missing
        message = "the request has no body: send a JSON object (Content-Type: application/json)"
        return JSONResponse(envelope(message, "invalid_request_error", None), 400)
    param, message = describe_invalid(errors)
    return JSONResponse(envelope(message, "invalid_request_error", param), 400)


class ClientGone(HTTPException):
    """The client disconnected before its answer was ready, or before it had sent its whole
    body: the work was cancelled (or never began) and nobody reads a response (the app
    answers 499 to no one, nginx's "client closed request", and logs nothing but the request
    line). An HTTPException, so that FastAPI's own body parsing passes it on, as BodyTooLarge."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection")


async def _on_router_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.RouterError)
    if isinstance(exc, e.ModelNotFound) and exc.name:
        exc.message += _meant(request, exc.name)
    response = router_error_response(exc)
    if exc.tried:  # a route's targets all failed: what it tried, as a served answer says
        response.headers["x-llm-router-route"] = header_text(exc.tried)
    return response


def _meant(request: Request, asked: str) -> str:
    """ "; did you mean 'X'?" for a model name the caller may have meant (routes_openai), or
    where the names are listed: only names the request's API key may see."""
    from .routes_openai import close_names  # it imports this module

    try:
        names = close_names(request, asked)
    except Exception:  # the app's state not there (a test's bare app): the plain message
        return ""
    if not names:
        return " (GET /v1/models lists the models)"
    quoted = " or ".join(f"'{n}'" for n in names)
    return f"; did you mean {quoted}?"


async def _on_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _validation_response(exc)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    426: "upgrade_required",
}


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        if _websocket_only(request):
            return _upgrade_required(request.url.path)
        detail = not_served(request.url.path)
    if exc.status_code == 405 and request.method == "OPTIONS":
        if (origin := request.headers.get("origin")) and "access-control-request-method" in (
            request.headers
        ):  # a browser asks first: without cors_origins, CORSMiddleware is not there to answer
            detail = (
                f"a browser's CORS preflight from {origin}: pages of another origin may call "
                "this server only when `cors_origins` in its configuration lists theirs"
            )
    body = envelope(detail, type_, code=_HTTP_CODES.get(exc.status_code))
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed(request))
    return JSONResponse(body, exc.status_code, headers or None)


def _websocket_only(request: Request) -> bool:
    """Whether the path is a WebSocket's alone (`/v1/ws`): some route takes it as one, and
    none as HTTP (a mount takes both). Asked of each route by matching, as `_allowed`."""
    socket = {**request.scope, "type": "websocket"}
    return any(
        route.matches(socket)[0] == Match.FULL and route.matches(request.scope)[0] == Match.NONE
        for route in request.app.routes
    )


def _upgrade_required(path: str) -> Response:
    """A plain request to a WebSocket's path: it was a 404 saying nothing is served there."""
    message = (
        f"{path} is a WebSocket: open it with a WebSocket client (ws://HOST:PORT{path}, a GET "
        "with `Connection: Upgrade` and `Upgrade: websocket`), then send "
        '{"id": "r1", "path": "/v1/chat/completions", "body": {...}} (the README\'s `WS /v1/ws`)'
    )
    body = envelope(message, "invalid_request_error", code=_HTTP_CODES[426])
    return JSONResponse(body, 426, {"Upgrade": "websocket"})


_RERANK = (
    "reranking (llama-server's /rerank, /v1/rerank) is not served here: no reranker "
    "model is served; /v1/embeddings gives vectors to rank documents by their cosine "
    "similarity to the query"
)
# Other servers' APIs a client may try here, and what to use instead.
_ELSEWHERE = (
    ("/api/", "Ollama's native API (/api/*) is not served here: use the OpenAI API at /v1 "
     "(Ollama's /v1 clients work as they are)"),
    ("/completion", "llama-server's native /completion is not served here: use "
     "/v1/completions (n_predict is max_tokens)"),
    ("/infill", "infill is not served here"),
    ("/rerank", _RERANK),
    ("/v1/rerank", _RERANK),
    ("/slots", "llama-server's /slots is not served here: GET /models shows each model's slots"),
    ("/embedding", "llama-server's native /embedding is not served here: use /v1/embeddings"),
)  # fmt: skip


def not_served(path: str) -> str:
    """The 404 of a path nothing serves, naming what to use when it is another server's."""
    for prefix, hint in _ELSEWHERE:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return f"Not Found: {hint}"
    return f"Not Found: nothing is served at {path[:200]} (the API is at /v1; /docs lists it)"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette names only the first route's,
    where a path has one route per method (GET and POST /admin/keys). Asked of each route
    by matching (a router FastAPI includes is one route that names no methods itself).
    HEAD wherever GET is: asgi.py answers it so."""
    served = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    }
    if "GET" in served:
        served.add("HEAD")
    return sorted(served)


async def _on_client_gone(_: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; no one reads it


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(envelope("internal server error", "server_error"), 500)


Handler = Callable[[Request, Exception], Awaitable[Response]]
HANDLERS: dict[type[Exception], Handler] = {
    e.RouterError: _on_router_error,
    RequestValidationError: _on_validation,
    HTTPException: _on_http,
    ClientGone: _on_client_gone,
    ClientDisconnect: _on_client_gone,  # starlette's, from a body read past our guard
    Exception: _on_unexpected,
}


def handler_for(exc: Exception) -> Handler:
    """The handler of `exc`'s class, as the app looks it up (along its MRO): for a route
    that reshapes the answer (routes_anthropic.py) rather than answering another way."""
    for cls in type(exc).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return _on_unexpected


def install(app: FastAPI) -> None:
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)


def error_json(exc: BaseException) -> str:
    """The envelope as one JSON string, for errors inside an already started stream."""
    if isinstance(exc, e.RouterError):
        _, type_, code = status_of(exc)
        return json.dumps(envelope(exc.message, type_, exc.param, code))
    return json.dumps(envelope("internal server error", "server_error"))
