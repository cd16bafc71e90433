"""`/v1/ws` on a real server and the real model, driven by the `websockets` client: several
streams on one socket, answered as the HTTP path answers them (errors, cancellation, API
keys and their limits included: each message is an ordinary request through the app)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from servers import SMOL, Server, link_models, within_one_minute_window

pytestmark = pytest.mark.real

MASTER = "sk-master-ws-test-0123456789"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ws")
    server = Server(root, {"models_dir": str(link_models(root / "models", smollm2_gguf))})
    yield server.start()
    server.stop()


def _url(srv: Server) -> str:
    return srv.url.replace("http://", "ws://") + "/v1/ws"


async def _collect(socket: Any, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Read until every id had its last message: {id: {"text", "last"}}."""
    seen: dict[str, dict[str, Any]] = {i: {"text": ""} for i in ids}
    while any("last" not in s for s in seen.values()):
        message = json.loads(await asyncio.wait_for(socket.recv(), 120))
        entry = seen.setdefault(message.get("id"), {"text": ""})
        if "chunk" in message:
            for choice in message["chunk"]["choices"]:
                entry["text"] += choice.get("delta", {}).get("content") or choice.get("text") or ""
        else:
            entry["last"] = message
    return seen


async def test_streams_on_one_socket_answer_as_http_does(srv: Server) -> None:
    chat = {"model": SMOL, "messages": PARIS, "max_tokens": 20, "temperature": 0}
    text = {"model": SMOL, "prompt": "One, two,", "max_tokens": 8, "temperature": 0}
    async with websockets.connect(_url(srv)) as socket:
        await socket.send(json.dumps({"id": "chat", "body": chat}))
        await socket.send(json.dumps({"id": "text", "path": "/v1/completions", "body": text}))
        await socket.send(json.dumps({"id": "nope", "body": {**chat, "model": "nope"}}))
        await socket.send(json.dumps({"id": "bad", "path": "/v1/embeddings", "body": text}))
        await socket.send("not json")
        seen = await _collect(socket, {"chat", "text", "nope", "bad", None})  # type: ignore[arg-type]
    assert seen["chat"]["last"]["done"] and seen["text"]["last"]["done"]
    assert seen["chat"]["last"]["headers"]["x-llm-router-model"] == SMOL
    async with httpx.AsyncClient(timeout=120) as http:
        over_http = (await http.post(srv.url + "/v1/chat/completions", json=chat)).json()
    assert seen["chat"]["text"] == over_http["choices"][0]["message"]["content"]
    assert "Paris" in seen["chat"]["text"] and seen["text"]["text"]
    missing = seen["nope"]["last"]
    assert missing["status"] == 404 and missing["error"]["code"] == "model_not_found"
    assert seen["bad"]["last"]["error"]["param"] == "path"
    assert seen[None]["last"]["status"] == 400  # type: ignore[index]


async def test_a_cancelled_stream_stops_and_says_so(srv: Server) -> None:
    story = {"model": SMOL, "messages": [{"role": "user", "content": "Tell a long story."}],
             "max_tokens": 400, "temperature": 0.8}  # fmt: skip
    async with websockets.connect(_url(srv)) as socket:
        await socket.send(json.dumps({"id": "s", "body": story}))
        chunks = 0
        while chunks < 3:
            chunks += "chunk" in json.loads(await asyncio.wait_for(socket.recv(), 120))
        await socket.send(json.dumps({"id": "s", "cancel": True}))
        seen = await _collect(socket, {"s"})
        assert seen["s"]["last"] == {"id": "s", "cancelled": True}
        await socket.send(json.dumps({"id": "s", "body": {**story, "max_tokens": 3}}))
        assert (await _collect(socket, {"s"}))["s"]["last"]["done"]  # the id is free again
        await socket.send(json.dumps({"id": "s", "cancel": True}))  # nothing runs: said so
        assert (await _collect(socket, {"s"}))["s"]["last"]["error"]["code"] == "unknown_id"
    assert "error=cancelled" in srv.log()  # the generation stopped, as for HTTP


