"""llama.cpp-router compatible model management: `GET /models` (with status), load, unload,
and `GET /models/events` (SSE of status changes). Fields are added to llama-server's shape,
never renamed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool

from ..errors import BadRequest
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import ModelSnapshot
from ..protocol import MAX_MODEL_NAME
from ..routing.dispatcher import Dispatcher
from ..routing.targets import Target
from .bodies import JSONRoute
from .gateway import key_still_valid, visible
from .sse import events_response

routes = APIRouter(tags=["models"], route_class=JSONRoute)


class ModelRef(BaseModel):
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)


class UnloadRequest(ModelRef):
    force: StrictBool = Field(False, description="Unload a pinned model too.")


def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def describe(snap: ModelSnapshot) -> dict[str, Any]:
    """A model in llama.cpp router's `GET /models` shape (fields added, never renamed)."""
    source, info = snap.source, snap.source.info
    status: dict[str, Any] = {"value": snap.status.value}
    if snap.error:  # the file's name, not where it is (ModelSource.public)
        status.update(error=snap.error, failed=True)
    if snap.queue_position is not None:
        status["queue_position"] = snap.queue_position
    if snap.draining:
        status["draining"] = True
    output = "embedding" if source.task == "embed" else "text"
    return {
        "id": snap.id,
        "aliases": source.config.aliases,
        "tags": [],
        "object": "model",
        "owned_by": "llm-runner-router",
        "created": source.identity.created,
        "status": status,
        "architecture": {"input_modalities": ["text"], "output_modalities": [output]},
        "source": source.origin,
        "can_remove": False,
        "path": source.path.name,  # not the server's file system layout
        "format": source.format,
        "engine": source.engine,
        "task": source.task,
        "size_bytes": source.identity.size_bytes,
        "model_architecture": info.architecture if info else None,
        "parameters": info.parameters if info else None,
        "quantization": info.quantization if info else None,
        "context_length": info.context_length if info else None,
        "dimensions": info.embedding_length if info and info.task == "embed" else None,
        "has_chat_template": bool(info and info.chat_template) or None,
        "pinned": source.config.pin,
        "memory_bytes": snap.memory_bytes,
        "memory_estimate_bytes": snap.estimate_bytes,
        "last_used": snap.last_used,
        "loaded_at": snap.loaded_at,
        "load_seconds": snap.load_seconds,
        "active_requests": snap.active,
        "queued_requests": snap.queued,
        "runtime": snap.runtime,
        "keep_alive_until": snap.unload_at,
    }


def describe_remote(target: Target, router: Dispatcher, started: int) -> dict[str, Any]:
    cfg = target.config
    task = cfg.task or "generate"  # as its configuration says: the upstream is not asked
    return {
        "id": target.id,
        "aliases": cfg.aliases,
        "tags": [],
        "object": "model",
        "owned_by": "llm-runner-router",
        "created": started,
        "status": _remote_status(target),
        "architecture": {
            "input_modalities": ["text"],
            "output_modalities": ["embedding" if task == "embed" else "text"],
        },
        "source": "remote",
        "can_remove": False,
        "provider": cfg.provider,
        "upstream_model": cfg.model or cfg.id,
        "task": task,
        "quality": cfg.quality,
        "cost": cfg.cost.model_dump(),
        "context_length": cfg.context_length,
        **router.describe(target),
    }


@routes.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    routing: Dispatcher = request.app.state.dispatcher
    manager.refresh()
    started = int(request.app.state.started)
    data = []
    for snap in manager.snapshots():
        entry = describe(snap)
        entry.update(routing.describe(routing.target(snap.id)))
        data.append(entry)
    data += [describe_remote(t, routing, started) for t in routing.remotes()]
    return {
        "object": "list",
        "data": [m for m in data if visible(request, m["id"])],  # the key's allow-list
        "routes": [
            routing.route_status(r.name) for r in routing.routes() if visible(request, r.name)
        ],
        "memory_budget_bytes": manager.budget,
        "memory_used_bytes": manager.memory_used(),
        "memory_over_budget": manager.over_budget,
        "queued_requests": manager.waiting,
    }


def _local(request: Request, name: str, what: str) -> str:
    """The id of the local model called `name`. Raises ModelNotFound, or BadRequest for a
    remote target or a route (listed by `GET /models` too, but nothing here loads them)."""
    routing: Dispatcher = request.app.state.dispatcher
    return routing.local(name, what).id


@routes.post("/models/load")
async def load(ref: ModelRef, request: Request) -> dict[str, Any]:
    state = _manager(request).request_load(_local(request, ref.model, "/models/load"))
    return {"success": True, "model": state.id, "status": state.status.value}


@routes.post("/models/unload")
async def unload(ref: UnloadRequest, request: Request) -> dict[str, Any]:
    """Unload a model once its requests in flight end (up to `unload_grace`). A pinned model
    needs `force`."""
    manager = _manager(request)
    state = manager.resolve(_local(request, ref.model, "/models/unload"))
    if state.source.config.pin and not ref.force:
        raise BadRequest(
            f"model '{state.id}' is pinned; unload it with \"force\": true", param="force"
        )
    task = asyncio.create_task(manager.unload(state.id))
    request.app.state.background.add(task)
    task.add_done_callback(request.app.state.background.discard)
    return {"success": True, "model": state.id}


@routes.get(
    "/models/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events, one JSON object each: `event` (added, "
            "waiting, loading, loaded, unloading, unloaded, error, removed), `model`, "
            "`time`, and the event's details",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"type": "string"}},
                    }
                }
            },
        }
    },
)
async def events(request: Request) -> Any:
    """Events of the models the request's API key may use (all, without an allow-list)."""
    manager = _manager(request)
    queue = manager.events.subscribe(*_holder(request))

    async def stream() -> AsyncIterator[str]:
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    event = None
                if not key_still_valid(request):  # revoked meanwhile: within about a second
                    return
                if event is not None and visible(request, str(event.get("model", ""))):
                    yield json.dumps(event)
        finally:
            manager.events.unsubscribe(queue)

    return await events_response(stream())


def _holder(request: Request) -> tuple[str | None, int | None]:
    """Who holds an events subscription, and the most it may hold (lifecycle's EventBus): an
    API key, by its name, with its max_concurrent; no one for the master key (the operator's,
    the dashboard's) and without a key (auth off: loopback clients, all alike)."""
    key = getattr(request.state, "api_key", None)
    if key is None or key.hash in request.app.state.gateway.masters:
        return None, None
    return key.name, key.max_concurrent


def _remote_status(target: Target) -> dict[str, Any]:
    """ "loaded" while its breaker lets requests through, else "error" and why (the README's
    "error + message", as a local model's)."""
    b = target.breaker.snapshot()
    if b.state == "closed":
        return {"value": "loaded"}
    if b.state == "half_open":
        why = "failing: its circuit breaker is half-open, trying a request to see if it answers"
    else:
        wait = f"; tried again in {b.retry_in:.0f} s" if b.retry_in is not None else ""
        why = f"failing: its circuit breaker is open after repeated failures{wait}"
    return {"value": "error", "error": why}
