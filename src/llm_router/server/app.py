"""`create_app(settings)`: the one place the HTTP application is assembled.

Every request, whatever its route, passes the same stack (outermost first): its id, the Host
check, its trace span and log line (server/front.py), CORS, the drain and body guards, then
the gateway's auth and limits (`install_guards`). Then the hot OpenAI routes (plain Starlette
routes, routes_openai.py) go to their handler through the app's exception handlers
(server/errors.py), and every other route through FastAPI's own stack (asgi.ServerApp)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match

from .. import __version__
from ..api import Router
from ..config import Settings
from ..errors import ConfigError
from ..gateway.service import Gateway
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from ..protocol.responses_items import OutputItems
from ..reload import ConfigSource
from ..tracing import Tracing
from . import (
    errors,
    openapi,
    routes_admin,
    routes_anthropic,
    routes_dashboard,
    routes_docs,
    routes_llama,
    routes_models,
    routes_openai,
    routes_responses,
    routes_ws,
)
from .asgi import BodyGuard, ServerApp, UnexpectedErrors
from .drain import Drain, DrainGuard
from .front import Front
from .gateway import GatewayMiddleware, KeyMetrics, Refusals
from .reload import Reloader

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    manager: ModelManager | None = None,
    *,
    source: ConfigSource | None = None,
    parent: int | None = None,
) -> ServerApp:
    """`source`: where `settings` were read, for reloads (server/reload.py; None: no reload);
    `parent`: the pid of `serve --workers N`'s parent, told of reloads."""
    core = Router(settings=settings, manager=manager)  # the parts, assembled once (api.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await gateway.start(settings.host)  # keys, limits, usage; refuses an open public bind
            await core.start()  # the server process then tunes its collector (run.tune_gc)
        except ConfigError as exc:  # a route named like a model found: run_one says it
            app.state.refused = exc
            raise
        if settings.watch_config:
            app.state.reloader.watch()
        try:
            yield
        finally:
            await app.state.reloader.close()
            for task in list(app.state.background):
                task.cancel()
            await core.close()
            await gateway.close()  # writes the usage gathered since the last flush
            if app.state.tracing is not None:
                await asyncio.to_thread(app.state.tracing.shutdown)  # exports what is left

    app = ServerApp(
        title="llm-runner-router",
        version=__version__,
        lifespan=lifespan,
        hot=routes_openai.HOT,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: routes_docs serves them
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tracing = Tracing.from_settings(settings)  # None unless an endpoint is set
    app.state.manager = core.manager
    app.state.metrics = metrics = core.metrics
    app.state.dispatcher = core.dispatcher
    app.state.started = time.time()
    app.state.generation = core.generation
    app.state.ensemble = core.ensembles
    app.state.embeddings = core.embeddings
    app.state.llama = core.llama
    app.state.background = set[asyncio.Task[Any]]()
    app.state.gateway = gateway = Gateway(settings)
    app.state.response_items = OutputItems()  # for /v1/responses' `item_reference` inputs
    app.state.reloader = Reloader(core, gateway, app.state, source, parent)
    errors.install(app)
    app.include_router(routes_openai.routes)
    app.include_router(routes_responses.routes)  # OpenAI's Responses API, over chat
    app.include_router(routes_anthropic.routes)  # Anthropic's Messages API, over chat
    app.include_router(routes_admin.routes)
    app.include_router(routes_models.routes)
    app.include_router(routes_llama.routes)
    app.include_router(routes_dashboard.routes)
    app.include_router(routes_ws.routes)  # /v1/ws: the same requests, over one WebSocket
    routes_docs.install(app)  # /docs and /redoc, their assets from the package

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["health"])
    @app.get("/v1/health", tags=["health"], include_in_schema=False)  # llama-server's too
    async def health() -> dict[str, Any]:
        states = core.manager.states()
        return {
            "status": "ok",
            "pid": os.getpid(),  # which process answered, behind `serve --workers N`
            "models": len(states),
            "loaded": sum(s.status == Status.LOADED for s in states),
        }

    install_guards(app, settings)
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]
    return app


def install_guards(app: FastAPI, settings: Settings) -> None:
    """The guards every request passes (added innermost first: the last is outermost)."""
    app.add_middleware(UnexpectedErrors)
    refusals = None
    if gateway := getattr(app.state, "gateway", None):  # API keys, scopes, limits, usage
        refusals = Refusals(gateway, KeyMetrics(app.state.metrics.registry))
        app.add_middleware(
            GatewayMiddleware,
            gateway=gateway,
            resolve=app.state.dispatcher.resolve,
            metrics=refusals.metrics,
            served=lambda scope: any(
                r.matches(scope)[0] is not Match.NONE for r in app.router.routes
            ),
            refusals=refusals,
        )
    app.add_middleware(BodyGuard, limit=settings.max_body_bytes, timeout=settings.body_timeout)
    app.state.drain = Drain()  # SIGTERM: 503s and a wait for requests in flight (run.py)
    app.add_middleware(
        DrainGuard,
        drain=app.state.drain,
        refused=refusals.drained if refusals is not None else None,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],  # DELETE: /admin/keys/{name}
            # any header a page asks for (echoed, so `authorization` is named, as the Fetch
            # standard wants): the origins are the allow-list, and a list of headers kept
            # pages of those origins from sending X-Api-Key, Cache-Control and the openai
            # SDK's x-stainless-* ones, while anything outside a browser sends what it likes
            allow_headers=["*"],
            expose_headers=[
                "x-llm-router-model",
                "x-llm-router-route",
                "x-llm-router-cache",
                "x-request-id",
                "x-should-retry",  # the openai SDKs read it, with retry-after
                "retry-after",
                *(
                    f"x-ratelimit-{what}-{kind}"
                    for kind in ("requests", "tokens")
                    for what in ("limit", "remaining", "reset")
                ),
            ],
        )
    # request id, Host check, trace span (when configured) and log line: one layer (front.py)
    app.add_middleware(
        Front, **Front.options(settings, getattr(app.state, "tracing", None), app.state.metrics)
    )