async def test_a_message_that_breaks_the_parser_loses_nothing_else(srv: Server) -> None:
    """A JSON nested past the parser's depth raised out of the socket's handler: every
    stream on it was cut. Two requests under one socket get their own request ids (the
    handshake's was copied to all)."""
    chat = {"model": SMOL, "messages": PARIS, "max_tokens": 12, "temperature": 0}
    headers = {"x-request-id": "from-the-handshake"}
    async with websockets.connect(_url(srv), additional_headers=headers) as socket:
        await socket.send(json.dumps({"id": "a", "body": chat}))
        await socket.send("[" * 100_000)
        await socket.send(json.dumps({"id": "b", "body": chat}))
        seen = await _collect(socket, {"a", "b", None})  # type: ignore[arg-type]
    assert seen[None]["last"]["status"] == 400  # type: ignore[index]
    assert seen["a"]["last"]["done"] and seen["b"]["last"]["done"]
    ids = {seen[r]["last"]["headers"]["x-request-id"] for r in ("a", "b")}
    assert len(ids) == 2 and "from-the-handshake" not in ids


def test_an_idle_socket_does_not_hold_a_drain(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The socket counted as a request in flight: any connected client held every SIGTERM
    for the whole drain grace. Its requests are what a drain waits for."""
    server = Server(tmp_path, {"models_dir": str(link_models(tmp_path / "m", smollm2_gguf))})
    server.start()

    async def connect_then_stop() -> None:
        async with websockets.connect(_url(server)):
            server.stop()

    try:
        with contextlib.suppress(ConnectionClosed):
            asyncio.run(connect_then_stop())
        assert "drained: no request in flight" in server.log(), server.log()
    finally:
        server.stop()


async def test_keys_and_their_limits_hold_on_the_socket(
    tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each message is a request through the gateway: the handshake needs a key, and a key's
    requests per minute count every message."""
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
    models = str(link_models(tmp_path / "m", smollm2_gguf))
    # its own state: a key in the session's data dir would turn auth on for later servers
    keyed = Server(tmp_path, {"models_dir": models, "data_dir": str(tmp_path / "data")})
    keyed.start()
    monkeypatch.delenv("LLM_ROUTER_MASTER_KEY")
    try:
        with pytest.raises(InvalidStatus) as refused_socket:  # a 401 saying why, as HTTP's
            async with websockets.connect(_url(keyed)):
                pass
        answer = refused_socket.value.response
        assert answer.status_code == 401 and b"invalid_api_key" in answer.body
        async with httpx.AsyncClient() as http:
            made = await http.post(
                keyed.url + "/admin/keys",
                json={"name": "one-a-minute", "rpm": 1},
                headers={"authorization": f"Bearer {MASTER}"},
            )
        key = made.json()["key"]
        chat = {"model": SMOL, "messages": PARIS, "max_tokens": 3}
        auth = {"authorization": f"Bearer {key}"}
        await asyncio.to_thread(within_one_minute_window, 20)  # rpm 1: no turn of a minute
        async with websockets.connect(_url(keyed), additional_headers=auth) as socket:
            await socket.send(json.dumps({"id": "first", "body": chat}))
            first = (await _collect(socket, {"first"}))["first"]["last"]
            assert first.get("done"), first
            await socket.send(json.dumps({"id": "second", "body": chat}))
            refused = (await _collect(socket, {"second"}))["second"]["last"]
        assert refused["status"] == 429 and refused["error"]["code"] == "rate_limit_exceeded"
        assert int(refused["headers"]["retry-after"]) >= 1
        async with websockets.connect(_url(keyed), additional_headers=auth) as socket:
            async with httpx.AsyncClient() as http:
                gone = await http.delete(
                    keyed.url + "/admin/keys/one-a-minute",
                    headers={"authorization": f"Bearer {MASTER}"},
                )
            assert gone.status_code == 200
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), 10)  # closed within about a second
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        keyed.stop()
