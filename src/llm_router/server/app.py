"""`create_app(settings)`: the one place the FastAPI application is assembled."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..api import Router
from ..config import Settings
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from . import errors, routes_models, routes_openai

__all__ = ["App", "create_app"]


Endpoint = Callable[[Request], Awaitable[Response]]


class App(FastAPI):
    """FastAPI, with two additions on every HTTP request:

    - Bodies over `body_limit` bytes by their Content-Length are refused with a 413 envelope
      (`parse_body` also counts the bytes of a body sent without one).
    - The routes in `hot` (chat, completions, embeddings) are called straight from here, with
      the app's own exception handlers (`errors.respond`). FastAPI's per-request stack (its
      middleware, route matching, dependency solving) costs ~0.25 ms a request here, as much
      as everything else the router does (BENCHMARKS.md). They stay registered with FastAPI,
      for the OpenAPI schema. Middleware added with `add_middleware` turns this off, so it
      applies to every route."""

    def __init__(self, *, body_limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.body_limit = body_limit
        self.hot: dict[tuple[str, str], Endpoint] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.body_limit:
                await _over_limit(int(length), self.body_limit)(scope, receive, send)
                return
            endpoint = self.hot.get((scope["method"], scope["path"]))
            if endpoint is not None and not self.user_middleware:
                scope["app"] = self
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await errors.respond(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _over_limit(length: int, limit: int) -> Response:
    message = f"request body of {length} bytes is over the limit of {limit} bytes"
    return JSONResponse(errors.envelope(message, "invalid_request_error"), 413)


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

    app = App(title="llm-runner-router", version=__version__, lifespan=lifespan,
              body_limit=settings.max_body_bytes)  # fmt: skip
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
    app.hot.update(routes_openai.HOT)

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
