"""The HTTP connection (server/connection.py), through a real `llm-router serve` and real
sockets: the deadline for a request's head, and the answers given without the app."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from openai_schema import validate
from servers import Server

MOST = 8  # max_connections of the server below
WAIT = 60.0  # seconds a socket read waits at most (a guard: the deadline is 1 s)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("connection")
    (workdir / "empty").mkdir()
    config = {
        "models_dir": str(workdir / "empty"),
        "provision_default_models": False,
        "max_connections": MOST,
        "header_timeout": 1,
    }
    server = Server(workdir, config).start()
    yield server
    server.stop()


def _open(srv: Server, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
    if first:
        sock.sendall(first)
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """What the server sent until it closed the connection: the head and the body."""
    received = b""
    with sock:
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def _envelope(body: bytes) -> dict[str, Any]:
    error = json.loads(body)
    validate("ErrorResponse", error)
    return dict(error["error"])


def test_a_connection_whose_head_never_ends_is_closed_at_header_timeout(srv: Server) -> None:
    """Connections that sent nothing, or half a request line, were held for good, and enough
    of them filled max_connections: every other client, /health included, was answered 503
    for as long as they stayed, no key needed (found from outside). A head not whole after
    `header_timeout` is a 408 and its connection closed; one that sent nothing is closed."""
    half = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: "
    few = [_open(srv, half if i % 2 else b"") for i in range(MOST - 2)]
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200  # meanwhile
    for i, sock in enumerate(few):
        head, body = _answer(sock)
        if i % 2:
            assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
            error = _envelope(body)
            assert error["code"] == "request_timeout" and "header_timeout" in error["message"]
        else:
            assert head == b""
    many = [_open(srv, half[: 5 + i]) for i in range(3 * MOST)]  # more than max_connections
    assert all(_answer(sock)[0].startswith(b"HTTP/1.1 408 ") for sock in many)
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


def test_the_next_head_on_a_kept_alive_connection_has_its_deadline_too(srv: Server) -> None:
    with _open(srv, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") as sock:
        received = b""
        while b'"status"' not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        head, body = _answer(sock)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert _envelope(body)["code"] == "request_timeout"


def test_bytes_that_are_no_request_are_a_400_envelope(srv: Server) -> None:
    head, body = _answer(_open(srv, b"\x16\x03\x01 not http\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    assert _envelope(body)["type"] == "invalid_request_error"


def test_over_max_connections_is_a_503_envelope_with_retry_after(srv: Server) -> None:
    """uvicorn's own 503 was `Service Unavailable` in text/plain: a client of the OpenAI API
    could not tell it from a broken proxy, nor when to try again."""
    with httpx.Client(timeout=10) as client, contextlib.ExitStack() as streams:
        for _ in range(MOST - 1):  # each a connection and a request in flight; then /health
            events = streams.enter_context(client.stream("GET", srv.url + "/models/events"))
            assert events.status_code == 200
        refused = httpx.get(srv.url + "/health", timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/json"
    error = _envelope(refused.content)
    assert error["code"] == "server_busy" and "max_connections" in error["message"]
    deadline = time.monotonic() + WAIT  # the streams' connections close as the server sees it
    while httpx.get(srv.url + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
