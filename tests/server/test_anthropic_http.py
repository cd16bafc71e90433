"""/v1/messages' HTTP behaviour in process (the fake engine, an in-process upstream): its
errors in Anthropic's shape with the chat path's status and headers, before the stream and
inside it. The real model and the `anthropic` SDK drive it in test_anthropic_api.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from inproc import app_client, fake_models

ASK = {"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}


def _chunk(delta: dict[str, Any]) -> bytes:
    data = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    data["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
    return f"data: {json.dumps(data)}\n\n".encode()


@asynccontextmanager
async def upstream(mode: str) -> AsyncIterator[str]:
    """An OpenAI-compatible upstream that answers "429" (with Retry-After: 2), or "cut": a
    stream that sends some text, then ends without its finish (the connection dropped)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"object": "list", "data": [{"id": "up-model"}]})
        if mode == "429":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "2"}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk({"role": "assistant", "content": ""}))
        await response.write(_chunk({"content": "Hel"}))
        request.transport.close()  # type: ignore[union-attr]
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/v1"))


def _remote(url: str) -> dict[str, Any]:
    return {
        "id": "box",
        "provider": "openai",
        "base_url": url,
        "model": "up-model",
        "timeout": 5,
        "health_check_interval": 0,
    }


def _anthropic_error(r: Any, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {"type": "error", "error": {"type": kind, "message": body["error"]["message"]}}
    message: str = body["error"]["message"]
    return message


async def test_errors_are_anthropic_shaped_with_the_chat_paths_headers(tmp_path: Path) -> None:
    async with upstream("429") as url:
        models = [*fake_models(tmp_path, chat={}), _remote(url)]
        async with app_client(tmp_path, models=models) as c:
            r = await c.post("/v1/messages", json={**ASK, "model": "box"})
            _anthropic_error(r, 429, "rate_limit_error")
            assert r.headers["retry-after"] == "2"  # the upstream's wait, kept
            r = await c.post("/v1/messages", json={**ASK, "model": "nope"})
            assert "nope" in _anthropic_error(r, 404, "not_found_error")
            r = await c.post("/v1/messages", json={**ASK, "model": "chat", "max_tokens": 0})
            assert "max_tokens" in _anthropic_error(r, 400, "invalid_request_error")
            r = await c.post("/v1/messages", json={**ASK, "model": "chat", "n": 2})
            assert "`n`" in _anthropic_error(r, 400, "invalid_request_error")  # one message
            bad_stop = {**ASK, "model": "chat", "stop_sequences": "###"}
            r = await c.post("/v1/messages", json=bad_stop)
            assert "stop_sequences" in _anthropic_error(r, 400, "invalid_request_error")
            r = await c.post("/v1/messages/count_tokens", json={**ASK, "model": "box"})
            message = _anthropic_error(r, 400, "invalid_request_error")
            assert "'box' is a remote target" in message and "count_tokens" in message
            r = await c.post("/v1/messages/count_tokens", json={**ASK, "model": "chat"})
            assert r.status_code == 200 and r.json()["input_tokens"] > 0
            # an answer: the fake engine's reply (repeated, cut at `max_tokens`) as a text
            # block; sampling passed on, Anthropic's fields without a counterpart accepted
            asked = {
                **ASK,
                "model": "chat",
                "temperature": 0.5,
                "top_p": 0.9,
                "top_k": 20,
                "metadata": {"user_id": "u1"},
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "cache_control": {"type": "ephemeral"},
                "service_tier": "auto",
            }
            r = await c.post("/v1/messages", json=asked)
            assert r.status_code == 200, r.text
            assert r.json()["content"][0]["text"].startswith("hello from the fake")
            assert r.json()["stop_reason"] == "max_tokens"


async def test_a_failure_after_the_stream_began_is_an_error_event(tmp_path: Path) -> None:
    async with upstream("cut") as url:
        async with app_client(tmp_path, models=[_remote(url)]) as c:
            body = {**ASK, "model": "box", "stream": True}
            async with c.stream("POST", "/v1/messages", json=body) as r:
                assert r.status_code == 200
                lines = [line async for line in r.aiter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names[0] == "message_start" and names[-1] == "error", names
    assert [d["type"] for d in data] == names
    # the upstream went away: a 503's type (the SDK raises the event as an APIStatusError)
    assert data[-1]["error"]["type"] == "overloaded_error"
    assert "broke off" in data[-1]["error"]["message"]
    assert "message_stop" not in names
