"""The on-disk tier's bounds: at most `disk_bytes` of entries, the least recently used out first
(uses in the tiers in front count, and survive a restart), expired entries deleted and their
space given back, a file of the earlier schema carried over; and the eviction metrics through
the in-process server on the fake engine."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic
import pytest

from inproc import app_client
from llm_router.cache.sqlite import QUERIES, ROW_OVERHEAD, SqliteTier
from llm_router.cache.store import ResponseCache
from llm_router.cache.tiers import MemoryTier
from llm_router.config import Settings

VALUE = bytes(200)
ENTRY = len("k0") + len(VALUE) + ROW_OVERHEAD  # what one entry of these tests costs


def _stored(path: Path) -> tuple[set[str], int, int]:
    """The keys in the file, the bytes its entries take, and its own total (another
    connection: what is on disk, not what the tier believes)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, length(key) + length(value) FROM entries").fetchall()
        total = db.execute("SELECT bytes FROM totals").fetchone()[0]
    db.close()
    return {k for k, _ in rows}, sum(n + ROW_OVERHEAD for _, n in rows), int(total)


def _file_bytes(path: Path) -> int:
    """The database file and its write-ahead log."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@pytest.fixture
async def tier(tmp_path: Path) -> AsyncIterator[SqliteTier]:
    disk = SqliteTier(tmp_path / "cache.db", ttl=None, max_bytes=4 * ENTRY)
    await disk.start()
    yield disk
    await disk.close()


async def test_filling_past_the_cap_keeps_the_entries_under_it_oldest_used_out_first(
    tier: SqliteTier,
) -> None:
    for i in range(4):
        await tier.set(f"k{i}", VALUE)
    assert await tier.get("k0") == (VALUE, 0.0)  # k0 used after k1: k1 is now the least recent
    await tier.set("k4", VALUE)
    assert _stored(tier.path)[0] == {"k0", "k2", "k3", "k4"}
    for i in range(5, 10):
        await tier.set(f"k{i}", VALUE)
        keys, size, total = _stored(tier.path)
        assert size == total <= tier.max_bytes == 4 * ENTRY
    assert keys == {"k6", "k7", "k8", "k9"} and tier.bytes == 4 * ENTRY
    assert await tier.get("k1") is None and await tier.get("k9") == (VALUE, 0.0)
    await tier.set("huge", bytes(5 * ENTRY))  # larger than the whole tier: kept nowhere
    assert await tier.get("huge") is None and await tier.get("k9") == (VALUE, 0.0)


async def test_a_read_keeps_an_entry_and_its_use_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    first = SqliteTier(path, ttl=None, max_bytes=3 * ENTRY)
    await first.start()
    for i in range(3):
        await first.set(f"k{i}", VALUE)
    assert await first.get("k0") == (
        VALUE,
        0.0,
    )  # the only use after k2 was written: not yet on disk
    await first.close()  # ...written at close
    second = SqliteTier(path, ttl=None, max_bytes=3 * ENTRY)
    await second.start()
    try:
        await second.set("k3", VALUE)
        assert await second.get("k0") == (VALUE, 0.0) and await second.get("k1") is None
    finally:
        await second.close()


async def test_hits_in_the_memory_tier_keep_the_entry_on_disk(tmp_path: Path) -> None:
    disk = SqliteTier(tmp_path / "cache.db", ttl=None, max_bytes=3 * ENTRY)
    cache = ResponseCache([MemoryTier(10 * ENTRY, ttl=None), disk])
    await cache.start()
    try:
        for i in range(3):
            cache.put(f"k{i}", VALUE)
            await asyncio.sleep(0.01)  # distinct use times on disk
        assert await cache.get("k0") == VALUE  # a memory hit: the disk tier never read it
        for i in range(3, 5):
            cache.put(f"k{i}", VALUE)
        await asyncio.gather(*cache._writes)
        keys, _, _ = _stored(disk.path)
    finally:
        await cache.close()
    assert keys == {"k0", "k3", "k4"}


async def test_expired_entries_are_deleted_and_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    evicted: dict[str, int] = {}
    disk = SqliteTier(
        path,
        ttl=1.0,  # longer than writing the 100 entries takes, even on a busy machine
        max_bytes=1 << 30,
        prune_interval=0.05,
        evicted=lambda reason, rows: evicted.update({reason: evicted.get(reason, 0) + rows}),
    )
    await disk.start()
    try:
        for i in range(100):
            await disk.set(f"k{i}", bytes(20_000))
        full = _file_bytes(path)
        for _ in range(400):  # the timer prunes while nothing is written (20 s at most)
            await asyncio.sleep(0.05)
            keys, size, total = _stored(path)
            if not keys and _file_bytes(path) < full // 10:
                break
        emptied = _file_bytes(path)
    finally:
        await disk.close()
    assert keys == set() and size == total == 0 and disk.bytes == 0
    assert evicted == {"expired": 100}
    assert full > 2_000_000 and emptied < full // 10


async def test_a_file_of_the_earlier_schema_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL)")
        db.executemany("INSERT INTO cache VALUES (?, ?, 0)", [(f"k{i}", VALUE) for i in range(5)])
    db.close()
    disk = SqliteTier(path, ttl=None, max_bytes=3 * ENTRY)
    await disk.start()
    try:
        carried, size, total = _stored(path)  # the cap holds from the start
        assert len(carried) == 3 and size == total <= 3 * ENTRY
        assert all([await disk.get(key) == (VALUE, 0.0) for key in carried])
        await disk.set("k9", VALUE)
        keys, size, total = _stored(path)
    finally:
        await disk.close()
    assert "k9" in keys and len(keys) == 3 and size == total <= 3 * ENTRY


async def test_no_statement_of_a_read_or_a_write_reads_the_whole_table(tier: SqliteTier) -> None:
    for i in range(50):
        await tier.set(f"k{i}", VALUE)
    with sqlite3.connect(tier.path) as db:
        db.execute("ANALYZE")  # with statistics too, the planner keeps to the indexes
        plans = {
            name: " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
            for name, sql in QUERIES.items()
            for args in [(None,) * sql.count("?")]
        }
    db.close()
    for name, plan in plans.items():  # a full read of a table is a SCAN without an index
        scans = [step for step in plan.split(" / ") if step.startswith("SCAN")]
        assert all("USING" in step and "INDEX" in step for step in scans), (name, plan)
    assert "entries_used" in plans["oldest"] and "entries_expires" in plans["expired"]


def test_disk_bytes_must_be_a_size() -> None:
    assert Settings().cache.disk_bytes == "1GiB"
    with pytest.raises(pydantic.ValidationError, match="disk_bytes"):
        Settings(cache={"disk_bytes": 0})  # type: ignore[arg-type]


async def test_evictions_and_tier_sizes_are_on_the_metrics(tmp_path: Path) -> None:
    cache = {"memory_bytes": "2KiB", "disk_path": str(tmp_path / "c.db"), "disk_bytes": "2KiB"}
    async with app_client(tmp_path, cache=cache) as client:
        for i in range(12):
            body = {
                "model": "chat",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "temperature": 0,
                "max_tokens": 8,
            }
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
        await asyncio.sleep(0.1)  # the disk writes run in the background
        await client.post("/v1/chat/completions", json=body)  # ...and one more after them
        metrics = (await client.get("/metrics")).text
    samples = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("llm_router_cache_")
    )
    evicted_disk = float(samples['llm_router_cache_evictions_total{reason="size",tier="disk"}'])
    evicted_memory = float(samples['llm_router_cache_evictions_total{reason="size",tier="memory"}'])
    assert evicted_disk > 0 and evicted_memory > 0
    assert 0 < float(samples['llm_router_cache_bytes{tier="disk"}']) <= 2048
    assert 0 < float(samples['llm_router_cache_bytes{tier="memory"}']) <= 2048


async def test_a_server_with_another_max_tokens_limit_does_not_get_the_others_answers(
    tmp_path: Path,
) -> None:
    """An answer of 8 words stored by a server was served whole by one restarted with
    `max_tokens_limit: 2` on the same disk tier (found from outside), and the other way round."""
    cache = {"disk_path": str(tmp_path / "c.db")}
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 8,
    }
    answers = []
    for limit in (32768, 2, 32768):
        async with app_client(tmp_path, cache=cache, max_tokens_limit=limit) as client:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            answers.append(
                (r.headers["x-llm-router-cache"], r.json()["usage"]["completion_tokens"])
            )
    assert answers[1] == ("miss", 2)
    assert answers[2][0] == "hit" and answers[2][1] == answers[0][1] > 2


async def test_the_settings_a_remote_target_is_sent_with_are_part_of_its_identity(
    tmp_path: Path,
) -> None:
    """`forward_fields` decides which of a request's fields a remote target gets: routers
    sharing a tier with other lists would share answers to requests the upstream saw apart."""
    from fastapi import FastAPI

    from llm_router.cache import Identities
    from llm_router.config import ModelConfig

    remote = ModelConfig(id="up", provider="openai", base_url="http://127.0.0.1:9/v1")
    identities = []
    for settings in ({}, {"forward_fields": ["top_k"]}, {"max_tokens_limit": 5}, {}):
        apps: list[FastAPI] = []
        async with app_client(tmp_path, setup=apps.append, models=[remote], **settings):
            identities.append(await Identities(apps[0].state.dispatcher).of("up"))
    assert identities[0] == identities[3]
    assert len(set(identities)) == 3
