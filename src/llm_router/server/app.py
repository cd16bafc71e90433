"""`create_app(settings)`: the one place the FastAPI application is assembled."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..api import Router
from ..config import Settings
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from . import errors, routes_models, routes_openai

__all__ = ["create_app"]


class BodyLimit:
    """Refuses bodies over `limit` bytes by their Content-Length with a 413 envelope. A pure
    ASGI middleware: it must not wrap `receive`, which the routes watch for disconnects."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                body = errors.envelope(
                    f"request body of {int(length)} bytes is over the limit of "
                    f"{self.limit} bytes", "invalid_request_error",
                )  # fmt: skip
                await JSONResponse(body, 413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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

    app = FastAPI(title="llm-runner-router", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.manager = core.manager
    app.state.metrics = metrics = core.metrics
    app.state.router = core.router
    app.state.started = time.time()
    app.state.generation = core.generation
    app.state.ensemble = core.ensembles
    app.state.embeddings = core.embeddings
    app.state.background = set[asyncio.Task[Any]]()
    errors.install(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_models.router)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

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

    return app
