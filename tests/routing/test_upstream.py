"""Upstream against a tiny aiohttp server in the test's event loop, one handler per test
(mapping, pass-through), and against a real OpenAI-compatible upstream served by uvicorn on
127.0.0.1 (cancellation reaches the upstream)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_router.errors import (
    BadRequest,
    ContextLengthExceeded,
    EngineError,
    QueueFull,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llm_router.routing import upstream as remote
from llm_router.routing.upstream import Upstream, env_proxy

pytestmark = pytest.mark.timeout(30)

KEY = "sk-very-secret-key"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@contextlib.asynccontextmanager
async def target(
    handler: Handler, seen: list[Seen] | None = None, **kw: Any
) -> AsyncIterator[Upstream]:
    """A Upstream whose upstream is `handler`, served on 127.0.0.1; every request the
    upstream receives is appended to `seen`."""

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if seen is not None:
            seen.append(Seen(request.method, request.path, dict(request.headers), body))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        base = str(server.make_url("/v1"))
        yield Upstream(session, base_url=base, model="upstream-m", api_key=KEY, name="box", **kw)


@contextlib.asynccontextmanager
async def unreachable(**kw: Any) -> AsyncIterator[Upstream]:
    """A Upstream whose port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        yield Upstream(session, base_url=f"http://127.0.0.1:{port}/v1", model="m", **kw)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            headers=headers,
            content_type="application/json",
        )

    return handle


def answer_bytes(raw: bytes, status: int = 200, content_type: str = "text/event-stream") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=raw, content_type=content_type)

    return handle


def envelope(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


async def stream_of(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


CHUNK_A = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "A"}}]}
CHUNK_B = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "B"}}]}


# -- success paths --------------------------------------------------------------------------


async def test_chat_rewrites_model_sends_bearer_and_returns_the_json() -> None:
    seen: list[Seen] = []
    reply = {"id": "x", "model": "upstream-m", "choices": [{"index": 0, "message": {}}]}
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "seed": 3}
    async with target(answer(200, reply), seen) as t:
        assert await t.chat(body) == reply
    (request,) = seen
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    sent = json.loads(request.body)
    assert sent == {"model": "upstream-m", "messages": BODY["messages"], "seed": 3, "stream": False}
    assert body["model"] == "auto"  # the caller's body is not changed


async def test_complete_and_embed_use_their_paths() -> None:
    seen: list[Seen] = []
    async with target(answer(200, {"choices": [{"text": ""}]}), seen) as t:
        await t.complete({"model": "x", "prompt": "p", "stream": True})
        await t.embed({"model": "x", "input": "p"})
    assert [r.path for r in seen] == ["/v1/completions", "/v1/embeddings"]
    assert json.loads(seen[0].body)["stream"] is False
    assert "stream" not in json.loads(seen[1].body)


async def test_stream_passes_chunks_through_one_by_one() -> None:
    gate = asyncio.Event()
    seen: list[Seen] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        await response.write(sse(json.dumps(CHUNK_A)))
        await gate.wait()  # the second chunk exists only after the first was handed on
        await response.write(sse(json.dumps(CHUNK_B), "[DONE]"))
        await response.write(sse(json.dumps({"never": "read"})))
        return response

    async with target(handle, seen) as t:
        chunks = t.stream_chat({**BODY, "stream_options": {"include_usage": True}})
        first = await asyncio.wait_for(anext(chunks), 5)
        gate.set()
        rest = [chunk async for chunk in chunks]
    assert (first, rest) == (CHUNK_A, [CHUNK_B])
    sent = json.loads(seen[0].body)
    assert sent["stream"] is True and sent["model"] == "upstream-m"
    assert sent["stream_options"] == {"include_usage": True}


async def test_stream_parses_sse_framing() -> None:
    raw = (
        b": keep-alive comment\r\n\r\n"
        b'event: message\r\nid: 1\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
        b'data:{"b":2}\n\n'
        b'data: {"c":3}\r\r'  # CR alone ends a line too
        b'data: {"choices":[{"finish_reason":"stop"}]}\n'  # no blank line or [DONE] after
    )
    async with target(answer_bytes(raw)) as t:
        assert [c async for c in t.stream_complete({"prompt": "x"})] == [
            {"a": 1},
            {"b": 2},
            {"c": 3},
            {"choices": [{"finish_reason": "stop"}]},
        ]


