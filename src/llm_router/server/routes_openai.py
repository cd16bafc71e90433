"""OpenAI-compatible endpoints: thin, parse -> one service call -> JSON or SSE.

Chat, completions and embeddings (`HOT`) are plain Starlette routes: they take no FastAPI
dependencies, so FastAPI's per-request dependency solving and response handling (~0.1 ms of
CPU here, as much as the rest of the router; BENCHMARKS.md) is not paid on every token-bearing
request. They still pass through the app's whole middleware stack and exception handlers like
every other route: anything that must hold for every request (the guards of server/asgi.py,
auth, limits) is ASGI middleware, which a test checks covers these routes. Their OpenAPI
description is written in server/openapi.py. The other `/v1` routes are ordinary FastAPI ones."""

from __future__ import annotations

import contextlib
import difflib
import json
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.routing import Route

from ..errors import ModelNotFound, RouterError
from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    ModelStatus,
)
from ..routing.strategies import api_key_id
from ..serving.embed import EmbeddingService
from ..serving.ensemble import (
    CompareRequest,
    CompareResult,
    EnsembleRequest,
    EnsembleResult,
    EnsembleService,
)
from ..serving.generate import GenerationService, RouteInfo
from .bodies import JSONRoute, invalid_json
from .gateway import presented_key, visible
from .headers import header_text
from .sse import cancel_on_disconnect, sse_response

__all__ = [
    "HOT",
    "generation_service",
    "no_autoload_asked",
    "parse_body",
    "route_headers",
    "route_info_of",
    "routes",
    "stream_send_timeout",
]

routes = APIRouter(prefix="/v1", tags=["openai"], route_class=JSONRoute)
T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T]) -> T:
    """The JSON body as `model`. Its Content-Type and size were checked on the way in
    (server/asgi.py's BodyGuard); a value that does not validate is a 400 naming the field.
    A body without `model` gets the configured `default_model`, when there is one."""
    body = await request.body()
    try:
        return no_autoload_asked(request, model.model_validate_json(body))
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            if not body.strip():  # as FastAPI's routes say it (server/errors.py), not "EOF..."
                missing = {"type": "missing", "loc": ("body",), "msg": "no body"}
                raise RequestValidationError([missing]) from None
            why, field = invalid_json(body, errors[0].get("ctx", {}).get("error", errors[0]["msg"]))
            loc = ("body", field) if field else errors[0]["loc"]
            raise RequestValidationError(
                [{**errors[0], "loc": loc, "ctx": {"error": why}}]
            ) from None
        default = request.app.state.settings.default_model
        if default and any(e["type"] == "missing" and e["loc"] == ("model",) for e in errors):
            try:
                parsed = model.model_validate({**json.loads(body), "model": default})
                return no_autoload_asked(request, parsed)
            except ValidationError as again:
                errors = again.errors()
        raise RequestValidationError(errors) from None


def no_autoload_asked(request: Request, body: T) -> T:
    """`body` with `autoload` false when the query string says `?autoload=false` (or 0), as
    llama-server's router reads it on every route (it was read on GET /props only). A
    request may turn autoload off, never on."""
    if b"autoload" not in request.scope.get("query_string", b""):
        return body  # nearly every request: no query string parsed
    asked = request.query_params.get("autoload")
    if asked is not None and asked.lower() in ("false", "0") and hasattr(body, "autoload"):
        body.autoload = False
    return body


def generation_service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.generation
    return service


def stream_send_timeout(request: Request) -> float:
    seconds: float = request.app.state.settings.send_timeout
    return seconds


def _json(result: BaseModel, headers: dict[str, str]) -> Response:
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


_FRESH = frozenset({b"no-cache", b"max-age=0"})  # Cache-Control directives asking for a new answer


def route_info_of(request: Request) -> RouteInfo:
    """Who asks: the id (a hash) of the API key the request carries, however it carries it
    (`presented_key`: an Anthropic client's `x-api-key` too), the sticky key of A/B splits;
    the gateway's when it checked the key (server/gateway.py: the same hash, made once). The
    record is kept on the request's state for the middleware that reads it after the
    response."""
    key_id = request.scope.get("state", {}).get("api_key_id")
    if key_id is None:
        token = presented_key(request.scope["headers"])
        key_id = api_key_id(token) if token else None
    info = RouteInfo(api_key_id=key_id)
    control = pragma = None
    for name, value in request.scope["headers"]:
        if name == b"cache-control":
            control = value
        elif name == b"pragma":
            pragma = value
    if control:  # no-cache (or max-age=0): not answered from the cache; no-store: not kept
        directives = {d.strip().lower().replace(b" ", b"") for d in control.split(b",")}
        info.cache_read = not directives & _FRESH
        info.cache_write = b"no-store" not in directives
    elif pragma and pragma.strip().lower() == b"no-cache":  # HTTP/1.0's no-cache
        info.cache_read = False
    request.state.route = info
    return info


