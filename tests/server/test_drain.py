"""Graceful drain on SIGTERM (server/drain.py, server/run.py): readiness false at once, new
requests 503 with Retry-After, requests in flight finish, then the process stops by itself.

In process: the guard around a tiny app, and the real app's stack (the hot routes too). Real:
`llm-router serve` on the bundled SmolLM2, with a stream in flight when SIGTERM arrives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from inproc import app_client
from llm_router.server.drain import Drain, DrainGuard
from llm_router.server.front import Front
from openai_schema import validate
from servers import SMOL, MakeClient, Server, alive

HELLO = [{"role": "user", "content": "Hello"}]


def _slow_app(release: asyncio.Event, entered: asyncio.Event) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["path"] == "/slow":
            entered.set()
            await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def test_a_request_in_flight_finishes_and_new_ones_get_503() -> None:
    release, entered = asyncio.Event(), asyncio.Event()
    drain = Drain()
    guarded = DrainGuard(_slow_app(release, entered), drain)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        slow = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        assert drain.in_flight == 1
        drain.begin()
        idle = asyncio.create_task(drain.idle(timeout=30))

        refused = await client.post("/v1/chat/completions", json={})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        error = refused.json()["error"]
        assert error["code"] == "server_draining" and error["type"] == "server_error"
        assert set(error) == {"message", "type", "param", "code"}
        for path in ("/health", "/v1/health"):  # llama-server's name for it too
            health = await client.get(path)
            assert health.status_code == 503
            assert health.json() == {"status": "draining", "in_flight": 1, "pid": os.getpid()}
        assert not idle.done()

        release.set()
        answer = await slow
        assert answer.status_code == 200 and answer.text == "done"
        assert await idle is True
        assert drain.in_flight == 0


async def test_idle_says_false_when_the_grace_ends_first() -> None:
    release, entered = asyncio.Event(), asyncio.Event()
    drain = Drain()
    transport = httpx.ASGITransport(app=DrainGuard(_slow_app(release, entered), drain))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        slow = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        drain.begin()
        assert await drain.idle(timeout=0.01) is False
        release.set()
        await slow


async def test_untracked_subscriptions_do_not_hold_the_drain() -> None:
    release, entered = asyncio.Event(), asyncio.Event()
    drain = Drain()
    guarded = DrainGuard(_slow_app(release, entered), drain, untracked=("/slow",))
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        slow = asyncio.create_task(client.get("/slow"))
        await entered.wait()
        drain.begin()
        assert drain.in_flight == 0
        assert await drain.idle(timeout=30) is True
        release.set()
        await slow


async def test_what_is_in_flight_when_the_server_stops_is_answered_in_the_envelope() -> None:
    """The grace is over (or a second signal came): a request not answered yet gets a 503
    `server_shutting_down` with Retry-After, a stream its last event in the envelope, another
    started body its end, and a subscription (/models/events) a clean end. uvicorn cancelled
    them: a plain-text 500, streams cut mid-body."""
    release, all_started = asyncio.Event(), asyncio.Event()
    started: list[str] = []
    paths = ("/wait", "/stream", "/text", "/models/events")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/wait":
            started.append(path)
            await release.wait()
        kind = b"text/event-stream" if path in ("/stream", "/models/events") else b"text/plain"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        started.append(path)
        if len(started) == len(paths):
            all_started.set()
        await release.wait()

    drain = Drain()
    front = Front(DrainGuard(app, drain), log_requests=False)
    transport = httpx.ASGITransport(app=front)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        calls = [asyncio.create_task(client.get(path)) for path in paths]
        await all_started.wait()
        assert drain.in_flight == 3  # the subscription is not waited for
        await drain.stop_all(timeout=5)
        wait, stream, text, events = await asyncio.gather(*calls)
    assert wait.status_code == 503 and wait.headers["retry-after"] == "1"
    validate("ErrorResponse", wait.json())
    assert wait.json()["error"]["code"] == "server_shutting_down"
    assert stream.status_code == 200
    last = stream.text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "server_shutting_down"
    assert text.text == "data: {}\n\n" and events.text == "data: {}\n\n"
    assert drain.in_flight == 0 and drain.draining
    refused = await httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1").get("/x")
    assert refused.status_code == 503


async def test_the_app_refuses_on_every_route_while_draining(tmp_path: Path) -> None:
    """The real app's stack: the hot OpenAI routes pass the guard too (they skip FastAPI's)."""
    drain: list[Drain] = []
    async with app_client(tmp_path, setup=lambda app: drain.append(app.state.drain)) as c:
        ok = await c.get("/health")
        assert ok.status_code == 200 and ok.json()["status"] == "ok"
        drain[0].begin()
        for method, path in [
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/embeddings"),
            ("GET", "/v1/models"),
            ("GET", "/models"),
        ]:
            body = {"model": "chat", "messages": HELLO} if method == "POST" else None
            r = await c.request(method, path, json=body)
            assert r.status_code == 503, path
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_draining"
        health = await c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"


@pytest.mark.real
@pytest.mark.parametrize("to", ["process", "group"])
def test_sigterm_lets_a_stream_finish_refuses_new_requests_then_exits(
    tmp_path: Path, models_dir: Path, make_client: MakeClient, to: str
) -> None:
    """SIGTERM to the server, or to its whole process group as systemd sends it (its control
    group) and `kill -TERM -PGID`: the workers got it too and died, cutting the stream with
    `worker_died` (found from outside); the router alone decides when they stop."""
    config = {"models_dir": str(models_dir), "drain_grace": 450}
    srv = Server(tmp_path, config).start(own_group=to == "group")
    try:
        client = make_client(srv)
        client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=1)  # loaded
        workers = srv.descendants()
        assert workers, "the model's worker process"
        chunks: list[Any] = []
        first = threading.Event()
        failure: list[BaseException] = []

        def read_stream() -> None:
            try:
                stream = client.chat.completions.create(
                    model=SMOL,
                    messages=[{"role": "user", "content": "Tell me a long story."}],
                    max_tokens=300,  # seconds of decoding, on any machine
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                for chunk in stream:
                    chunks.append(chunk)
                    first.set()
            except BaseException as exc:
                failure.append(exc)
                first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(60) and not failure
        assert srv.proc is not None
        if to == "group":
            os.killpg(srv.proc.pid, signal.SIGTERM)
        else:
            srv.proc.send_signal(signal.SIGTERM)

        health = _poll_draining(srv.url)
        assert health.json()["status"] == "draining"
        assert health.headers["retry-after"] == "1"
        refused = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"model": SMOL, "messages": HELLO, "max_tokens": 4},
            timeout=30,
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "server_draining"
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=4)
        assert info.value.status_code == 503
        assert srv.proc.poll() is None, "still serving the stream"

        reader.join(450)  # a loaded machine decodes ~8 tokens/s
        assert not failure, failure
        finished = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finished[-1] == "length", finished[-3:]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text) > 100
        assert srv.proc.wait(60) == -signal.SIGTERM  # by itself, as uvicorn ends on a signal
        assert not any(alive(pid) for pid in workers), "the model's worker stopped too"
    finally:
        srv.stop()


@pytest.mark.real
def test_ctrl_c_while_draining_answers_what_is_in_flight_and_stops_at_once(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    """A second signal skips the drain's wait (README): a stream in flight ends with the
    `server_shutting_down` error event, an answer not sent yet is a 503 in the envelope, and
    the process exits without waiting for them (it waited uvicorn's 5 s, after cutting them:
    a plain-text 500 and a stream cut mid-body, found from outside)."""
    srv = Server(tmp_path, {"models_dir": str(models_dir), "drain_grace": 450}).start()
    try:
        client = make_client(srv).with_options(max_retries=0, timeout=120)
        client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=1)  # loaded
        workers = srv.descendants()
        long = {
            "model": SMOL,
            "messages": HELLO,
            "max_tokens": 1500,
            "extra_body": {"ignore_eos": True},
        }
        got: dict[str, Any] = {}
        first = threading.Event()

        def stream() -> None:
            try:
                for _ in client.chat.completions.create(stream=True, **long):  # type: ignore[call-overload]
                    first.set()
            except BaseException as exc:
                got["stream"] = exc
            first.set()

        def answer() -> None:
            try:
                got["answer"] = client.chat.completions.create(**long)  # type: ignore[call-overload]
            except BaseException as exc:
                got["answer"] = exc

        readers = [threading.Thread(target=stream), threading.Thread(target=answer)]
        for reader in readers:
            reader.start()
        assert first.wait(60)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        _poll_draining(srv.url)
        srv.proc.send_signal(signal.SIGINT)
        for reader in readers:
            reader.join(60)
        assert isinstance(got["stream"], openai.APIError), got
        assert "stopped before this request ended" in str(got["stream"])
        assert isinstance(got["answer"], openai.InternalServerError), got
        assert got["answer"].status_code == 503 and got["answer"].code == "server_shutting_down"
        assert got["answer"].response.headers["retry-after"] == "1"
        # not after the 450 s of the grace; by a signal it was sent, as uvicorn ends
        assert srv.proc.wait(30) in (-signal.SIGTERM, -signal.SIGINT)
        assert not any(alive(pid) for pid in workers)
    finally:
        srv.stop()


def _poll_draining(url: str) -> httpx.Response:
    """The first /health answer after the signal that says draining (the signal is handled
    between two of the server's steps, not at once)."""
    for _ in range(600):
        r = httpx.get(url + "/health", timeout=10)
        if r.status_code == 503:
            return r
        threading.Event().wait(0.05)
    raise AssertionError("/health never said draining")
