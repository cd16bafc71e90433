"""llama-server's own endpoints, per model as in its router mode: `POST /tokenize`,
`/detokenize`, `/apply-template` and `GET /props?model=`. Thin: parse, one service call, JSON.
Bodies pass the same guards as every route (server/asgi.py)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..errors import ModelNotFound
from ..protocol import (
    MAX_MODEL_NAME,
    ApplyTemplateRequest,
    ApplyTemplateResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelProps,
    RouterProps,
    TokenizeRequest,
    TokenizeResponse,
)
from ..serving.llama import LlamaService
from .bodies import JSONRoute
from .gateway import visible
from .routes_openai import no_autoload_asked
from .sse import cancel_on_disconnect

__all__ = ["routes"]

routes = APIRouter(tags=["llama.cpp"], route_class=JSONRoute)


def _service(request: Request) -> LlamaService:
    service: LlamaService = request.app.state.llama
    return service


def _json(result: BaseModel) -> Response:
    return Response(result.model_dump_json(), media_type="application/json")


@routes.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """The model's tokens of `content` (with `with_pieces`, each with its text)."""
    work = _service(request).tokenize(no_autoload_asked(request, body))
    return _json(await cancel_on_disconnect(request.receive, work))


@routes.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    """The text of `tokens`."""
    work = _service(request).detokenize(no_autoload_asked(request, body))
    return _json(await cancel_on_disconnect(request.receive, work))


@routes.post("/apply-template", response_model=ApplyTemplateResponse)
async def apply_template(body: ApplyTemplateRequest, request: Request) -> Response:
    """The prompt the model's chat template makes of a chat completion request."""
    work = _service(request).apply_template(no_autoload_asked(request, body))
    return _json(await cancel_on_disconnect(request.receive, work))


@routes.get("/props", response_model=ModelProps | RouterProps)
async def props(
    request: Request,
    model: str | None = Query(None, min_length=1, max_length=MAX_MODEL_NAME),
    autoload: bool | None = Query(None),
) -> Response:
    """A model's properties (context per slot, slots, chat template...); without `model`,
    the router's. A model the API key may not use does not exist for it (404)."""
    if model is not None and not visible(request, model):
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    work = _service(request).props(model, autoload)
    return _json(await cancel_on_disconnect(request.receive, work))
