"""`llm-router bench MODEL`: tokens/s and time to first token at 1 stream and at N streams at
once, against a running server (`--url`, or one on the configured port) or, without one, a
server started in this process on a free loopback port (so both paths measure the same thing:
HTTP streaming through the router). Numbers are one run's: compare them within a run.

Every request says `Cache-Control: no-cache, no-store`: the response cache neither answers
nor keeps it, and identical requests in flight at once are not shared as one computation
(cache/service.py), so each stream is decoded by the model."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer

from .cli import ConfigOpt, ModelsDirOpt, _settings
from .cli_console import error
from .cli_http import UrlOpt, auth_headers, find_server, server_error
from .config import Settings

__all__ = ["register"]

PROMPT = "Write a short story about a robot who learns to paint."
# Neither read nor write the response cache; without a cache read or write nothing is
# single-flighted either: every request is computed.
NO_CACHE = {"Cache-Control": "no-cache, no-store"}


@dataclass(frozen=True, slots=True)
class Run:
    ttft: float  # seconds to the first content
    tokens: int  # completion tokens (the server's usage)
    seconds: float  # whole request


class BenchError(Exception):
    pass


async def _one(http: httpx.AsyncClient, body: dict[str, Any]) -> Run:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as res:
        if res.status_code != 200:
            await res.aread()
            raise BenchError(server_error(res))
        async for line in res.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise BenchError(chunk["error"]["message"])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return Run((first or end) - started, tokens, end - started)


async def _measure(url: str, body: dict[str, Any], streams: list[int]) -> list[dict[str, Any]]:
    rows = []
    limits = httpx.Limits(max_connections=max(streams) + 2)
    async with httpx.AsyncClient(
        base_url=url, headers={**auth_headers(), **NO_CACHE}, timeout=None, limits=limits
    ) as http:
        await _one(http, {**body, "max_tokens": 4})  # loads the model; not counted
        for n in streams:
            started = time.perf_counter()
            runs = await asyncio.gather(*(_one(http, body) for _ in range(n)))
            wall = time.perf_counter() - started
            tokens = sum(r.tokens for r in runs)
            rows.append(
                {
                    "streams": n,
                    "tokens": tokens,
                    "tokens_per_second": tokens / wall,
                    "per_stream_tokens_per_second": statistics.mean(
                        r.tokens / max(r.seconds - r.ttft, 1e-9) for r in runs
                    ),
                    "ttft_ms": 1000 * statistics.mean(r.ttft for r in runs),
                    "seconds": wall,
                }
            )
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _local_server(settings: Settings) -> Iterator[str]:
    """A server on this process's own thread, on a free loopback port, for the bench."""
    import uvicorn

    from .lifecycle.manager import ModelManager
    from .server.app import create_app

    port = _free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port})
    app = create_app(settings, ModelManager(settings))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="bench-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise BenchError("the in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def bench(
    model: Annotated[str, typer.Argument(help="Model or route.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    streams: Annotated[int, typer.Option(min=1, help="Concurrent streams of the second run.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens each answer generates.")] = 64,
    prompt: Annotated[str, typer.Option(help="The user message.")] = PROMPT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
) -> None:
    """Tokens/s and time to first token at 1 stream and at --streams at once (greedy, fixed
    length: the answers may not stop early), past the response cache: every answer is
    decoded."""
    settings = _settings(config, models_dir=models_dir, log_level="warning")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    counts = sorted({1, streams})
    server = find_server(url, settings)
    try:
        if server:
            rows, where = asyncio.run(_measure(server, body, counts)), server
        else:
            with _local_server(settings) as local:
                rows, where = asyncio.run(_measure(local, body, counts)), "in process"
    except BenchError as exc:
        error(exc)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(rows))
        return
    print(f"{model} ({where}), {max_tokens} tokens an answer")
    print(f"{'streams':>8} {'tok/s':>9} {'tok/s/stream':>13} {'TTFT ms':>9}")
    for r in rows:
        print(
            f"{r['streams']:>8} {r['tokens_per_second']:>9.1f} "
            f"{r['per_stream_tokens_per_second']:>13.1f} {r['ttft_ms']:>9.0f}"
        )


def register(app: typer.Typer) -> None:
    app.command()(bench)
