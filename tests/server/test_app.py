"""`App`, in process: the hot routes are served without FastAPI's stack but answer errors as
every other route does, the body limit holds for every route, and middleware added to the app
covers the hot routes too (so a CORS or auth layer can never be skipped by them)."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_router.errors import ModelNotFound, QueueFull
from llm_router.server import errors
from llm_router.server.app import App
from openai_schema import validate


async def hot(request: Request) -> Response:
    body = await request.json()
    if body.get("raise") == "missing":
        raise ModelNotFound("The model 'x' does not exist", param="model")
    if body.get("raise") == "full":
        raise QueueFull("the queue is full", retry_after=3)
    if body.get("raise") == "bug":
        raise RuntimeError("a bug")
    return JSONResponse({"hot": True, "app": request.app is app_of(request)})


def app_of(request: Request) -> object:
    return request.scope["app"]


def make_app(**kwargs: object) -> App:
    app = App(body_limit=1024, **kwargs)  # type: ignore[arg-type]
    errors.install(app)
    app.post("/v1/hot")(hot)  # registered with FastAPI too, as the real routes are
    app.hot[("POST", "/v1/hot")] = hot
    return app


def client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_a_hot_route_answers_and_its_errors_are_envelopes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(make_app()) as c:
        r = await c.post("/v1/hot", json={})
        assert r.status_code == 200 and r.json() == {"hot": True, "app": True}
        r = await c.post("/v1/hot", json={"raise": "missing"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        validate("ErrorResponse", r.json())
        r = await c.post("/v1/hot", json={"raise": "full"})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        with caplog.at_level(logging.ERROR):
            r = await c.post("/v1/hot", json={"raise": "bug"})
        assert r.status_code == 500 and r.json()["error"]["message"] == "internal server error"
        assert "a bug" in caplog.text  # logged for the operator, not told to the client
        # other methods on the path are FastAPI's: 405, as an envelope
        r = await c.get("/v1/hot")
        assert r.status_code == 405
        validate("ErrorResponse", r.json())


async def test_the_body_limit_holds_for_hot_and_other_routes() -> None:
    async with client(make_app()) as c:
        for path in ("/v1/hot", "/v1/other"):
            r = await c.post(path, content=b"x" * 2048)
            assert r.status_code == 413
            assert "over the limit of 1024 bytes" in r.json()["error"]["message"]


async def test_middleware_added_to_the_app_covers_the_hot_routes() -> None:
    class Stamp:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def stamped(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
                await send(message)

            await self.app(scope, receive, stamped)

    app = make_app()
    app.add_middleware(Stamp)
    async with client(app) as c:
        r = await c.post("/v1/hot", json={})
        assert r.status_code == 200 and r.json()["hot"] is True
        assert r.headers["x-stamp"] == "1"