async def test_stream_reassembles_events_split_across_reads_and_longer_than_a_buffer() -> None:
    big = {"choices": [{"delta": {"content": "x" * 300_000}}]}  # over aiohttp's 64 KiB line limit
    raw = sse(json.dumps(CHUNK_A), json.dumps(big), json.dumps(CHUNK_B), "[DONE]")

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        for i in range(0, len(raw), 7001):  # splits inside lines, inside "\n\n" and in UTF-8
            await response.write(raw[i : i + 7001])
            await asyncio.sleep(0)
        return response

    async with target(handle) as t:
        assert [c async for c in t.stream_chat(BODY)] == [CHUNK_A, big, CHUNK_B]


async def test_health() -> None:
    seen: list[Seen] = []
    async with target(answer(200, {"data": []}), seen) as t:
        assert await t.health() is True
    assert (seen[0].method, seen[0].path) == ("GET", "/v1/models")
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    async with target(answer(503)) as t:
        assert await t.health() is False
    async with unreachable() as t:
        assert await t.health() is False


# -- error mapping --------------------------------------------------------------------------


async def test_5xx_is_upstream_error_with_status(caplog: pytest.LogCaptureFixture) -> None:
    """The client is told which target failed and how; the upstream's own text (which may
    name internal hosts) goes to the log only."""
    async with target(answer(502, envelope("bad gateway upstream at 10.0.0.5"))) as t:
        with pytest.raises(UpstreamError) as info:
            await t.chat(BODY)
    err = info.value
    assert (err.status, isinstance(err, EngineError)) == (502, True)  # worth another target
    assert err.message == "upstream box failed (HTTP 502)"
    assert "bad gateway upstream at 10.0.0.5" in caplog.text


async def test_5xx_on_a_stream_raises_before_the_first_chunk() -> None:
    async with target(answer(500, {"detail": "crashed"})) as t:
        with pytest.raises(UpstreamError, match=r"failed \(HTTP 500\)"):
            await anext(t.stream_chat(BODY))


async def test_429_is_queue_full_with_the_upstreams_retry_after() -> None:
    async with target(answer(429, envelope("slow down"), {"Retry-After": "7"})) as t:
        with pytest.raises(QueueFull) as info:
            await t.chat(BODY)
    assert info.value.retry_after == 7.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    async with target(answer(429, None, {"Retry-After": when})) as t:
        with pytest.raises(QueueFull) as info:
            await anext(t.stream_chat(BODY))
    assert 25 <= info.value.retry_after <= 31
    async with target(answer(429)) as t:
        with pytest.raises(QueueFull) as info:
            await t.chat(BODY)
    assert info.value.retry_after == 1.0


async def test_refused_connection_is_upstream_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with unreachable() as t:
        with pytest.raises(UpstreamUnavailable, match="could not be reached") as info:
            await t.chat(BODY)
        assert isinstance(info.value, EngineError)  # worth another target
        assert "127.0.0.1" not in info.value.message and "127.0.0.1" in caplog.text
        with pytest.raises(UpstreamUnavailable):
            await anext(t.stream_chat(BODY))


async def test_silence_past_the_read_timeout_is_upstream_timeout() -> None:
    """A read timeout is its own class: the router does not count it against the breaker by
    itself; one before the answer's headers says so (the router checks the target then)."""

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    async with target(slow, read_timeout=0.2) as t:
        with pytest.raises(UpstreamTimeout, match="timed out") as info:
            await t.chat(BODY)
        assert not info.value.answered
        with pytest.raises(UpstreamTimeout, match="timed out") as info:
            await anext(t.stream_chat(BODY))
        assert not info.value.answered


async def test_a_stream_that_stalls_mid_way_times_out() -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        await response.write(sse(json.dumps(CHUNK_A)))
        await asyncio.sleep(5)
        return response

    async with target(stall, read_timeout=0.3) as t:
        chunks = t.stream_chat(BODY)
        assert await anext(chunks) == CHUNK_A
        with pytest.raises(UpstreamTimeout, match="timed out") as info:
            await anext(chunks)
        assert info.value.answered  # mid-way: a long generation's, never counted


