"""The router in process (tests/inproc.py) against real HTTP upstreams served by aiohttp in the
same event loop: what a client may make the router do to a remote target (open its breaker,
send it fields it never asked for, fan out to it many times)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer

from inproc import app_client, fake_models

HELLO = [{"role": "user", "content": "Hi"}]
REPLY = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Upstream:
    """An OpenAI-compatible upstream whose behaviour the test sets: `mode` "ok", "slow" (no
    answer within the router's timeout) or "error" (500). Records every body it receives."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "error":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return web.json_response(REPLY)


@asynccontextmanager
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield up, str(server.make_url("/v1"))


def remote(target_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": target_id,
        "provider": "openai",
        "base_url": url,
        "timeout": 0.3,
        "model": "up-model",
        "health_check_interval": 0,
        **extra,
    }


async def breaker(c: httpx.AsyncClient, target: str) -> str:
    models = (await c.get("/models")).json()["data"]
    state: str = next(m for m in models if m["id"] == target)["breaker"]["state"]
    return state


async def test_long_generations_that_time_out_do_not_open_the_breaker(tmp_path: Path) -> None:
    """A client could open a remote target's breaker for everyone by asking for generations
    longer than its read timeout. Read timeouts do not count; 5xx still do."""
    async with upstream() as (up, url):
        models = [*fake_models(tmp_path, local={}), remote("box", url)]
        routes = [{"name": "auto", "targets": ["box"], "fallbacks": ["local"]}]
        async with app_client(
            tmp_path, models=models, routes=routes, breaker={"failure_threshold": 2}
        ) as c:
            up.mode = "slow"
            for _ in range(4):
                r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
                assert r.status_code == 200 and r.headers["x-llm-router-model"] == "local"
            assert await breaker(c, "box") == "closed"
            up.mode = "error"
            for _ in range(2):
                await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
            assert await breaker(c, "box") == "open"


async def test_only_known_fields_reach_a_remote_target(tmp_path: Path) -> None:
    """Unknown fields of a request are not passed on to a (paid) upstream; OpenAI's fields,
    the modelled sampling extensions and the configured `forward_fields` are."""
    async with upstream() as (up, url):
        async with app_client(
            tmp_path, models=[remote("box", url)], forward_fields=["chat_template_kwargs"]
        ) as c:
            body = {
                "model": "box",
                "messages": HELLO,
                "temperature": 0.5,
                "top_k": 5,
                "logit_bias": {"1": 2},
                "chat_template_kwargs": {"x": 1},
                "evil_field": "x" * 1000,
                "keep_alive": "1h",
                "autoload": True,
            }
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
    sent = up.bodies[-1]
    assert set(sent) == {
        "model",
        "messages",
        "temperature",
        "top_k",
        "logit_bias",
        "chat_template_kwargs",
        "stream",
    }
    assert sent["model"] == "up-model"


async def test_max_tokens_is_capped_at_the_limit_and_the_targets_context(tmp_path: Path) -> None:
    async with upstream() as (up, url):
        models = [remote("box", url, context_length=4096), remote("wide", url)]
        async with app_client(tmp_path, models=models, max_tokens_limit=8192) as c:
            for model, asked, sent in (
                ("box", 10**9, 4096),
                ("wide", 10**9, 8192),
                ("box", 100, 100),
            ):
                body = {"model": model, "messages": HELLO, "max_tokens": asked}
                assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
                assert up.bodies[-1]["max_tokens"] == sent
            await c.post("/v1/chat/completions", json={"model": "box", "messages": HELLO})
            assert "max_tokens" not in up.bodies[-1]  # unset: the upstream's default


async def test_compare_asks_each_target_once(tmp_path: Path) -> None:
    async with upstream() as (up, url):
        async with app_client(tmp_path, models=[remote("box", url), remote("box2", url)]) as c:
            body = {"targets": ["box"] * 8 + ["box2"] * 8, "messages": HELLO}
            r = await c.post("/v1/compare", json=body)
            assert r.status_code == 200 and len(r.json()["data"]) == 2
            assert len(up.bodies) == 2
            r = await c.post("/v1/compare", json={"targets": ["box", "box"], "messages": HELLO})
            assert r.status_code == 400 and r.json()["error"]["param"] == "targets"


async def test_embeddings_go_through_the_targets_breaker(tmp_path: Path) -> None:
    """Embeddings pass the dispatcher like chats: a failing remote target opens its breaker
    for them, and is then refused at once, without being asked."""
    async with upstream() as (up, url):
        async with app_client(
            tmp_path, models=[remote("box", url)], breaker={"failure_threshold": 2, "cooldown": 60}
        ) as c:
            up.mode = "error"
            body = {"model": "box", "input": ["a cat"]}
            for _ in range(2):
                assert (await c.post("/v1/embeddings", json=body)).status_code == 502
            assert await breaker(c, "box") == "open"
            seen = len(up.bodies)
            r = await c.post("/v1/embeddings", json=body)
            assert r.status_code == 503 and "retry-after" in r.headers
            assert len(up.bodies) == seen  # not even asked


async def test_a_remote_targets_aliases_name_it(tmp_path: Path) -> None:
    """`aliases` on a remote target were accepted, checked for uniqueness, and ignored: a
    404 for `model: "gpt-4o-mini"`, and `GET /models` listed none (found from outside)."""
    async with upstream() as (up, url):
        models = [remote("box", url, aliases=["gpt-4o-mini", "boxy"])]
        async with app_client(tmp_path, models=models) as c:
            for name in ("gpt-4o-mini", "boxy", "box"):
                body = {"model": name, "messages": HELLO}
                r = await c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                assert r.headers["x-llm-router-model"] == "box"
            assert [b["model"] for b in up.bodies] == ["up-model"] * 3
            listed = (await c.get("/models")).json()["data"]
            assert next(m for m in listed if m["id"] == "box")["aliases"] == ["gpt-4o-mini", "boxy"]
            missing = await c.post(
                "/v1/chat/completions", json={"model": "nope", "messages": HELLO}
            )
            assert missing.status_code == 404
