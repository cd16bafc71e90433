"""A streaming client that leaves before the first event: the stream had not begun, and no
one watched for the disconnect until the first token came. A remote target that had not
answered was held for its whole timeout and then its route's fallback was called for no
one; a request queued for a busy local model was prefilled and decoded for no one minutes
later (found from outside). Now it ends at once, as a non-streaming request does: a 499, the
upstream's connection closed, no fallback, the queue left."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.types import Message

from inproc import InProcessPool, fake_models
from llm_router.config import Settings
from llm_router.lifecycle.manager import ModelManager
from llm_router.server.app import create_app

HELLO = [{"role": "user", "content": "Hi"}]
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
    "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
}


class Upstreams:
    """Two OpenAI-compatible upstreams: `/silent` never answers (not even its headers), and
    records when its connection closed; `/spare` records every request it gets."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.closed = asyncio.Event()
        self.spare: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "m"}]})
        if request.path.startswith("/spare"):
            self.spare.append(request.path)
            return web.json_response({"error": {"message": "should not be asked"}}, status=500)
        self.waiting.set()
        try:
            await asyncio.sleep(3600)
        finally:  # cancelled by aiohttp when the router closes the connection
            self.closed.set()
        raise AssertionError


@asynccontextmanager
async def upstreams() -> AsyncIterator[tuple[Upstreams, str]]:
    up = Upstreams()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    async with TestServer(app, host="127.0.0.1", handler_cancellation=True) as server:
        yield up, str(server.make_url(""))


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        models_dir=tmp_path,
        watch_interval=0,
        provision_default_models=False,
        spare_workers=False,
        **extra,
    )


async def until(ready: Callable[[], bool]) -> None:
    for _ in range(1000):
        if ready():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never ready")


async def stream_then_leave(
    app: Any, body: dict[str, Any], ready: Callable[[], bool]
) -> list[Message]:
    """POST `body` (streaming); once `ready()` the client leaves. What the app sent."""
    messages = iter([{"type": "http.request", "body": json.dumps(body).encode()}])

    async def receive() -> Message:
        for message in messages:
            return message
        await until(ready)
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(SCOPE, receive, send), 10)
    return sent


def statuses(sent: list[Message]) -> list[int]:
    return [m["status"] for m in sent if m["type"] == "http.response.start"]


async def test_a_remote_target_is_let_go_and_no_fallback_called(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with upstreams() as (up, url):
        remote = {"provider": "openai", "model": "m", "health_check_interval": 0, "timeout": 60}
        models = [
            {**remote, "id": "silent", "base_url": url + "/silent/v1"},
            {**remote, "id": "spare", "base_url": url + "/spare/v1"},
        ]
        routes = [{"name": "auto", "targets": ["silent"], "fallbacks": ["spare"]}]
        config = settings(tmp_path, models=models, routes=routes)
        app = create_app(config, ModelManager(config, pool=InProcessPool()))
        body = {"model": "auto", "messages": HELLO, "stream": True}
        async with app.router.lifespan_context(app):
            with caplog.at_level(logging.INFO, logger="llm_router.requests"):
                sent = await stream_then_leave(app, body, up.waiting.is_set)
            await asyncio.wait_for(up.closed.wait(), 10)  # the upstream's connection closed
            assert statuses(sent) == [499]
            assert up.spare == []  # no fallback for no one
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
            ) as c:
                metrics = (await c.get("/metrics")).text
    assert 'llm_router_target_in_flight_requests{model="silent"} 0.0' in metrics
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_router.requests"]
    # (the scrape's own line too, when an earlier test left the logger at INFO)
    lines = [line for line in lines if "/v1/chat/completions" in line]
    assert len(lines) == 1 and " 499 " in lines[0], lines


async def test_a_request_queued_for_a_busy_model_leaves_the_queue(tmp_path: Path) -> None:
    models = fake_models(tmp_path, slow={"token_seconds": 0.005, "parallel": 1})
    config = settings(tmp_path, models=models)
    manager = ModelManager(config, pool=InProcessPool())
    app = create_app(config, manager)
    long = {"model": "slow", "messages": HELLO, "max_tokens": 100_000}
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as c:
            busy = asyncio.create_task(c.post("/v1/chat/completions", json=long))
            try:
                await until(lambda: manager.resolve("slow").active > 0)  # the only slot taken
                queued = {**long, "stream": True, "max_tokens": 5}
                sent = await stream_then_leave(
                    app, queued, lambda: bool(manager.resolve("slow").waiters)
                )
                state = manager.resolve("slow")
                assert statuses(sent) == [499]
                assert not state.waiters and state.active == 1  # left the queue; the other runs
            finally:
                busy.cancel()
                await asyncio.gather(busy, return_exceptions=True)