async def test_connection_dropped_mid_stream_is_upstream_unavailable() -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        await response.write(sse(json.dumps(CHUNK_A)))
        assert request.transport is not None
        request.transport.abort()
        return response

    async with target(drop) as t:
        chunks = t.stream_chat(BODY)
        assert await anext(chunks) == CHUNK_A
        # reached, and it answered: not "could not be reached", as the error event said
        with pytest.raises(UpstreamUnavailable, match="broke off mid-answer"):
            await anext(chunks)


async def test_context_length_code_maps_to_context_length_exceeded() -> None:
    body = envelope(
        "This model's maximum context length is 8192 tokens", "context_length_exceeded", "messages"
    )
    async with target(answer(400, body)) as t:
        with pytest.raises(ContextLengthExceeded) as info:
            await t.chat(BODY)
    assert info.value.message == body["error"]["message"]
    assert info.value.param == "messages"


async def test_message_text_alone_never_classifies() -> None:
    body = envelope("maximum context length exceeded", code="invalid_value", param="max_tokens")
    async with target(answer(400, body)) as t:
        with pytest.raises(BadRequest) as info:
            await t.chat(BODY)
    assert type(info.value) is BadRequest
    assert (info.value.message, info.value.param) == (
        "maximum context length exceeded",
        "max_tokens",
    )


async def test_other_4xx() -> None:
    # A 404 is the target's configuration at fault (its `model` or `base_url`), not the
    # client's model name: a failure another target may not have.
    async with target(
        answer(404, envelope("The model `x` does not exist", "model_not_found"))
    ) as t:
        with pytest.raises(UpstreamError) as found:
            await t.chat(BODY)
        assert found.value.status == 404
        assert found.value.message == "upstream box does not know its model (HTTP 404)"
    async with target(answer(401, envelope("Incorrect API key provided: sk-abc***"))) as t:
        with pytest.raises(UpstreamError) as info:
            await t.chat(BODY)
        assert info.value.status == 401
        assert info.value.message == "upstream box refused the router's credentials (HTTP 401)"
    async with target(answer(422, None)) as t:
        with pytest.raises(BadRequest):
            await t.chat(BODY)


async def test_error_event_inside_a_stream() -> None:
    raw = sse(json.dumps(CHUNK_A), json.dumps(envelope("ctx", "context_length_exceeded")))
    async with target(answer_bytes(raw)) as t:
        chunks = t.stream_chat(BODY)
        assert await anext(chunks) == CHUNK_A
        with pytest.raises(ContextLengthExceeded):
            await anext(chunks)
    raw = sse(json.dumps({"error": {"message": "engine died", "code": 500}}))
    async with target(answer_bytes(raw)) as t:
        with pytest.raises(UpstreamError, match="engine died"):
            await anext(t.stream_chat(BODY))


async def test_garbage_from_the_upstream_is_upstream_error() -> None:
    async with target(answer_bytes(b"<html>proxy page</html>", content_type="text/html")) as t:
        with pytest.raises(UpstreamError) as info:
            await t.chat(BODY)
        assert info.value.status == 502
    async with target(answer_bytes(b"data: not json\n\n")) as t:
        with pytest.raises(UpstreamError):
            await anext(t.stream_chat(BODY))


async def test_a_200_without_choices_is_no_answer() -> None:
    """An error envelope or an empty object in a 200 is the upstream's failure, not an empty
    answer (which would be cached and served again)."""
    async with target(answer(200, envelope("overloaded", "server_error"))) as t:
        with pytest.raises(UpstreamError, match="answered 200 with an error: overloaded"):
            await t.chat(BODY)
    for body in ({}, {"choices": []}, {"choices": "x"}):
        async with target(answer(200, body)) as t:
            with pytest.raises(UpstreamError, match="answered with no choices") as info:
                await t.complete(BODY)
            assert info.value.status == 502
    async with target(answer(200, envelope("too long", "context_length_exceeded"))) as t:
        with pytest.raises(ContextLengthExceeded):
            await t.chat(BODY)


