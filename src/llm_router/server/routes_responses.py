"""`POST /v1/responses`, OpenAI's Responses API (the default of openai-agents, the AI SDK's
`createOpenAI(...)(model)` and `client.responses.create`), served as a translation: the request
becomes the chat request /v1/chat/completions would get and goes through the same service call
(routing, remote targets, the cache, usage and metrics are the chat path's); the gateway's keys,
scopes and limits and the tracing middleware cover it as they cover every /v1 route. Its answer,
whole or streamed, is reshaped into a `Response` (protocol/responses_out.py), whose output items
are kept for later `item_reference` inputs (protocol/responses_items.py)."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import BadRequest
from ..protocol import ChatCompletionRequest
from ..protocol.responses_api import ResponsesRequest
from ..protocol.responses_items import OutputItems
from ..protocol.responses_out import ResponseEvents, from_chat
from . import translated
from .bodies import JSONRoute
from .errors import error_json
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

routes = APIRouter(prefix="/v1", tags=["openai"], route_class=JSONRoute)

# a 400 of the chat path, named as the Responses field it came from; a Responses tool is flat
# (no chat `function.` level)
_NAMES = ChatNames(
    fields={
        "max_tokens": ("max_output_tokens",),
        "messages": ("input",),
        "response_format": ("text", "format"),
    },
    messages="input",
    tool_param=re.compile(r"^(tools\.?\[\d+\])\.function(?=\.|$)"),
    tool_as=r"\1",
    tool_loc=(("function",), ()),
)


def _output_items(request: Request) -> OutputItems:
    items: OutputItems = request.app.state.response_items
    return items


def _chat_request(
    request: Request, body: ResponsesRequest, owner: str | None
) -> ChatCompletionRequest:
    """The chat request `body` translates to, its `item_reference` inputs replaced by the
    items `owner` was answered; a value chat refuses is a 400 naming the Responses field it
    came from."""
    kept = _output_items(request)
    chat = body.to_chat(lambda item_id: kept.get(owner, item_id))
    return no_autoload_asked(request, _NAMES.validated(ChatCompletionRequest, chat))


# documented by hand: the body is parsed in the route (parse_body), not by FastAPI
_ANSWER = {
    "description": "OpenAI's `Response` object, or with `stream: true` its events",
    "content": {
        "application/json": {"schema": {"type": "object", "title": "Response"}},
        "text/event-stream": sse_event(
            "An event as JSON (`type`, `sequence_number`, ...); "
            "the last is `response.completed` (or `response.incomplete`), no [DONE]"
        ),
    },
}
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": ResponsesRequest.model_json_schema()}},
}


@routes.post(
    "/responses",
    summary="Create a model response (OpenAI's Responses API)",
    openapi_extra={"requestBody": _BODY, "responses": {"200": _ANSWER}},
)
async def create_response(request: Request) -> Response:
    """OpenAI's Responses API over the chat path: `input` (a string, or messages,
    `function_call` and `function_call_output` items), `instructions`, function `tools`,
    `text.format`, sampling; `stream: true` for its typed events. Responses are not stored
    (`previous_response_id` is a 400)."""
    body = await parse_body(request, ResponsesRequest)
    service, route = generation_service(request), route_info_of(request)
    chat = _chat_request(request, body, route.api_key_id)
    kept = _output_items(request) if body.store is not False else None
    if chat.stream:
        events = ResponseEvents(body)
        ending = None if kept is None else lambda: kept.keep(route.api_key_id, events.items())
        return await sse_response(
            translated.events(
                events,
                service.chat_stream(chat, route),
                _NAMES,
                lambda exc: events.error(json.loads(error_json(exc))["error"]),
                ending,
            ),
            request.receive,
            lambda: route_headers(route),
            done=False,  # a Responses stream ends with its `response.completed`, no [DONE]
            send_timeout=stream_send_timeout(request),
        )
    try:
        result = await cancel_on_disconnect(request.receive, service.chat(chat, route))
    except BadRequest as exc:
        raise _NAMES.renamed(exc) from None
    answer = from_chat(body, result)
    if kept is not None:
        kept.keep(route.api_key_id, answer["output"])
    return Response(
        json.dumps(answer, ensure_ascii=False),
        media_type="application/json",
        headers=route_headers(route),
    )
