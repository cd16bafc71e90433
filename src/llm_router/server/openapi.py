"""The OpenAPI document at `/openapi.json` (and so `/docs`): FastAPI's description of its own
routes, plus the hot OpenAI routes (plain Starlette routes, described here from the same
pydantic models that parse them), plus every error status the server answers with, each with
OpenAI's error envelope. Built once, on first request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..gateway.keys import required_scope
from ..protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)

__all__ = ["document", "sse_event"]

REF = "#/components/schemas/{model}"
BEARER = "apiKey"
_BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (`sk-llmr-...`, `llm-router keys create`) or the master key "
    "(`LLM_ROUTER_MASTER_KEY`), as `Authorization: Bearer KEY`. Needed once a key exists; "
    "without any, clients on this machine are served without one.",
}


@dataclass(frozen=True, slots=True)
class _Hot:
    path: str
    summary: str
    request: type[BaseModel]
    response: type[BaseModel]
    chunk: type[BaseModel] | None  # what `stream: true` sends, as server-sent events


HOT = (
    _Hot(
        "/v1/chat/completions",
        "Chat completion",
        ChatCompletionRequest,
        ChatCompletion,
        ChatCompletionChunk,
    ),
    _Hot("/v1/completions", "Text completion", CompletionRequest, Completion, Completion),
    _Hot("/v1/embeddings", "Embeddings", EmbeddingRequest, EmbeddingResponse, None),
)

# status -> what it means here (server/errors.py's table says which error gives which)
_ERRORS = {
    400: "Invalid request: malformed JSON, a value out of range (the envelope's `param` names "
    "it), a prompt longer than the context, a model that cannot do this",
    401: "No API key, or one that is unknown, revoked or expired (when keys are on)",
    403: "The API key lacks the scope this route needs",
    404: "No model, alias or route (or API key, on /admin/keys) by that name",
    413: "Request body over `max_body_bytes`",
    409: "An API key by that name exists already",
    415: "Request body that is not JSON (`Content-Type: application/json`)",
    421: "Host header not served here (`allowed_hosts`)",
    429: "Too many requests waiting for this model; retry after `Retry-After` seconds",
    500: "Server error: a model failed to load, an engine failed",
    502: "The remote target answered with an error",
    503: "The server is full or draining (SIGTERM), a request waited too long, or a worker or "
    "remote target went away; retry after `Retry-After` seconds",
    507: "The model can never fit in the memory budget",
}
_EVERY = (400, 421, 500)
_WITH_BODY = (413, 415)
_MODELS = (404, 429, 502, 503, 507)
_RETRY = (429, 503)
# llama-server's endpoints (routes_llama.py): each names a model, which may have to load.
_LLAMA = ("/tokenize", "/detokenize", "/apply-template", "/props")


def document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        routes=app.routes,
        description="OpenAI-compatible API, llama.cpp-router model management, "
        "routing across local and remote models.",
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models = [(h.request, "validation") for h in HOT]
    models += [(m, "serialization") for h in HOT for m in (h.response, h.chunk) if m is not None]
    refs, defs = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    components.update(defs.get("$defs", {}))
    for hot in HOT:
        schema["paths"][hot.path] = {"post": _hot_operation(hot, refs)}
    components["ErrorResponse"] = _ERROR_SCHEMA
    components["AnthropicErrorResponse"] = _ANTHROPIC_ERROR_SCHEMA
    schema["components"]["securitySchemes"] = {BEARER: _BEARER_SCHEME}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            _document_errors(path, method, operation)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    scorer = components.get("EnsembleRequest", {}).get("properties", {}).get("scorer")
    if scorer is not None:  # the names this server's configuration allows
        scorer["enum"] = sorted([*app.state.ensemble.scorers, "judge"])
    app.openapi_schema = schema
    return schema


def sse_event(description: str) -> dict[str, Any]:
    """The OpenAPI content of a `text/event-stream` answer: one server-sent event whose
    `data` is described by `description`."""
    data = {"type": "string", "description": description}
    return {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}


def _hot_operation(hot: _Hot, refs: dict[Any, Any]) -> dict[str, Any]:
    body = refs[(hot.request, "validation")]
    answer = refs[(hot.response, "serialization")]
    content: dict[str, Any] = {"application/json": {"schema": answer}}
    if hot.chunk is not None:
        chunk = refs[(hot.chunk, "serialization")]["$ref"]
        content["text/event-stream"] = sse_event(
            f"A chunk as JSON (`{chunk}`); the last event's data is `[DONE]`"
        )
    return {
        "tags": ["openai"],
        "summary": hot.summary,
        "operationId": hot.path.strip("/").replace("/", "_"),
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "The answer (a stream of events when `stream` is true)",
                "content": content,
            }
        },
    }


def _document_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)  # invalid values are 400s here, as OpenAI's
    statuses = list(_EVERY)
    statuses.append(503)  # a draining server refuses every new request
    if required_scope(method.upper(), path) is not None:
        statuses += (401, 403)
        operation["security"] = [{BEARER: []}]  # /docs: "Authorize", then "Try it out"
    if method == "post":
        statuses += _WITH_BODY
    if (path.startswith("/v1/") and method == "post") or path in ("/models/load", *_LLAMA):
        statuses += _MODELS
    if path in ("/models/unload", "/admin/keys/{name}", "/v1/models/{model}"):
        statuses.append(404)
    if path == "/admin/keys" and method == "post":
        statuses.append(409)
    error: dict[str, Any] = {"$ref": REF.format(model="ErrorResponse")}
    if path.startswith("/v1/messages"):  # the route's own in Anthropic's shape, the gateway's not
        error = {"anyOf": [{"$ref": REF.format(model="AnthropicErrorResponse")}, error]}
    for status in sorted(set(statuses)):
        entry: dict[str, Any] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": error}},
        }
        if status in _RETRY:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            }
        responses.setdefault(str(status), entry)


_ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorResponse",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}
# /v1/messages' errors (routes_anthropic.py), as Anthropic's API answers them
_ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "title": "AnthropicErrorResponse",
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