async def test_a_stream_answered_with_a_whole_json_answer_is_one_chunk() -> None:
    """An upstream that ignores `stream` and answers JSON: its answer as one chunk, its
    message as the chunk's delta; an error in it raises."""
    whole = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    async with target(answer(200, whole)) as t:
        chunks = [c async for c in t.stream_chat(BODY)]
    assert len(chunks) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[0]["usage"]["total_tokens"] == 4
    async with target(answer(200, envelope("boom"))) as t:
        with pytest.raises(UpstreamError, match="boom"):
            await anext(t.stream_chat(BODY))


async def test_a_stream_that_ends_unfinished_is_an_error() -> None:
    """A stream that ends with neither a finish_reason nor [DONE] was cut: an error after the
    chunks it had, never a whole answer (a page that is no event stream has no chunks)."""
    raw = sse(json.dumps(CHUNK_A), json.dumps(CHUNK_B))
    async with target(answer_bytes(raw)) as t:
        chunks = t.stream_chat(BODY)
        assert [await anext(chunks), await anext(chunks)] == [CHUNK_A, CHUNK_B]
        with pytest.raises(UpstreamError, match="ended its stream before the answer was done"):
            await anext(chunks)
    async with target(answer_bytes(b"<html>login</html>", content_type="text/html")) as t:
        with pytest.raises(UpstreamError, match="ended its stream"):
            await anext(t.stream_chat(BODY))
    # A finish_reason without [DONE], or [DONE] without a finish_reason, ends it properly.
    last = {**CHUNK_B, "choices": [{"delta": {}, "finish_reason": "length"}]}
    for raw in (sse(json.dumps(CHUNK_A), json.dumps(last)), sse(json.dumps(CHUNK_A), "[DONE]")):
        async with target(answer_bytes(raw)) as t:
            assert len([c async for c in t.stream_chat(BODY)]) in (1, 2)


async def test_503_is_unavailable_with_the_upstreams_retry_after() -> None:
    async with target(answer(503, envelope("maintenance"), {"Retry-After": "30"})) as t:
        with pytest.raises(UpstreamUnavailable, match=r"unavailable \(HTTP 503\)") as info:
            await t.chat(BODY)
    assert info.value.retry_after == 30


async def test_an_error_page_that_is_not_json_is_an_upstream_error() -> None:
    async with target(
        answer_bytes(b"Bad Gateway from nginx", status=502, content_type="text/html")
    ) as t:
        with pytest.raises(UpstreamError, match=r"failed \(HTTP 502\)"):
            await t.chat(BODY)


# -- the key stays secret -------------------------------------------------------------------


async def test_api_key_is_absent_from_repr_and_str() -> None:
    async with target(answer(200, {})) as t:
        for text in (repr(t), str(t), f"{t}"):
            assert KEY not in text
            assert "box" in text and "upstream-m" in text


