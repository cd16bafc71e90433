"""OpenAI-compatible endpoints: thin, parse -> one service call -> JSON or SSE."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from ..protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from ..serving.generate import GenerationService
from .sse import cancel_on_disconnect, sse_response

router = APIRouter(prefix="/v1", tags=["openai"])
T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T]) -> T:
    """The JSON body, whatever Content-Type the client sent (curl -d sends a form type)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": schema, "required": True}}


def _service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.generation
    return service


def _headers(model: str) -> dict[str, str]:
    return {"x-llm-router-model": model, "x-llm-router-route": "direct"}


@router.post("/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    service = _service(request)
    if body.stream:
        return await sse_response(service.chat_stream(body), _headers(service.model_id(body.model)))
    result = await cancel_on_disconnect(request.receive, service.chat(body))
    return JSONResponse(result.model_dump(), headers=_headers(result.model))


@router.post("/completions", openapi_extra=_body_schema(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    service = _service(request)
    if body.stream:
        stream = service.complete_stream(body)
        return await sse_response(stream, _headers(service.model_id(body.model)))
    result = await cancel_on_disconnect(request.receive, service.complete(body))
    return JSONResponse(result.model_dump(), headers=_headers(result.model))


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    manager = request.app.state.manager
    manager.refresh()
    return ModelList(
        data=[
            ModelCard(id=s.id, created=s.source.identity[1] // 1_000_000_000)
            for s in manager.states()
        ]
    )
