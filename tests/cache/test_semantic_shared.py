"""The semantic index shared through Redis: a router gets a semantic hit for a request whose
near-duplicate another router computed. In-process on the fake engine against a real Redis
(the plumbing, and the control: without the Redis tier the second router misses), and through
two real server processes on the bundled SmolLM2 and all-MiniLM-L6-v2 with the openai client."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from test_semantic import warm_up

from inproc import app_client
from llm_router import defaults
from servers import SMOL, MakeClient, Server, link_models


def _chat(text: str, stop: str) -> dict[str, object]:
    # a stop string of this test's own: its own group and keys in the session's shared Redis
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 4,
        "stop": [stop],
    }


async def _ask_until_hit(client: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    """Ask (without storing) until the other router's background writes have landed."""
    response = None
    for _ in range(50):
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"cache-control": "no-store"}
        )
        assert response.status_code == 200, response.text
        if response.headers["x-llm-router-cache"] == "hit":
            break
        await asyncio.sleep(0.02)
    assert response is not None
    return response


@pytest.mark.parametrize("redis", [True, False])
async def test_a_router_gets_a_near_duplicate_another_router_computed(
    tmp_path: Path, redis_url: str, redis: bool
) -> None:
    cache = {"redis": redis, "semantic": {"model": "chat", "threshold": 2.0}}  # all are near
    stop = uuid.uuid4().hex
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    async with (
        app_client(tmp_path / "a", cache=cache, redis_url=redis_url) as one,
        app_client(tmp_path / "b", cache=cache, redis_url=redis_url) as two,
    ):
        first = await one.post("/v1/chat/completions", json=_chat("one question", stop))
        near = await _ask_until_hit(two, _chat("another question", stop))
        metrics = (await two.get("/metrics")).text
    assert first.headers["x-llm-router-cache"] == "miss"
    if not redis:  # the control: each router's index is its own
        assert near.headers["x-llm-router-cache"] == "miss"
        return
    assert near.headers["x-llm-router-cache"] == "hit"
    assert near.headers["x-llm-router-route"].startswith("cache semantic distance=")
    assert near.json()["choices"] == first.json()["choices"]
    assert 'llm_router_cache_lookups_total{result="hit",tier="semantic"} 1.0' in metrics


@pytest.fixture(scope="module")
def semantic_pair(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, redis_url: str
) -> Iterator[tuple[Server, Server]]:
    folder = link_models(tmp_path_factory.mktemp("shared-semantic-models"), smollm2_gguf)
    assert defaults.place_minilm(folder) is not None
    config = {
        "models_dir": str(folder),
        "watch_interval": 0,
        "redis_url": redis_url,
        "cache": {
            "enabled": True,
            "redis": True,
            "semantic": {"model": defaults.MINILM_ID, "threshold": 0.1},
        },
    }
    servers = [Server(tmp_path_factory.mktemp(f"shared-semantic-{i}"), config) for i in (1, 2)]
    try:
        for srv in servers:
            srv.start()
            warm_up(srv)
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.stop()


def _ask(client: openai.OpenAI, question: str, stop: str, **extra: object) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=SMOL,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=12,
        stop=[stop],
        **extra,  # type: ignore[arg-type]
    )
    return raw.headers["x-llm-router-cache"], raw.parse().choices[0].message.content or ""


def test_a_paraphrase_asked_of_a_second_router_is_served_from_the_first_ones_answer(
    semantic_pair: tuple[Server, Server], make_client: MakeClient
) -> None:
    first, second = (make_client(srv) for srv in semantic_pair)
    stop = uuid.uuid4().hex
    outcome, answer = _ask(first, "What is the capital of France?", stop)
    assert outcome == "miss" and answer
    no_store = {"extra_headers": {"Cache-Control": "no-store"}}
    for _ in range(50):  # the first router writes to Redis in the background
        outcome, paraphrased = _ask(second, "What's the capital city of France?", stop, **no_store)
        if outcome == "hit":
            break
        time.sleep(0.05)
    assert (outcome, paraphrased) == ("hit", answer)
    assert _ask(second, "Write a short poem about the sea.", stop)[0] == "miss"
    metrics = httpx.get(semantic_pair[1].url + "/metrics", timeout=10).text
    assert 'llm_router_cache_lookups_total{result="hit",tier="semantic"} 1.0' in metrics
