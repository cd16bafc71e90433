"""OpenAI-compatible endpoints: thin, parse -> one service call -> JSON or SSE."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
)  # fmt: skip
from ..routing.strategies import api_key_id
from ..serving.embed import EmbeddingService
from ..serving.ensemble import CompareRequest, EnsembleRequest, EnsembleService
from ..serving.generate import GenerationService, RouteInfo
from .sse import cancel_on_disconnect, sse_response

router = APIRouter(prefix="/v1", tags=["openai"])
T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T]) -> T:
    """The JSON body, whatever Content-Type the client sent (curl -d sends a form type). A
    body over the limit is refused as it arrives, with or without a Content-Length."""
    limit = request.app.body_limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": schema, "required": True}}


def _service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.generation
    return service


def _json(result: BaseModel, headers: dict[str, str]) -> Response:
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


def _route_info(request: Request) -> RouteInfo:
    """Who asks: the bearer token's id (a hash), the sticky key of A/B splits."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return RouteInfo(api_key_id=api_key_id(token) if scheme.lower() == "bearer" and token else None)


def _headers(route: RouteInfo) -> dict[str, str]:
    return {"x-llm-router-model": route.target, "x-llm-router-route": route.reason}


@router.post("/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    service, route = _service(request), _route_info(request)
    if body.stream:
        return await sse_response(service.chat_stream(body, route), lambda: _headers(route))
    result = await cancel_on_disconnect(request.receive, service.chat(body, route))
    return _json(result, _headers(route))


@router.post("/completions", openapi_extra=_body_schema(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    service, route = _service(request), _route_info(request)
    if body.stream:
        return await sse_response(service.complete_stream(body, route), lambda: _headers(route))
    result = await cancel_on_disconnect(request.receive, service.complete(body, route))
    return _json(result, _headers(route))


@router.post("/embeddings", openapi_extra=_body_schema(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    service: EmbeddingService = request.app.state.embeddings
    result = await cancel_on_disconnect(request.receive, service.embed(body))
    headers = {"x-llm-router-model": result.model, "x-llm-router-route": "direct"}
    return _json(result, headers)


@router.post("/ensemble", openapi_extra=_body_schema(EnsembleRequest))
async def ensemble(request: Request) -> Response:
    """One question to several targets; the answers combined by vote, best-of or first."""
    body = await parse_body(request, EnsembleRequest)
    service: EnsembleService = request.app.state.ensemble
    result = await cancel_on_disconnect(request.receive, service.ensemble(body))
    return JSONResponse(result, headers={"x-llm-router-model": result["model"],
                                         "x-llm-router-route": f"ensemble={body.mode}"})  # fmt: skip


@router.post("/compare", openapi_extra=_body_schema(CompareRequest))
async def compare(request: Request) -> Response:
    """One question to several targets; every answer with latency, tokens and cost."""
    body = await parse_body(request, CompareRequest)
    service: EnsembleService = request.app.state.ensemble
    return JSONResponse(await cancel_on_disconnect(request.receive, service.compare(body)))


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    manager = request.app.state.manager
    router = request.app.state.router
    manager.refresh()
    started = int(request.app.state.started)
    cards = [ModelCard(id=s.id, created=s.source.identity.created)
             for s in manager.states()]  # fmt: skip
    cards += [ModelCard(id=t.id, created=started) for t in router.remotes()]
    cards += [ModelCard(id=r.name, created=started) for r in router.routes()]
    return ModelList(data=cards)


# Called by `App` without FastAPI's per-request stack (server/app.py).
HOT = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/embeddings"): embeddings,
}
