"""The response cache: tiers read in order (memory, disk, Redis), a hit copied into the
tiers before it, writes to every tier, and single flight: concurrent requests for one key
wait for the first one's answer instead of computing it again.

Reads and the memory write happen before the answer is returned; writes to the slower tiers
run in the background (a miss never waits for the disk or the network)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import Settings
from ..errors import ConfigError
from ..units import parse_bytes, parse_duration
from .tiers import MemoryTier, RedisTier, SqliteTier, Tier

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["Flight", "ResponseCache"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Flight:
    """One computation others wait for: `value` is the answer's bytes once stored, or None if
    it failed, was cancelled or was not cacheable (the waiters then compute their own)."""

    leader: bool
    future: asyncio.Future[bytes | None]

    async def wait(self) -> bytes | None:
        return await asyncio.shield(self.future)


class ResponseCache:
    def __init__(self, tiers: list[Tier], metrics: Metrics | None = None) -> None:
        self.tiers = tiers
        self.metrics = metrics
        self.memory = next((t for t in tiers if isinstance(t, MemoryTier)), None)
        self._flights: dict[str, asyncio.Future[bytes | None]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> ResponseCache:
        cfg = settings.cache
        default = parse_duration(cfg.ttl)
        tiers: list[Tier] = []

        def ttl(value: str | float | None) -> float | None:
            return default if value is None else parse_duration(value)

        memory = parse_bytes(cfg.memory_bytes, 0)
        if memory > 0:
            evicted = _evictions(metrics, "memory", ("size", "too_large"))
            tiers.append(MemoryTier(memory, ttl(cfg.memory_ttl), evicted))
        if cfg.disk_path is not None:
            disk = parse_bytes(cfg.disk_bytes, 0)
            evicted = _evictions(metrics, "disk", ("size", "expired", "too_large"))
            tiers.append(SqliteTier(cfg.disk_path, ttl(cfg.disk_ttl), disk, evicted=evicted))
        if cfg.redis:
            if not settings.redis_url:
                raise ConfigError("cache.redis is true but redis_url is not set")
            tiers.append(RedisTier(settings.redis_url, ttl(cfg.redis_ttl)))
        cache = cls(tiers, metrics)
        if metrics is not None:
            metrics.registry.register(_SizeCollector(cache))
        return cache

    async def start(self) -> None:
        for tier in self.tiers:
            await tier.start()

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        for tier in self.tiers:
            await tier.close()

    def _count(self, tier: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels(tier, result).inc()

    async def get(self, key: str) -> bytes | None:
        """The answer stored under `key` (copied into the tiers before the one that had it)."""
        for i, tier in enumerate(self.tiers):
            stored = await tier.get(key)
            if stored is None:
                self._count(tier.name, "miss")
                continue
            self._count(tier.name, "hit")
            value, expires = stored
            self._store(self.tiers[:i], key, value, expires)  # with the time it has left
            for behind in self.tiers[i + 1 :]:
                behind.touch(key)  # used: not the least recently used behind this tier either
            return value
        return None

    def put(self, key: str, value: bytes) -> None:
        """Store `value` in the memory tier now, in the others in the background."""
        self._store(self.tiers, key, value)

    def _store(self, tiers: list[Tier], key: str, value: bytes, until: float = 0.0) -> None:
        for tier in tiers:
            if isinstance(tier, MemoryTier):
                tier.set_now(key, value, until)
                continue
            self.background(tier.set(key, value, until))

    def background(self, write: Coroutine[Any, Any, None]) -> None:
        """Run `write` (to a slower tier) in the background; `close` waits for it."""
        task = asyncio.create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def flight(self, key: str) -> Flight:
        """Join the computation of `key` in progress, or lead a new one (then `land` it)."""
        future = self._flights.get(key)
        if future is not None:
            return Flight(False, future)
        future = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return Flight(True, future)

    def land(self, key: str, flight: Flight, value: bytes | None) -> None:
        """The leader's outcome, for its waiters."""
        if flight.leader and self._flights.get(key) is flight.future:
            del self._flights[key]
        if not flight.future.done():
            flight.future.set_result(value)

    @contextlib.asynccontextmanager
    async def leading(self, key: str, flight: Flight) -> AsyncIterator[list[bytes]]:
        """Around a leader's computation: what it appends to the yielded list (one entry) is
        stored and handed to its waiters; on an error they get None and compute their own."""
        out: list[bytes] = []
        try:
            yield out
        finally:
            value = out[0] if out else None
            if value is not None:
                self.put(key, value)
            self.land(key, flight, value)


def _evictions(
    metrics: Metrics | None, tier: str, reasons: tuple[str, ...]
) -> Callable[[str, int], None] | None:
    """A tier's eviction callback: counts on `llm_router_cache_evictions_total`, where the
    `reasons` it evicts for show 0 from the start (a dashboard reads 0, not "no data")."""
    if metrics is None:
        return None
    counter = metrics.cache_evictions
    for reason in reasons:
        counter.labels(tier, reason)

    def evicted(reason: str, rows: int) -> None:
        counter.labels(tier, reason).inc(rows)

    return evicted


class _SizeCollector(Collector):
    """`llm_router_cache_bytes{tier}`: what the memory and disk tiers hold (read at scrape
    time; the disk tier's as of its last write)."""

    def __init__(self, cache: ResponseCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llm_router_cache_bytes", "Bytes held by a response cache tier", labels=["tier"]
        )
        for tier in self._cache.tiers:
            if isinstance(tier, (MemoryTier, SqliteTier)):
                family.add_metric([tier.name], tier.bytes)
        yield family
