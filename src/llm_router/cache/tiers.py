"""Cache tiers: where answers are kept, by key, as bytes, each with its own TTL.

`MemoryTier`: an LRU bounded in bytes, in this process. `SqliteTier` (sqlite.py): one SQLite
file (survives restarts), bounded in bytes, least recently used first out. `RedisTier`: shared
by every router on the same Redis (`redis_url`). A tier that fails (Redis down, disk full) is
a miss and a warning, never a failed request."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ..logs import Occasional
from .lifetime import Stored, expiry
from .sqlite import SqliteTier

__all__ = ["MemoryTier", "RedisTier", "SqliteTier", "Tier"]

log = logging.getLogger(__name__)
_ENTRY_OVERHEAD = 120  # bytes an entry costs besides its key and value (dict slot, tuple...)


class Tier(Protocol):
    name: str

    async def get(self, key: str) -> Stored | None: ...

    async def set(self, key: str, value: bytes, until: float = 0.0) -> None:
        """Store `value`, expiring after this tier's TTL, or at `until` if sooner."""

    def touch(self, key: str) -> None:
        """`key` was served by a tier in front of this one (for this tier's recency)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryTier:
    """LRU of at most `max_bytes` (keys, values and a fixed overhead per entry). Not
    thread-safe; every call runs on the event loop and never awaits."""

    name = "memory"

    def __init__(
        self, max_bytes: int, ttl: float | None, evicted: Callable[[str, int], None] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.evicted = evicted  # ("size", 1) for each entry evicted to make room, ("too_large", 1)
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> Stored | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires and expires < time.time():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value, expires

    def set_now(self, key: str, value: bytes, until: float = 0.0) -> None:
        size = len(key) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_bytes:  # said, or a low hit ratio has no explanation
            if self.evicted is not None:
                self.evicted("too_large", 1)
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (expiry(self.ttl, until), value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            if self.evicted is not None:
                self.evicted("size", 1)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(key) + len(value) + _ENTRY_OVERHEAD

    async def get(self, key: str) -> Stored | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes, until: float = 0.0) -> None:
        self.set_now(key, value, until)

    def touch(self, key: str) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisTier:
    """Keys `llm-router:cache:<key>` in the Redis at `url`, expiring after `ttl` seconds."""

    name = "redis"
    prefix = "llm-router:cache:"

    def __init__(self, url: str, ttl: float | None) -> None:
        self.url = url
        self.ttl = ttl
        self._client: Any = None
        self.warn = Occasional(log)  # once per 10 s while Redis is down, not once a request

    async def start(self) -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise RuntimeError(
                "cache.redis needs the redis package: pip install 'llm-runner-router[redis]'"
            ) from None
        self._client = redis.asyncio.from_url(self.url)

    async def get(self, key: str) -> Stored | None:
        try:  # the value and its time left, in one round trip
            pipe = self._client.pipeline(transaction=False)
            value, left = await pipe.get(self.prefix + key).pttl(self.prefix + key).execute()
        except Exception as exc:  # redis' errors, OSError: a miss, never a failed request
            self.warn.warning("cache: redis tier failed to read: %s", exc)
            return None
        if value is None:
            return None
        return bytes(value), time.time() + left / 1000 if left > 0 else 0.0

    async def set(self, key: str, value: bytes, until: float = 0.0) -> None:
        expires = expiry(self.ttl, until)
        px = max(1, round((expires - time.time()) * 1000)) if expires else None
        try:
            await self._client.set(self.prefix + key, value, px=px)
        except Exception as exc:
            self.warn.warning("cache: redis tier failed to write: %s", exc)

    def touch(self, key: str) -> None:
        pass  # Redis' own policy (maxmemory-policy) decides what goes when it is full

    @property
    def client(self) -> Any:
        """The `redis.asyncio` client, once started (shared with the semantic index)."""
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