async def test_no_key_sends_no_authorization() -> None:
    seen: list[Seen] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(Seen(request.method, request.path, dict(request.headers), b""))
        return web.json_response({"choices": [{"index": 0, "message": {}}]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        t = Upstream(session, base_url=str(server.make_url("/v1/")), model="m")
        await t.chat(BODY)
    assert t.name == "m"
    assert seen[0].path == "/v1/chat/completions"
    assert "Authorization" not in seen[0].headers


async def test_repr_hides_credentials_in_the_url() -> None:
    async with aiohttp.ClientSession() as session:
        t = Upstream(session, base_url="http://user:pw-secret@host/v1", model="m")
        assert "pw-secret" not in repr(t)
        assert "http://host/v1" in repr(t)


def test_the_proxy_comes_from_the_environment_once_per_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.corp:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1,.internal")
    for name in ("HTTPS_PROXY", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.corp:3128"
    assert env_proxy("http://api.openai.com/v1") is None  # no http_proxy set
    assert env_proxy("https://127.0.0.1:8000/v1") is None
    assert env_proxy("https://gpu-box.internal/v1") is None


# -- a real upstream on 127.0.0.1 -----------------------------------------------------------


class StubUpstream:
    """A minimal OpenAI-compatible ASGI app. Streams `max_tokens` chunks 20 ms apart, or
    answers non-streaming requests after `delay` seconds, and records whether its client went
    away before the response was complete."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.chunks_sent = 0
        self.delay = 10.0
        self._complete = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"].endswith("/models"):
            await _send_json(send, {"object": "list", "data": []})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.loads(body)
        self.started.set()
        watcher = asyncio.create_task(self._watch(receive))
        try:
            if payload.get("stream"):
                await self._stream(send, int(payload.get("max_tokens") or 500))
            else:
                await self._slow_json(send, payload)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._complete:
            self.disconnected.set()

    async def _stream(self, send: Any, count: int) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(count):
            if self.disconnected.is_set():
                return
            chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": str(i)}}]}
            await send(
                {"type": "http.response.body", "body": sse(json.dumps(chunk)), "more_body": True}
            )
            self.chunks_sent += 1
            await asyncio.sleep(0.02)
        self._complete = True
        await send({"type": "http.response.body", "body": sse("[DONE]")})

    async def _slow_json(self, send: Any, payload: dict[str, Any]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.disconnected.wait(), self.delay)
        if not self.disconnected.is_set():
            self._complete = True
            answer = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
            reply = {"object": "chat.completion", "model": payload["model"], "choices": [answer]}
            await _send_json(send, reply)


async def _send_json(send: Any, data: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[StubUpstream, str]]:
    """The stub served by uvicorn in this event loop, on a socket bound to a free port."""
    app = StubUpstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # clients may connect at once; they wait in the backlog until uvicorn runs
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        ws="none",
        http="h11",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield app, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def real_target(url: str, **kw: Any) -> AsyncIterator[Upstream]:
    async with aiohttp.ClientSession() as session:
        yield Upstream(session, base_url=url, model="stub-model", api_key=KEY, **kw)


async def test_real_upstream_closing_the_stream_early_cancels_the_request(
    upstream: tuple[StubUpstream, str],
) -> None:
    stub, url = upstream
    async with real_target(url) as t:
        chunks = t.stream_chat({**BODY, "max_tokens": 500})
        got = [await asyncio.wait_for(anext(chunks), 5) for _ in range(2)]
        assert [c["choices"][0]["delta"]["content"] for c in got] == ["0", "1"]
        await chunks.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(stub.disconnected.wait(), 5)
    assert stub.chunks_sent < 100


async def test_real_upstream_cancelling_a_non_streaming_call_cancels_the_request(
    upstream: tuple[StubUpstream, str],
) -> None:
    stub, url = upstream
    async with real_target(url) as t:
        call = asyncio.create_task(t.chat(BODY))
        await asyncio.wait_for(stub.started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(stub.disconnected.wait(), 5)


async def test_real_upstream_read_timeout_is_unavailable_and_hangs_up(
    upstream: tuple[StubUpstream, str],
) -> None:
    stub, url = upstream
    async with real_target(url, read_timeout=0.2) as t:
        with pytest.raises(UpstreamUnavailable, match="timed out"):
            await t.chat(BODY)
        await asyncio.wait_for(stub.disconnected.wait(), 5)


async def test_real_upstream_full_stream_is_no_disconnect(
    upstream: tuple[StubUpstream, str],
) -> None:
    stub, url = upstream
    stub.delay = 0.0
    async with real_target(url) as t:
        chunks = [c async for c in t.stream_chat({**BODY, "max_tokens": 3})]
        assert len(chunks) == 3
        assert (await t.chat(BODY))["model"] == "stub-model"
        assert await t.health() is True
    assert not stub.disconnected.is_set()


async def test_an_endless_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken or hostile upstream cannot fill the router's memory: a body, or one line of a
    stream, past the limit is an upstream error."""
    monkeypatch.setattr(remote, "MAX_BODY", 64 * 1024)
    async with target(answer_bytes(b"x" * (200 * 1024), status=200)) as t:
        with pytest.raises(UpstreamError, match="more than 65536 bytes"):
            await t.chat(BODY)
    async with target(
        answer_bytes(b"data: " + b"x" * (200 * 1024), status=200, content_type="text/event-stream")
    ) as t:
        with pytest.raises(UpstreamError, match="line of more than 65536 bytes"):
            await anext(t.stream_chat(BODY))


class Reads:
    """What `_lines` reads of an aiohttp body: these blocks, one a read."""

    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for block in self.blocks:
            yield block


async def lines_of(blocks: list[bytes]) -> list[str]:
    return [line async for line in remote._lines("box", Reads(blocks))]  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=8))
def test_lines_are_the_same_however_the_body_is_split_into_reads(
    body: bytes, cuts: list[int]
) -> None:
    body = body.replace(b"\x00", b"\r")  # plenty of CRs, lone and before LFs
    edges = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    blocks = [body[a:b] for a, b in itertools.pairwise(edges) if b > a]
    whole = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if not whole[-1]:
        whole.pop()
    assert asyncio.run(lines_of(blocks)) == [line.decode(errors="replace") for line in whole]


class Counted(bytes):
    """A read that counts the bytes handled by whatever is done with it (`touched`):
    searched, split, or copied into a longer buffer (`buffer += block` comes here)."""

    touched = 0

    def replace(self, *args: Any) -> bytes:  # type: ignore[override]
        Counted.touched += len(self)
        return bytes(self).replace(*args)

    def split(self, *args: Any) -> list[bytes]:  # type: ignore[override]
        Counted.touched += len(self)
        return bytes(self).split(*args)

    def __radd__(self, other: bytes) -> bytes:
        Counted.touched += len(other) + len(self)
        return other + bytes(self)


async def test_a_long_line_in_many_reads_costs_its_length_not_its_square() -> None:
    """One 24 MiB line took 2.3 s of the event loop and stalled every other client (found
    from outside): each read searched and copied the whole line so far. The work per read is
    now that read's bytes (counted, not timed)."""
    Counted.touched = 0
    reads = [Counted(b"x" * 1024) for _ in range(1024)]  # a 1 MiB line in 1 KiB reads
    lines = await lines_of([Counted(b"data: "), *reads, Counted(b"\n\n")])
    assert [len(line) for line in lines] == [6 + 1024 * 1024, 0]
    assert Counted.touched <= 4 * (1024 * 1024 + 8)


def keep_alives(*first: bytes) -> Handler:
    """A stream that sends `first`, then only SSE comments, every 50 ms, for good."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        for raw in first:
            await response.write(raw)
        while True:
            await response.write(b": ping\n\n")
            await asyncio.sleep(0.05)

    return handle


ROLE_ONLY = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


@pytest.mark.parametrize("first", [b"", sse(json.dumps(ROLE_ONLY))])
async def test_keep_alives_alone_time_out_before_the_first_token(first: bytes) -> None:
    """Comments (or a role-only chunk) kept resetting the read timeout: a gateway that sends
    keep-alives while it queues held the request for good, with no fallback."""
    got: list[dict[str, Any]] = []
    async with target(keep_alives(first), read_timeout=0.3) as t:
        with pytest.raises(UpstreamTimeout, match="no token within its timeout"):
            async for chunk in t.stream_chat(BODY):
                got.append(chunk)
    assert got == ([ROLE_ONLY] if first else [])


async def test_keep_alives_alone_time_out_between_chunks() -> None:
    async with target(keep_alives(sse(json.dumps(CHUNK_A))), read_timeout=0.3) as t:
        chunks = t.stream_chat(BODY)
        assert await anext(chunks) == CHUNK_A
        with pytest.raises(UpstreamTimeout, match="no token within its timeout"):
            await anext(chunks)


async def test_a_stream_that_progresses_is_not_timed_out_however_long_it_runs() -> None:
    """Tokens, each well within the timeout, with keep-alives between: the answer is whole
    though it takes longer than the timeout."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = await stream_of(request)
        await response.write(b": queued\n\n" + sse(json.dumps(ROLE_ONLY)))
        for _ in range(20):
            await asyncio.sleep(0.05)
            await response.write(b": ping\n\n")
            await response.write(sse(json.dumps(CHUNK_A)))
        await response.write(sse("[DONE]"))
        return response

    async with target(handle, read_timeout=0.5) as t:
        chunks = [c async for c in t.stream_chat(BODY)]
    assert chunks == [ROLE_ONLY, *[CHUNK_A] * 20]