def route_headers(route: RouteInfo) -> dict[str, str]:
    headers = {
        "x-llm-router-model": header_text(route.target),
        "x-llm-router-route": header_text(route.reason),
    }
    if route.cache:
        headers["x-llm-router-cache"] = route.cache
    return headers


async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    service, route = generation_service(request), route_info_of(request)
    if body.stream:
        return await sse_response(
            service.chat_stream(body, route),
            request.receive,
            lambda: route_headers(route),
            send_timeout=stream_send_timeout(request),
        )
    result = await cancel_on_disconnect(request.receive, service.chat(body, route))
    return _json(result, route_headers(route))


async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    service, route = generation_service(request), route_info_of(request)
    if body.stream:
        return await sse_response(
            service.complete_stream(body, route),
            request.receive,
            lambda: route_headers(route),
            send_timeout=stream_send_timeout(request),
        )
    result = await cancel_on_disconnect(request.receive, service.complete(body, route))
    return _json(result, route_headers(route))


async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    service: EmbeddingService = request.app.state.embeddings
    route = route_info_of(request)
    result = await cancel_on_disconnect(request.receive, service.embed(body, route))
    return _json(result, route_headers(route))


HOT = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]


@routes.post("/ensemble", response_model=EnsembleResult)
async def ensemble(body: EnsembleRequest, request: Request) -> Response:
    """One question to several targets; the answers combined by vote, best-of or first."""
    service: EnsembleService = request.app.state.ensemble
    route = route_info_of(request)  # a record per target asked, for usage accounting
    result = await cancel_on_disconnect(request.receive, service.ensemble(body, route))
    return _json(
        result,
        {
            "x-llm-router-model": header_text(result.model),
            "x-llm-router-route": f"ensemble={body.mode}",
        },
    )


@routes.post("/compare", response_model=CompareResult)
async def compare(body: CompareRequest, request: Request) -> Response:
    """One question to several targets; every answer with latency, tokens and cost."""
    service: EnsembleService = request.app.state.ensemble
    route = route_info_of(request)
    return _json(await cancel_on_disconnect(request.receive, service.compare(body, route)), {})


@routes.get("/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=_cards(request))


@routes.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> ModelCard:
    """One model (OpenAI's `models.retrieve`): an id, a remote target or a route, or an alias
    (answered with the id it names); a 404 for any other name."""
    cards = {c.id: c for c in _cards(request)}
    card = cards.get(model)
    if card is None:
        with contextlib.suppress(RouterError):
            card = cards.get(request.app.state.dispatcher.resolve(model))
    if card is None:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model", name=model)
    return card


def _cards(request: Request) -> list[ModelCard]:
    """Every model, remote target and route the request's API key may see."""
    manager = request.app.state.manager
    dispatcher = request.app.state.dispatcher
    manager.refresh()
    started = int(request.app.state.started)
    cards = [
        ModelCard(
            id=s.id,
            created=s.source.identity.created,
            aliases=s.source.config.aliases,
            status=ModelStatus(value=s.status.value),
        )
        for s in manager.states()
    ]
    cards += [
        ModelCard(id=t.id, created=started, aliases=t.config.aliases) for t in dispatcher.remotes()
    ]
    cards += [ModelCard(id=r.name, created=started) for r in dispatcher.routes()]
    return [c for c in cards if visible(request, c.id)]  # the key's allow-list


def close_names(request: Request, asked: str) -> list[str]:
    """The names of `GET /v1/models` (ids and aliases the request's API key may see) that
    `asked` may have meant, at most three: the same but for case; else the same without a
    quantization suffix (`name` for `name.Q4_1`); else those it begins (`smollm2`, or
    Ollama's `smollm2:135m`, for `SmolLM2-135M-Instruct.Q4_1`); else alike ones (difflib).
    A name typed as a user reads it got a 404 naming only what was asked."""
    names = {n.lower(): n for c in _cards(request) for n in (c.id, *c.aliases)}
    wanted = asked.lower()
    if wanted in names:
        return [names[wanted]]
    prefix = wanted.split(":", 1)[0]
    for found in (
        [n for low, n in names.items() if low.rsplit(".", 1)[0] == wanted.rsplit(".", 1)[0]],
        [n for low, n in names.items() if len(prefix) >= 3 and low.startswith(prefix)],
    ):
        if found:
            return sorted(found)[:3]
    return [names[n] for n in difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.6)]
