"""Continuous batching on the real model: many streams per model, same answers as alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from servers import GEMMA, SMOL, MakeClient, Server, new_server

PROMPTS = [f"Write a sentence about the number {i}." for i in range(8)]


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = new_server(
        tmp_path_factory.mktemp("batch"), models_dir=str(models_dir), model_defaults={"parallel": 8}
    )
    yield srv
    srv.stop()


def _stream_text(client: openai.OpenAI, prompt: str, **kwargs: Any) -> str:
    stream = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": prompt}], stream=True, **kwargs
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def _runtime(srv: Server, model: str = SMOL) -> dict[str, Any]:
    runtime: dict[str, Any] = srv.models()[model]["runtime"] or {}
    return runtime


def _settled_runtime(srv: Server, model: str = SMOL) -> dict[str, Any]:
    """The model's runtime once its counters have stopped moving. The worker reports them
    every second (worker/__main__.py's INFO_INTERVAL), so a read right after requests ended
    can miss their last tokens: a `before` read that way counted part of the lone runs as
    batched steps (165 steps for 172 tokens, in a full run)."""
    last = _runtime(srv, model)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(1.3)
        now = _runtime(srv, model)
        if now.get("decode_steps") == last.get("decode_steps"):
            return now
        last = now
    return last


def test_eight_streams_batched_same_text_as_alone(
    batch_server: Server, make_client: MakeClient
) -> None:
    client = make_client(batch_server)
    # Every stream runs its full 40 tokens (short answers would barely overlap in time).
    opts: dict[str, Any] = {"temperature": 0, "max_tokens": 40, "extra_body": {"ignore_eos": True}}
    alone = [_stream_text(client, p, **opts) for p in PROMPTS]
    before = _settled_runtime(batch_server)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _stream_text(client, p, **opts), PROMPTS))
    after = _settled_runtime(batch_server)
    assert together == alone
    steps = after["decode_steps"] - before["decode_steps"]
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert generated == 40 * len(PROMPTS), generated  # every token of the run, counted
    # One llama_decode per step serves many sequences: far fewer steps than tokens.
    assert steps < 0.6 * generated, (steps, generated)


def test_second_turn_reuses_the_prompt_cache(batch_server: Server, make_client: MakeClient) -> None:
    client = make_client(batch_server)
    turn1 = [{"role": "user", "content": "Name a fruit."}]
    first = client.chat.completions.create(model=SMOL, messages=turn1, temperature=0, max_tokens=16)
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And a vegetable?"},
    ]
    warm = client.chat.completions.create(model=SMOL, messages=turn2, temperature=0, max_tokens=16)
    assert warm.usage is not None and warm.usage.prompt_tokens_details is not None
    assert warm.usage.prompt_tokens_details.cached_tokens > 0
    httpx.post(batch_server.url + "/models/unload", json={"model": SMOL})
    batch_server.wait_status(SMOL, "unloaded")
    cold = client.chat.completions.create(model=SMOL, messages=turn2, temperature=0, max_tokens=16)
    assert cold.usage is not None and cold.usage.prompt_tokens_details is not None
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert cold.choices[0].message.content == warm.choices[0].message.content


def test_seeds_and_stops_hold_under_concurrency(
    batch_server: Server, make_client: MakeClient
) -> None:
    client = make_client(batch_server)
    jobs = [{"seed": s, "temperature": 1.0, "max_tokens": 24} for s in (11, 22, 33, 44)]
    jobs += [{"temperature": 0, "max_tokens": 40, "stop": [" the", "."]} for _ in range(4)]
    alone = [_stream_text(client, PROMPTS[i], **j) for i, j in enumerate(jobs)]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda ij: _stream_text(client, PROMPTS[ij[0]], **ij[1]), enumerate(jobs))
        )
    assert together == alone
    for text in together[4:]:
        assert " the" not in text and "." not in text


def test_disconnects_free_their_slots(batch_server: Server) -> None:
    """Eight long streams fill the eight slots; four clients hang up; four new requests start
    at once, while the four survivors are still generating."""
    body = {
        "model": GEMMA,
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "stream": True,
        "temperature": 0.8,
    }
    url = batch_server.url + "/v1/completions"
    stop_after = [threading.Event() for _ in range(8)]
    firsts: list[float] = []

    def stream(i: int, mark_first: bool = False) -> int:
        n = 0
        with httpx.stream("POST", url, json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and mark_first:
                    firsts.append(time.monotonic())
                    return 1  # a new request got its first token: that is all we need
                n += line.startswith("data: ")
                if i >= 0 and stop_after[i].is_set():
                    return n  # leaving the block closes the connection
        return n

    with ThreadPoolExecutor(12) as pool:
        old = [pool.submit(stream, i) for i in range(8)]
        deadline = time.monotonic() + 60
        while _runtime(batch_server, GEMMA).get("slots_busy", 0) < 8:
            assert time.monotonic() < deadline, "eight streams never ran together"
            time.sleep(0.05)
        for i in range(4):
            stop_after[i].set()
        for f in old[:4]:
            f.result(timeout=30)
        new = [pool.submit(stream, -1, True) for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(firsts) < 4:
            assert time.monotonic() < deadline, "new requests waited for the old ones"
            time.sleep(0.05)
        survivors_running = sum(not f.done() for f in old[4:])
        assert survivors_running == 4
        for i in range(4, 8):
            stop_after[i].set()
        for f in new + old[4:]:
            f.result(timeout=120)
