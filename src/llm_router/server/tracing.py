"""One OpenTelemetry span per HTTP request (server kind), continuing the client's W3C
`traceparent` when it sends one. The server's front layer (front.py), when tracing is on, opens
it, makes it current for the request's task so the layers below add their child spans
(llm_router/tracing.py), and once the response is done gives it what the OpenAI routes' record
says (GenAI conventions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from ..logs import redact
from ..tracing import Span, Tracing
from .request_log import SPAN_NAMES, route_fields

__all__ = ["finish_span", "open_span", "route_template"]

_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "chat",  # translated to a chat request (routes_responses.py)
    "/v1/messages": "chat",  # the same, from Anthropic's Messages API (routes_anthropic.py)
}
_HOT = frozenset(
    {*_OPERATIONS, "/v1/models"} - {"/v1/responses", "/v1/messages"}
)  # served without the router (server/asgi.py)


def open_span(tracing: Tracing, scope: Scope) -> Span:
    """The request's server span, not yet current (`activate` makes it so); named when it
    finishes."""
    method, path = scope["method"], scope["path"]
    attributes: dict[str, Any] = {"http.request.method": method, "url.path": redact(path)}
    operation = _OPERATIONS.get(path)
    if operation:  # the router serves it: the provider is the router (GenAI conventions)
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.provider.name"] = "llm_router"
    return tracing.root(method, attributes, scope["headers"])


def route_template(scope: Scope) -> str | None:
    """The template of the route a request matched (`/v1/models/{model:path}`), None when it
    matched none: a bounded name for it, never the client's path. A request a guard answered
    before routing (a 415, 413 or 401: asgi.py, gateway.py) is named by the route that would
    have served it (it was "unmatched", for `POST /admin/reload`: found from outside)."""
    path = scope["path"]
    template = getattr(scope.get("route"), "path", None)
    if template is not None:
        return str(template)
    return path if path in _HOT else _served_by(scope)


def _served_by(scope: Scope) -> str | None:
    """The template of the app's route that serves `scope`'s method and path, if any (the
    routing a guard's answer skipped: only for those, and for the paths that match nothing)."""
    return _template(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)


def _template(routes: Iterable[Any], scope: Scope) -> str | None:
    for route in routes:
        # a router included whole (FastAPI >= 0.16x lists it as one route), with no prefix
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            found = _template(inner, scope)
        elif isinstance(route, BaseRoute) and route.matches(scope)[0] is Match.FULL:
            found = getattr(route, "path", None)
        else:
            continue
        if found:
            return str(found)
    return None


def finish_span(span: Span, state: dict[str, Any], status: int, scope: Scope) -> None:
    """What the response and the route's record say, on the span (before it ends). Its name
    is the method and the route's template once routing matched one (`GET /models/{id}`),
    the method alone for a path that matched nothing (as the HTTP conventions say: a
    client's paths would make the names unbounded)."""
    method = scope["method"]
    template = route_template(scope)
    span.name = f"{method} {template}" if template else method
    attributes = span.attributes  # written here directly: a call less each
    if template:
        attributes["http.route"] = template
    route = state.get("route")
    request_id = state.get("request_id")
    if request_id:
        attributes["llm_router.request_id"] = request_id
    if route is not None:
        route_fields(route, attributes, SPAN_NAMES)
    if status:
        attributes["http.response.status_code"] = status
    if status >= 500:
        span.set_error(None)
        attributes["error.type"] = str(status)
    elif status < 400 and route is not None and route.error:  # a stream cut after its 200
        span.set_error(None)
        attributes["error.type"] = route.error
