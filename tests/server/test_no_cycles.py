"""A request leaves no reference cycle of the server's objects behind: they are freed when the
request ends, not by a pass of the garbage collector (which the server runs rarely, see
server/run.py `tune_gc`; a cycle per request made it walk every request in flight at c=64)."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from inproc import app_client

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable from here on (kept, not freed)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_requests_leave_no_cycle_of_the_servers_objects(
    tmp_path: Path, saved_garbage: list[object]
) -> None:
    async with app_client(tmp_path) as client:
        for _ in range(3):  # warm: caches and lazy imports are not garbage
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        gc.collect()
        saved_garbage.clear()
        for stream in (False, True, False, True):
            body = {**CHAT, "stream": stream}
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        gc.collect()
        ours = Counter(
            type(o).__qualname__
            for o in saved_garbage
            if type(o).__module__.startswith("llm_router.")
        )
    assert not ours, ours
