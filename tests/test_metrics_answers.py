"""What /metrics counts of each answer, in-process on the fake engine: a response-cache hit is
an answered request like any other in latency, time to first token and tokens (it was in the
requests counter only), and a stream the client left has its estimated tokens counted, as
its API key is charged them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inproc import app_client, fake_models

HI = [{"role": "user", "content": "hi"}]


async def _scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await client.get("/metrics")).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_cache_hit_counts_in_latency_ttft_and_tokens(tmp_path: Path) -> None:
    """Hits were left out of the latency histograms (the fastest answers missing) and of the
    tokens per model (which then differed from the keys' usage, where hits count): found from
    outside. A hit is still told apart by its outcome, and costs nothing."""
    chat = {"model": "chat", "messages": HI, "temperature": 0, "max_tokens": 4}
    embed = {"model": "chat", "input": "hi"}
    async with app_client(tmp_path) as client:
        answers = [await client.post("/v1/chat/completions", json=chat) for _ in range(2)]
        vectors = [await client.post("/v1/embeddings", json=embed) for _ in range(2)]
        got = await _scrape(client)
    assert [r.headers["x-llm-router-cache"] for r in (*answers, *vectors)] == ["miss", "hit"] * 2
    usage = answers[0].json()["usage"]
    hit = {"model": "chat", "endpoint": "chat", "outcome": "cache_hit"}
    assert _get(got, "llm_router_requests_total", **hit) == 1
    chat_labels = {"model": "chat", "endpoint": "chat"}
    assert _get(got, "llm_router_request_duration_seconds_count", **chat_labels) == 2
    assert _get(got, "llm_router_time_to_first_token_seconds_count", model="chat") == 2
    embedded = vectors[0].json()["usage"]["prompt_tokens"]
    prompt = 2 * usage["prompt_tokens"] + 2 * embedded
    assert _get(got, "llm_router_tokens_total", model="chat", kind="prompt") == prompt
    completion = 2 * usage["completion_tokens"]
    assert _get(got, "llm_router_tokens_total", model="chat", kind="completion") == completion
    embeddings = {"model": "chat", "endpoint": "embeddings"}
    assert _get(got, "llm_router_request_duration_seconds_count", **embeddings) == 2
    assert _get(got, "llm_router_requests_total", **embeddings, outcome="cache_hit") == 1


async def test_a_stream_the_client_left_counts_its_estimated_tokens(tmp_path: Path) -> None:
    """The key was charged the estimate of a stream cut by its client (the prompt, and the
    text sent), and /metrics counted no token of it."""
    models = fake_models(tmp_path, slow={"token_seconds": 0.01})
    body = {"model": "slow", "messages": HI, "max_tokens": 1000, "stream": True}
    async with app_client(tmp_path, models=models) as client:
        asked = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        while not _get(
            await _scrape(client), "llm_router_time_to_first_token_seconds_count", model="slow"
        ):
            assert not asked.done(), asked.result().text
            await asyncio.sleep(0.01)
        asked.cancel()  # the client leaves
        with contextlib.suppress(asyncio.CancelledError):
            await asked
        got = await _scrape(client)
    cut = {"model": "slow", "endpoint": "chat", "outcome": "cancelled"}
    assert _get(got, "llm_router_requests_total", **cut) == 1
    assert _get(got, "llm_router_tokens_total", model="slow", kind="prompt") > 0
    assert _get(got, "llm_router_tokens_total", model="slow", kind="completion") > 0
