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
import pytest
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
    answer within the router's timeout), "pings" (a stream of keep-alives only), "error"
    (500), "error200" (an error envelope with status 200), "429:N" or "503:N" (with
    Retry-After N), "503" (with none). Records every body it receives."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.slow_for = 2.0  # seconds "slow" takes to answer
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":  # /models: a slow upstream is busy, not dead
            return web.json_response({"object": "list", "data": [{"id": "up-model"}]})
        self.bodies.append(json.loads(await request.read()))
        if self.mode == "slow":
            await asyncio.sleep(self.slow_for)
        if self.mode == "pings":  # a stream of keep-alives (a gateway queueing), no token
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            await response.write(f"data: {json.dumps(role)}\n\n".encode())
            while True:
                await response.write(b": ping\n\n")
                await asyncio.sleep(0.05)
        if self.mode == "error":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if self.mode == "503":  # down, and no word of when it is back
            return web.json_response({"error": {"message": "down"}}, status=503)
        if self.mode.startswith("503:"):  # down for now, back after the seconds given
            headers = {"Retry-After": self.mode[4:]}
            return web.json_response({"error": {"message": "down"}}, status=503, headers=headers)
        if self.mode.startswith("429:"):  # rate limited, retry after the seconds given
            headers = {"Retry-After": self.mode[4:]}
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers=headers
            )
        if self.mode == "error200":  # an error envelope with a 200 (some proxies do this)
            return web.json_response({"error": {"message": "overloaded"}})
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
    longer than its read timeout. Read timeouts of a target that answers its health check do
    not count; 5xx still do."""
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


async def test_a_route_whose_targets_all_fail_says_each_failure(tmp_path: Path) -> None:
    """The answer named only the last target's failure, and no x-llm-router-route said what
    was tried: now the message lists each target's failure and the header the attempts."""
    async with upstream() as (up, url), upstream() as (slow, slow_url):
        up.mode, slow.mode = "error", "slow"
        models = [remote("broken", url, quality=0.9), remote("hanger", slow_url)]
        routes = [{"name": "auto", "strategy": "quality-first", "targets": ["broken", "hanger"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
    message = r.json()["error"]["message"]
    assert r.status_code == 503, r.text  # the last failure's status (a timeout)
    assert message.startswith("no target of 'auto' could answer")
    assert "broken: upstream broken failed (HTTP 500)" in message
    assert "hanger: upstream hanger timed out" in message
    tried = r.headers["x-llm-router-route"]
    assert "route=auto" in tried and "broken: UpstreamError; hanger: UpstreamTimeout" in tried


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
    for them, and is then refused at once, without being asked, chats to it by name too."""
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
            # a chat to it by name: the same rule (it went to the upstream; found from outside)
            chat = await c.post("/v1/chat/completions", json={"model": "box", "messages": HELLO})
            assert chat.status_code == 503 and "breaker is open" in chat.text
            assert int(chat.headers["retry-after"]) > 1
            assert len(up.bodies) == seen


async def test_an_open_breakers_retry_after_is_rounded_up(tmp_path: Path) -> None:
    """Retry-After was the breaker's wait rounded to the nearest second (9 of 9.06 s): a
    client that waited that long was refused again. It is rounded up."""
    async with upstream() as (up, url):
        breaker_settings = {"failure_threshold": 1, "cooldown": 2.45}
        async with app_client(tmp_path, models=[remote("box", url)], breaker=breaker_settings) as c:
            up.mode = "error"
            body = {"model": "box", "messages": HELLO}
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 502
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.headers


async def test_a_remote_target_is_sent_openais_embedding_fields_only(tmp_path: Path) -> None:
    """Every field of the body went upstream (`keep_alive`, `cache`: unknown to OpenAI's
    API, which refuses them); now OpenAI's and `forward_fields`, as for chats."""
    async with upstream() as (up, url):
        models = [remote("box", url)]
        async with app_client(tmp_path, models=models, forward_fields=["truncate"]) as c:
            body = {"model": "box", "input": ["a cat"], "dimensions": 8, "user": "u"}
            extra = {"keep_alive": "5m", "cache": False, "truncate": True, "autoload": True}
            await c.post("/v1/embeddings", json={**body, **extra})  # the stub makes no vectors
            sent = up.bodies[-1]
            assert set(sent) == {
                "model",
                "input",
                "dimensions",
                "user",
                "truncate",
                "encoding_format",
            }
            assert sent["model"] == "up-model"


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


async def test_models_says_which_remote_targets_make_embeddings(tmp_path: Path) -> None:
    """Every remote target was listed as a text model, so the dashboard offered a remote
    embedding model for chat and never for embeddings (found from outside)."""
    async with upstream() as (_, url):
        models = [remote("chat", url), remote("vectors", url, task="embed")]
        async with app_client(tmp_path, models=models) as c:
            listed = {m["id"]: m for m in (await c.get("/models")).json()["data"]}
    assert listed["chat"]["task"] == "generate"
    assert listed["chat"]["architecture"]["output_modalities"] == ["text"]
    assert listed["vectors"]["task"] == "embed"
    assert listed["vectors"]["architecture"]["output_modalities"] == ["embedding"]


async def test_loading_or_unloading_a_remote_target_or_route_is_a_400_saying_so(
    tmp_path: Path,
) -> None:
    """`POST /models/unload` of a remote target that `GET /models` lists as loaded answered
    404 "does not exist" (found from outside); a local model's load and unload go on."""
    async with upstream() as (_, url):
        models = [*fake_models(tmp_path, chat={}), remote("box", url, aliases=["boxy"])]
        routes = [{"name": "auto", "targets": ["chat", "box"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            for path in ("/models/load", "/models/unload"):
                for name, kind in (
                    ("box", "a remote target"),
                    ("boxy", "a remote target"),
                    ("auto", "a route"),
                ):
                    r = await c.post(path, json={"model": name})
                    assert r.status_code == 400, r.text
                    error = r.json()["error"]
                    assert error["message"].startswith(f"'{name}' is {kind}; {path} needs a local")
                    assert error["param"] == "model"
                missing = await c.post(path, json={"model": "nope"})
                assert missing.status_code == 404
            assert (await c.post("/models/load", json={"model": "chat"})).status_code == 200
            assert (await c.post("/models/unload", json={"model": "chat"})).status_code == 200


async def test_a_route_with_no_target_that_exists_does_not_break_the_listing(
    tmp_path: Path,
) -> None:
    """Its targets may be model files still to come, so it loads; its requests are a 500 that
    says why, and `GET /models` lists it with that error beside every other model (it was a
    500 for the whole listing, the dashboard's and `ps`'s too)."""
    async with upstream() as (_, url):
        models = [remote("box", url)]
        routes = [{"name": "later", "targets": ["not-yet"]}, {"name": "r", "targets": ["box"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            listing = await c.get("/models")
            assert listing.status_code == 200, listing.text
            rows = {m["name"]: m for m in listing.json()["routes"]}
            assert rows["r"]["status"]["order"] == ["box"]
            later = rows["later"]["status"]
            assert later["order"] == [] and later["breakers"] == {"not-yet": "missing"}
            assert "no target that exists" in later["error"]
            r = await c.post("/v1/chat/completions", json={"model": "later", "messages": HELLO})
            assert r.status_code == 500 and "no target that exists" in r.json()["error"]["message"]
            ok = await c.post("/v1/chat/completions", json={"model": "r", "messages": HELLO})
            assert ok.status_code == 200


async def test_an_error_answered_with_200_is_a_failure_not_an_empty_answer(tmp_path: Path) -> None:
    """It was a 200 with empty content, cached, and never fell back (found from outside)."""
    async with upstream() as (up, url), upstream() as (_, other_url):
        models = [remote("box", url), remote("spare", other_url)]
        routes = [{"name": "auto", "targets": ["box"], "fallbacks": ["spare"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            up.mode = "error200"
            body = {"model": "box", "messages": HELLO, "temperature": 0}
            direct = await c.post("/v1/chat/completions", json=body)
            assert direct.status_code == 502, direct.text
            assert "answered 200 with an error: overloaded" in direct.json()["error"]["message"]
            routed = await c.post("/v1/chat/completions", json={**body, "model": "auto"})
            assert routed.status_code == 200 and routed.headers["x-llm-router-model"] == "spare"
            up.mode = "ok"  # nothing of the failure was cached
            again = await c.post("/v1/chat/completions", json=body)
            assert again.status_code == 200 and again.headers["x-llm-router-cache"] == "miss"
            assert again.json()["choices"][0]["message"]["content"] == "hello"


async def test_a_prompt_too_long_for_every_target_is_the_clients_to_shorten(
    tmp_path: Path,
) -> None:
    """A 400 context_length_exceeded, not a 503 "server busy" the OpenAI client retries."""
    async with upstream() as (up, url):
        models = [remote("small", url, context_length=20)]
        routes = [{"name": "auto", "targets": ["small"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            long = [{"role": "user", "content": "word " * 200}]
            r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": long})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
            assert "small: context 20 tokens" in error["message"]
            assert up.bodies == []
            ok = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
            assert ok.status_code == 200


async def test_every_breaker_open_says_so_and_when_to_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 503 names the open breakers (it said "(none)") and its Retry-After is the time
    left before one lets a request through, not the whole cooldown; `GET /models` says why
    the target is in error, and the log that its breaker opened (neither said a word)."""
    async with upstream() as (up, url):
        models = [remote("box", url)]
        routes = [{"name": "auto", "targets": ["box"]}]
        breaker_settings = {"failure_threshold": 1, "cooldown": 30}
        async with app_client(
            tmp_path, models=models, routes=routes, breaker=breaker_settings
        ) as c:
            up.mode = "error"
            body = {"model": "auto", "messages": HELLO}
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 502
            await asyncio.sleep(2.2)
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 503
            assert "(box: breaker open)" in r.json()["error"]["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 28
            listed = next(m for m in (await c.get("/models")).json()["data"] if m["id"] == "box")
            assert listed["status"]["value"] == "error"
            assert "circuit breaker is open" in listed["status"]["error"]
            assert "target box: circuit breaker open" in caplog.text


async def test_retries_ask_the_same_target_again_with_backoff(tmp_path: Path) -> None:
    """`retries: 2` on a route of one failing target asks it three times (it asked once: the
    retries only capped how many different targets were tried), and counts two retries."""
    async with upstream() as (up, url):
        models = [remote("box", url)]
        routes = [{"name": "auto", "targets": ["box"], "retries": 2, "backoff": 0.01}]
        async with app_client(
            tmp_path, models=models, routes=routes, breaker={"failure_threshold": 10}
        ) as c:
            up.mode = "error"
            r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
            assert r.status_code == 502
            assert len(up.bodies) == 3
            metrics = (await c.get("/metrics")).text
            assert 'llm_router_retries_total{route="auto",target="box"} 2.0' in metrics
            up.mode = "ok"  # a retry that succeeds is the answer
            up.bodies.clear()
            r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
            assert r.status_code == 200 and len(up.bodies) == 1


async def test_an_ensemble_whose_every_target_fails_is_not_the_clients_fault(
    tmp_path: Path,
) -> None:
    """It was a 400 on `targets`; upstream failures are the upstreams' (a 502 naming each
    target's reason); only targets that all refuse the request make it a 400."""
    async with upstream() as (one, url_one), upstream() as (two, url_two):
        models = [remote("a", url_one), remote("b", url_two)]
        async with app_client(tmp_path, models=models) as c:
            one.mode = two.mode = "error"
            body = {"targets": ["a", "b"], "messages": HELLO}
            r = await c.post("/v1/ensemble", json=body)
            assert r.status_code == 502, r.text
            message = r.json()["error"]["message"]
            assert message.startswith("no target answered: a: ") and "; b: " in message
            refused = await c.post("/v1/ensemble", json={**body, "targets": ["a", "nope"]})
            assert refused.status_code == 404  # an unknown target, before any work
            negative = await c.post("/v1/ensemble", json={**body, "weights": {"a": -1}})
            assert negative.status_code == 400 and "weights" in str(negative.json()["error"])


async def test_when_every_target_is_rate_limited_the_soonest_retry_after_is_said(
    tmp_path: Path,
) -> None:
    """The request's 429 carries the shortest wait any target asked for (it was the last
    target's, whatever the others said)."""
    async with upstream() as (one, url_one), upstream() as (two, url_two):
        models = [remote("a", url_one), remote("b", url_two)]
        routes = [{"name": "auto", "strategy": "round-robin", "targets": ["a", "b"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            one.mode, two.mode = "429:2", "429:9"
            for _ in range(2):  # whichever the strategy asks first
                r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
                assert r.status_code == 429 and r.headers["retry-after"] == "2", r.headers


async def test_a_target_that_said_429_rests_for_its_retry_after(tmp_path: Path) -> None:
    """A route asked a rate-limited target first on every request, each paying its round
    trip before the fallback (found from outside). It is left out for its Retry-After, and
    its breaker does not count the 429s."""
    async with upstream() as (limited, url_one), upstream() as (_spare, url_two):
        models = [remote("a", url_one), remote("b", url_two)]
        routes = [{"name": "auto", "targets": ["a"], "fallbacks": ["b"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            limited.mode = "429:30"
            for _ in range(4):
                r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
                assert r.status_code == 200 and r.headers["x-llm-router-model"] == "b"
            assert len(limited.bodies) == 1, "asked again while it rests"
            assert "a: rate limited" in r.headers["x-llm-router-route"]
            assert await breaker(c, "a") == "closed"
            direct = await c.post("/v1/chat/completions", json={"model": "a", "messages": HELLO})
            assert direct.status_code == 429  # asked by name: the upstream answers for itself


async def test_a_target_that_said_503_with_a_retry_after_rests_for_it(tmp_path: Path) -> None:
    """A draining (or overloaded) upstream answers 503 with a Retry-After: its breaker counted
    them, opened, and refused for its whole cooldown after the upstream was back (found from
    outside: a model host's restart). It rests for its Retry-After instead, as after a 429;
    a 503 that says no wait still counts against it."""
    async with upstream() as (draining, url_one), upstream() as (_spare, url_two):
        models = [remote("a", url_one), remote("b", url_two)]
        routes = [
            {"name": "auto", "targets": ["a"], "fallbacks": ["b"]},
            {"name": "only-a", "targets": ["a"]},
        ]
        settings = {"breaker": {"failure_threshold": 2}}
        async with app_client(tmp_path, models=models, routes=routes, **settings) as c:
            draining.mode = "503:30"
            for _ in range(4):
                r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
                assert r.status_code == 200 and r.headers["x-llm-router-model"] == "b"
            assert len(draining.bodies) == 1, "asked again while it rests"
            assert "a: unavailable for now" in r.headers["x-llm-router-route"]
            alone = await c.post(
                "/v1/chat/completions", json={"model": "only-a", "messages": HELLO}
            )
            assert alone.status_code == 503 and 2 <= int(alone.headers["retry-after"]) <= 30
            assert alone.json()["error"]["code"] == "upstream_unavailable"
            assert len(draining.bodies) == 1  # its rest said, without asking it
            for _ in range(3):  # asked by name: the upstream answers for itself, each time
                direct = await c.post(
                    "/v1/chat/completions", json={"model": "a", "messages": HELLO}
                )
                assert direct.status_code == 503 and direct.headers["retry-after"] == "30"
            assert len(draining.bodies) == 4
            assert await breaker(c, "a") == "closed"

            draining.mode = "503"
            for _ in range(2):
                await c.post("/v1/chat/completions", json={"model": "a", "messages": HELLO})
            assert await breaker(c, "a") == "open"


@pytest.mark.parametrize(
    ("rest", "answer", "said"),
    [
        # one target resting 2 s, the other answering 429 with 9 s: the answer said 9 (found
        # from outside)
        ("429:2", "429:9", (429, 2, 2)),
        # one resting 9 s, the other answering 503 with Retry-After 30: the answer said 30
        ("429:9", "503:30", (503, 2, 9)),
        # resting 9 s after a 503 of its own
        ("503:9", "503:30", (503, 2, 9)),
    ],
)
async def test_an_error_answer_says_when_a_resting_target_is_back_if_that_is_sooner(
    tmp_path: Path, rest: str, answer: str, said: tuple[int, int, int]
) -> None:
    """A route's error says when to retry: the soonest any of its targets can serve, a
    target left out to rest included. (One that timed out says 1: it may be asked again at
    once.)"""
    async with upstream() as (one, url_one), upstream() as (two, url_two):
        models = [remote("a", url_one), remote("b", url_two)]
        routes = [{"name": "auto", "targets": ["a", "b"], "strategy": "quality-first"}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            one.mode, two.mode = rest, "ok"
            body = {"model": "auto", "messages": HELLO}
            assert (await c.post("/v1/chat/completions", json=body)).status_code == 200  # a rests
            two.mode = answer
            r = await c.post("/v1/chat/completions", json=body)
            status, low, high = said
            assert r.status_code == status, r.headers
            assert low <= int(r.headers["retry-after"]) <= high, r.headers
            assert len(one.bodies) == 1  # the resting one was not asked again


async def test_a_probe_cancelled_in_its_backoff_frees_the_half_open_breaker(tmp_path: Path) -> None:
    """A request cancelled while it waited out the backoff before a half-open target kept
    the probe it had taken: the breaker stayed half-open for good and every route skipped the
    healthy target as 'breaker open' (found from outside)."""
    async with upstream() as (bad, bad_url), upstream() as (good, good_url):
        models = [remote("b", bad_url), remote("a", good_url)]
        routes = [{"name": "fba", "targets": ["b"], "fallbacks": ["a"], "backoff": 0.5}]
        settings = {"breaker": {"failure_threshold": 2, "cooldown": 0.3}}
        async with app_client(tmp_path, models=models, routes=routes, **settings) as c:
            bad.mode = good.mode = "error"
            for _ in range(2):  # a's breaker opens
                await c.post("/v1/chat/completions", json={"model": "a", "messages": HELLO})
            assert await breaker(c, "a") == "open"
            good.mode = "ok"
            await asyncio.sleep(0.35)
            assert await breaker(c, "a") == "half_open"
            ask = c.post("/v1/chat/completions", json={"model": "fba", "messages": HELLO})
            with pytest.raises(TimeoutError):  # the client leaves during the 0.5 s backoff
                await asyncio.wait_for(ask, 0.25)
            r = await c.post("/v1/chat/completions", json={"model": "fba", "messages": HELLO})
            assert r.status_code == 200 and r.headers["x-llm-router-model"] == "a", r.text
            assert await breaker(c, "a") == "closed"


async def test_listing_the_routes_does_not_turn_round_robin(tmp_path: Path) -> None:
    """GET /models asked the strategy for the order, which turned round-robin's counter: a
    polling dashboard pinned or skewed the traffic (found from outside)."""
    models = fake_models(tmp_path, x={}, y={})
    routes = [{"name": "rr", "strategy": "round-robin", "targets": ["x", "y"]}]
    async with app_client(tmp_path, models=models, routes=routes) as c:
        served = []
        for _ in range(4):
            for _ in range(2):
                assert (await c.get("/models")).status_code == 200
            r = await c.post("/v1/chat/completions", json={"model": "rr", "messages": HELLO})
            served.append(r.headers["x-llm-router-model"])
    assert served in (["x", "y", "x", "y"], ["y", "x", "y", "x"])


@pytest.mark.parametrize(("retries", "asked_b"), [(0, 1), (2, 3), (None, 1)])
async def test_fallbacks_come_after_the_retries_whatever_their_number(
    tmp_path: Path, retries: int | None, asked_b: int
) -> None:
    """`retries: 0` left the fallbacks out (a 502 after one try), and `retries: 2` went
    round target and fallback together (b, c, b: b's 502). The targets get `retries + 1`
    tries, then each fallback one (found from outside)."""
    async with upstream() as (b, b_url), upstream() as (c_up, c_url):
        models = [remote("b", b_url), remote("c", c_url)]
        routes = [{"name": "r", "targets": ["b"], "fallbacks": ["c"], "retries": retries,
                   "backoff": 0}]  # fmt: skip
        async with app_client(
            tmp_path, models=models, routes=routes, breaker={"failure_threshold": 10}
        ) as client:
            b.mode = "error"
            r = await client.post("/v1/chat/completions", json={"model": "r", "messages": HELLO})
    assert r.status_code == 200 and r.headers["x-llm-router-model"] == "c", r.text
    assert (len(b.bodies), len(c_up.bodies)) == (asked_b, 1)


async def test_a_route_naming_nothing_is_said_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in a route's targets or fallbacks was skipped on every request without a word
    (targets only said so per request, fallbacks never): the start says which entry names
    nothing, and the route still serves from the rest. Once: it was said again on every
    routed request and every `GET /models` (found from outside)."""
    async with upstream() as (_, url):
        models = [remote("box", url)]
        routes = [
            {"name": "auto", "targets": ["box", "bxo"], "fallbacks": ["backup"]},
            {"name": "other", "targets": ["box"]},
        ]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            text = caplog.text
            assert "route auto: targets entry 'bxo' names no model or target" in text
            assert "route auto: fallbacks entry 'backup' names no model or target" in text
            assert "'box'" not in text and "route other" not in text
            caplog.clear()
            for _ in range(3):
                ok = await c.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
                assert ok.status_code == 200
                assert (await c.get("/models")).status_code == 200
            assert "bxo" not in caplog.text


async def test_an_upstream_that_reports_no_usage_is_counted_by_an_estimate(
    tmp_path: Path,
) -> None:
    """An upstream that ignores `stream_options.include_usage` (older servers do) or sends no
    `usage` made the answer's usage 0/0: keys' token limits, budgets and the token metrics
    never counted it (found from outside). It is estimated instead."""
    pieces = ["Hello", " there", ", how", " are", " you", " today?"]

    async def streamed(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.json_response({k: v for k, v in REPLY.items() if k != "usage"})
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)
        for i, text in enumerate(pieces):
            last = i == len(pieces) - 1
            choice = {
                "index": 0,
                "delta": {"content": text},
                "finish_reason": "stop" if last else None,
            }
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up",
                     "choices": [choice]}  # fmt: skip
            await answer.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await answer.write(b"data: [DONE]\n\n")
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", streamed)
    async with TestServer(app, host="127.0.0.1") as server:
        models = [remote("box", str(server.make_url("/v1")))]
        async with app_client(tmp_path, models=models) as c:
            body = {"model": "box", "messages": HELLO, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            r = await c.post("/v1/chat/completions", json=body)
            chunks = [json.loads(x[6:]) for x in r.text.splitlines() if x[6:].startswith("{")]
            usage = chunks[-1]["usage"]
            assert usage["completion_tokens"] >= len(pieces), usage  # a token a piece at least
            assert usage["prompt_tokens"] > 0, usage
            whole = await c.post("/v1/chat/completions", json={"model": "box", "messages": HELLO})
            assert whole.json()["usage"]["completion_tokens"] >= 1, whole.text
            assert whole.json()["usage"]["prompt_tokens"] > 0, whole.text
            metrics = (await c.get("/metrics")).text
    assert 'llm_router_tokens_total{kind="completion",model="box"}' in metrics


async def test_unloads_in_flight_do_not_open_a_local_targets_breaker(tmp_path: Path) -> None:
    """An operator's unload cutting a route's requests counted as the local model's failures:
    after a few, its breaker opened and the route skipped a healthy model for the cooldown
    (found from outside, after unloads and reloads of a storm). A cut by an unload is the
    operator's doing, as a client's disconnect is the client's."""
    models = fake_models(tmp_path, local={"token_seconds": 0.01})
    routes = [{"name": "auto", "targets": ["local"]}]
    async with app_client(
        tmp_path, models=models, routes=routes, unload_grace=0, breaker={"failure_threshold": 2}
    ) as c:
        for _ in range(3):
            body = {"model": "auto", "messages": HELLO, "max_tokens": 1000}
            asked = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            while not await _active(c, "local"):  # generating
                assert not asked.done(), asked.result().text
                await asyncio.sleep(0.01)
            await c.post("/models/unload", json={"model": "local"})
            r = await asked
            assert r.status_code == 503 and "unloaded" in r.json()["error"]["message"], r.text
        assert await breaker(c, "local") == "closed"
        r = await c.post("/v1/chat/completions", json={**body, "max_tokens": 3})
        assert r.status_code == 200


async def _active(c: httpx.AsyncClient, model: str) -> int:
    models = (await c.get("/models")).json()["data"]
    active: int = next(m for m in models if m["id"] == model)["active_requests"]
    return active


async def test_a_fallbacks_answer_is_not_cached_for_the_route(tmp_path: Path) -> None:
    """The target failed, the fallback answered, and its answer was cached: with the target
    healthy again the route still served the fallback's answer for the whole TTL (found from
    outside). An answer of a route's target, named by an alias, is cached as before."""
    async with upstream() as (up, url):
        models = [*fake_models(tmp_path, local={"reply": "from the fallback"})]
        models.append(remote("box", url, aliases=["boxalias"], quality=0.9))
        routes = [{"name": "auto", "targets": ["boxalias"], "fallbacks": ["local"]}]
        body = {"model": "auto", "messages": HELLO, "temperature": 0}
        async with app_client(tmp_path, models=models, routes=routes) as c:
            up.mode = "error"
            failing = await c.post("/v1/chat/completions", json=body)
            up.mode = "ok"
            healthy = await c.post("/v1/chat/completions", json=body)
            again = await c.post("/v1/chat/completions", json=body)
    assert failing.headers["x-llm-router-model"] == "local"
    assert failing.json()["choices"][0]["message"]["content"].startswith("from the fallback")
    assert healthy.headers["x-llm-router-cache"] == "miss"
    assert healthy.json()["choices"][0]["message"]["content"] == "hello"
    assert again.headers["x-llm-router-cache"] == "hit"


async def test_a_target_sending_keep_alives_only_times_out_and_the_route_falls_back(
    tmp_path: Path,
) -> None:
    """SSE comments (and a role-only chunk) every 50 ms, never a token: they reset the read
    timeout, so the client waited for good, with no headers and no fallback (found from
    outside). Keep-alives do not count as the first token: after `timeout`, the fallback."""
    async with upstream() as (pinger, url), upstream() as (_spare, spare_url):
        pinger.mode = "pings"
        models = [remote("gw", url), remote("spare", spare_url)]
        routes = [{"name": "auto", "targets": ["gw"], "fallbacks": ["spare"]}]
        async with app_client(tmp_path, models=models, routes=routes) as c:
            body = {"model": "auto", "messages": HELLO, "stream": True}
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                text = (await r.aread()).decode()
            assert r.status_code == 200 and r.headers["x-llm-router-model"] == "spare", text
            assert "gw: UpstreamTimeout" in r.headers["x-llm-router-route"]
            assert '"content":"hello"' in text and text.endswith("data: [DONE]\n\n")
            direct = await c.post("/v1/chat/completions", json={**body, "model": "gw"})
            assert direct.status_code == 503, direct.text
            assert "no token within its timeout" in direct.json()["error"]["message"]
