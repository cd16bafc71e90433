"""Cache tiers on their own (memory LRU in bytes, TTLs, SQLite across instances) and the
Redis tier shared by two routers, against a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from inproc import app_client
from llm_router.cache.store import ResponseCache
from llm_router.cache.tiers import MemoryTier, RedisTier, SqliteTier
from llm_router.config import Settings
from llm_router.errors import ConfigError

CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
    "max_tokens": 5,
}


async def test_the_memory_tier_keeps_at_most_its_bytes_least_recently_used_first() -> None:
    evicted: list[tuple[str, int]] = []
    tier = MemoryTier(max_bytes=1000, ttl=None, evicted=lambda *e: evicted.append(e))
    for i in range(10):
        await tier.set(f"k{i}", bytes(200))
        assert tier.bytes <= 1000
    assert len(tier) < 10 and await tier.get("k0") is None and await tier.get("k9") is not None
    survivor = next(f"k{i}" for i in range(10) if tier.get_now(f"k{i}") is not None)
    await tier.set("new", bytes(200))  # the oldest not read since goes, the one just read stays
    assert tier.get_now(survivor) is not None
    await tier.set("huge", bytes(5000))  # larger than the whole tier: not kept, nothing lost
    assert await tier.get("huge") is None and tier.get_now(survivor) is not None
    assert evicted[-1] == ("too_large", 1) and ("size", 1) in evicted  # it was silent


async def test_an_expired_entry_is_a_miss() -> None:
    tier = MemoryTier(max_bytes=10_000, ttl=0.01)
    await tier.set("k", b"v")
    await asyncio.sleep(0.03)
    assert await tier.get("k") is None and tier.bytes == 0


async def test_the_sqlite_tier_keeps_answers_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.db"
    first = SqliteTier(path, ttl=None)
    await first.start()
    await first.set("k", b"value")
    await first.close()
    second = SqliteTier(path, ttl=None)
    await second.start()
    try:
        assert await second.get("k") == (b"value", 0.0) and await second.get("other") is None
    finally:
        await second.close()


async def test_a_hit_copied_to_the_memory_tier_keeps_the_time_it_had_left(
    tmp_path: Path, redis_url: str
) -> None:
    """A disk or Redis hit copied into memory got a whole new TTL there: an answer cached
    with `ttl: 30s` was served 39 s later (found from outside). The copy now expires when the
    entry it came from does."""
    for slow in (SqliteTier(tmp_path / "c.db", ttl=0.6), RedisTier(redis_url, ttl=0.6)):
        await slow.start()
        memory = MemoryTier(max_bytes=10_000, ttl=0.6)
        cache = ResponseCache([memory, slow])
        key = uuid.uuid4().hex
        try:
            await slow.set(key, b"answer")
            await asyncio.sleep(0.35)  # a while in the slow tier: its copy gets what is left
            assert await cache.get(key) == b"answer" and memory.get_now(key) is not None
            await asyncio.sleep(0.4)  # past the entry's TTL, within the copy's own
            assert await cache.get(key) is None, slow.name
        finally:
            await cache.close()


async def test_a_failing_redis_is_a_miss_not_an_error() -> None:
    tier = RedisTier("redis://127.0.0.1:1/0", ttl=60)  # nothing listens on port 1
    await tier.start()
    try:
        await tier.set("k", b"v")
        assert await tier.get("k") is None
    finally:
        await tier.close()


async def test_two_routers_share_answers_through_redis(tmp_path: Path, redis_url: str) -> None:
    cache = {"enabled": True, "memory_bytes": 0, "redis": True}
    body = {**CHAT, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    async with (
        app_client(a, cache=cache, redis_url=redis_url) as one,
        app_client(b, cache=cache, redis_url=redis_url) as two,
    ):
        computed = await one.post("/v1/chat/completions", json=body)
        shared = await _until_hit(two, body)
        metrics = (await two.get("/metrics")).text
    assert computed.headers["x-llm-router-cache"] == "miss"
    assert shared.json()["choices"] == computed.json()["choices"]
    assert 'llm_router_cache_lookups_total{result="hit",tier="redis"}' in metrics


async def _until_hit(client: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    """The write to Redis runs in the background: ask until it has landed (a few ms)."""
    for _ in range(100):
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"cache-control": "no-store"}
        )
        if response.headers["x-llm-router-cache"] == "hit":
            return response
        await asyncio.sleep(0.02)
    raise AssertionError("the answer never reached the other router")


def test_a_redis_tier_without_redis_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        ResponseCache.from_settings(Settings(cache={"redis": True}))  # type: ignore[arg-type]


async def test_a_redis_that_is_down_is_one_warning_for_a_burst_not_one_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two warnings a request while Redis was down (the tier's read, the semantic index's):
    each is logged once for a burst (found from outside)."""
    from llm_router.cache.shared import SharedVectors

    tier = RedisTier("redis://127.0.0.1:1/0", ttl=60)  # nothing listens on port 1
    shared = SharedVectors(tier, "embedder", max_entries=10)
    await tier.start()
    try:
        with caplog.at_level("WARNING"):
            for _ in range(5):
                assert await tier.get("k") is None
                assert await shared.since("group", "-") == ("-", [])
    finally:
        await tier.close()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("cache: redis tier failed to read")
    assert lines[1].startswith("semantic cache: reading shared vectors from redis failed")
