"""`POST /v1/messages`, Anthropic's Messages API (the official `anthropic` SDKs, and tools that
speak it, such as Claude Code with `ANTHROPIC_BASE_URL`), served as a translation: the request
becomes the chat request /v1/chat/completions would get and goes through the same service call
(routing, remote targets, the cache, usage and metrics are the chat path's); the gateway's keys
(`x-api-key`, as the SDK sends it, works as a bearer key), scopes and limits and the tracing
middleware cover it as they cover every /v1 route. The answer, whole or streamed, is reshaped
into a `Message` (protocol/anthropic_out.py); `POST /v1/messages/count_tokens` counts the
prompt with the model's template. An error the route raises leaves in Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`), with the status and headers
(`Retry-After`) the chat path gives it; the gateway's refusals before the route (401, 403, 404
of a model a key may not use, 429) keep OpenAI's envelope, which the SDK reads by status."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..errors import BadRequest, RouterError
from ..protocol import (
    ApplyTemplateRequest,
    ChatCompletionRequest,
    RenderedChunk,
)
from ..protocol.anthropic_api import CountTokensRequest, MessagesRequest
from ..protocol.anthropic_out import MessageEvents, error_body, from_chat
from ..serving.llama import LlamaService
from . import translated
from .bodies import JSONRoute
from .errors import handler_for, status_of
from .openapi import sse_event
from .routes_openai import (
    generation_service,
    no_autoload_asked,
    parse_body,
    route_headers,
    route_info_of,
    stream_send_timeout,
)
from .sse import cancel_on_disconnect, sse_response
from .translated import ChatNames

__all__ = ["routes"]


class AnthropicRoute(JSONRoute):
    """A route whose errors leave in Anthropic's shape: the app's handler for the error
    answers it (status, message, headers), then its body is reshaped."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _reshaped(await handler_for(exc)(request, exc))

        return handle


def _reshaped(response: Response) -> Response:
    """An OpenAI error envelope as Anthropic's error body; any other answer as it is."""
    try:
        message = json.loads(bytes(response.body))["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response  # a 499 to no one, with no body
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return Response(
        json.dumps(error_body(response.status_code, str(message)), ensure_ascii=False),
        response.status_code,
        headers,
        media_type="application/json",
    )


routes = APIRouter(prefix="/v1", tags=["anthropic"], route_class=AnthropicRoute)

# a 400 of the chat path, named as the Anthropic field it came from; a tool's parameters are
# its `input_schema`
_NAMES = ChatNames(
    fields={"stop": ("stop_sequences",), "response_format": ("output_config", "format")},
    messages="messages",
    tool_param=re.compile(r"^tools\.?\[(\d+)\]\.function\.parameters"),
    tool_as=r"tools[\1].input_schema",
    tool_loc=(("function", "parameters"), ("input_schema",)),
)


def _chat(request: Request, chat: dict[str, Any], model: type[ChatCompletionRequest]) -> Any:
    """`chat` validated as `model`; a value chat refuses is a 400 naming the Anthropic field
    it came from."""
    return no_autoload_asked(request, _NAMES.validated(model, chat))


# documented by hand: the body is parsed in the route (parse_body), not by FastAPI
_ANSWER = {
    "description": "Anthropic's `Message`, or with `stream: true` its events",
    "content": {
        "application/json": {"schema": {"type": "object", "title": "Message"}},
        "text/event-stream": sse_event(
            "An event named by its `event:` line, its data JSON with the same `type`: "
            "`message_start`, `content_block_start`, `ping`, `content_block_delta`, "
            "`content_block_stop`, `message_delta`, `message_stop` (or `error`)"
        ),
    },
}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": model.model_json_schema()}},
    }


@routes.post(
    "/messages",
    summary="Create a message (Anthropic's Messages API)",
    openapi_extra={"requestBody": _body(MessagesRequest), "responses": {"200": _ANSWER}},
)
async def create_message(request: Request) -> Response:
    """Anthropic's Messages API over the chat path: `system`, `messages` (text, `tool_use`
    and `tool_result` blocks), `max_tokens`, `stop_sequences`, sampling, client `tools` and
    `tool_choice`; `stream: true` for its named events."""
    body = await parse_body(request, MessagesRequest)
    service, route = generation_service(request), route_info_of(request)
    chat: ChatCompletionRequest = _chat(request, body.to_chat(), ChatCompletionRequest)
    if chat.stream:
        events = MessageEvents(body)
        return await sse_response(
            translated.events(
                events, service.chat_stream(chat, route), _NAMES, lambda exc: _failed(events, exc)
            ),
            request.receive,
            lambda: route_headers(route),
            done=False,  # an Anthropic stream ends with its `message_stop`, no [DONE]
            send_timeout=stream_send_timeout(request),
        )
    try:
        result = await cancel_on_disconnect(request.receive, service.chat(chat, route))
    except BadRequest as exc:
        raise _NAMES.renamed(exc) from None
    return Response(
        json.dumps(from_chat(body, result), ensure_ascii=False),
        media_type="application/json",
        headers=route_headers(route),
    )


_COUNT = {"description": "The prompt's tokens", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"input_tokens": {"type": "integer"}}}}}}  # fmt: skip


@routes.post(
    "/messages/count_tokens",
    summary="Count a message's tokens (Anthropic's Messages API)",
    openapi_extra={"requestBody": _body(CountTokensRequest), "responses": {"200": _COUNT}},
)
async def count_tokens(request: Request) -> Response:
    """The tokens the prompt of this message request counts with the model's chat template
    (its `usage.input_tokens`); local models only (a remote target's tokenizer is not here)."""
    body = await parse_body(request, CountTokensRequest)
    chat: ApplyTemplateRequest = _chat(request, body.to_chat(), ApplyTemplateRequest)
    service: LlamaService = request.app.state.llama
    work = service.prompt_tokens(chat, "/v1/messages/count_tokens")
    count = await cancel_on_disconnect(request.receive, work)
    return Response(json.dumps({"input_tokens": count}), media_type="application/json")


def _failed(events: MessageEvents, exc: Exception) -> RenderedChunk:
    """The `error` event of a stream that failed after it started."""
    if isinstance(exc, RouterError):
        return events.error(status_of(exc)[0], exc.message)
    return events.error(500, "internal server error")
