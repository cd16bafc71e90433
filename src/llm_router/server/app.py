"""`create_app(settings)`: the one place the HTTP application is assembled.

Every request, whatever its route, passes the same stack (outermost first): the Host check,
CORS and the body guard (server/asgi.py), then any middleware added later with
`app.add_middleware` (auth and limits go there). Then the hot OpenAI routes (plain Starlette
routes, routes_openai.py) go to their handler through the app's exception handlers
(server/errors.py), and every other route through FastAPI's own stack (asgi.ServerApp)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..api import Router
from ..config import Settings
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from . import errors, openapi, routes_llama, routes_models, routes_openai
from .asgi import BodyGuard, HostGuard, ServerApp, UnexpectedErrors

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, manager: ModelManager | None = None) -> FastAPI:
    core = Router(settings=settings, manager=manager)  # the parts, assembled once (api.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.start()
        # What is alive now (modules, the app, settings) lives as long as the server; frozen,
        # a full collection under load walks only what requests made (see BENCHMARKS.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for task in list(app.state.background):
                task.cancel()
            await core.close()

    app = ServerApp(
        title="llm-runner-router", version=__version__, lifespan=lifespan, hot=routes_openai.HOT
    )
    app.state.settings = settings
    app.state.manager = core.manager
    app.state.metrics = metrics = core.metrics
    app.state.dispatcher = core.dispatcher
    app.state.started = time.time()
    app.state.generation = core.generation
    app.state.ensemble = core.ensembles
    app.state.embeddings = core.embeddings
    app.state.llama = core.llama
    app.state.background = set[asyncio.Task[Any]]()
    errors.install(app)
    app.include_router(routes_openai.routes)
    app.include_router(routes_models.routes)
    app.include_router(routes_llama.routes)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        states = core.manager.states()
        return {
            "status": "ok",
            "models": len(states),
            "loaded": sum(s.status == Status.LOADED for s in states),
        }

    install_guards(app, settings)
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]
    return app


def install_guards(app: FastAPI, settings: Settings) -> None:
    """The guards every request passes (added innermost first: the last is outermost)."""
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(BodyGuard, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=["x-llm-router-model", "x-llm-router-route", "retry-after"],
        )
    app.add_middleware(HostGuard, allowed=settings.allowed_hosts)
