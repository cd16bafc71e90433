"""Cache tiers: where answers are kept, by key, as bytes, each with its own TTL.

`MemoryTier`: an LRU bounded in bytes, in this process. `SqliteTier`: one SQLite file
(survives restarts), used through the standard library's `sqlite3` on one thread of its own:
a key-value table needs no ORM or async driver, one connection on one thread needs no
locking, and the memory tier in front takes the hot keys. `RedisTier`: shared by every router
on the same Redis (`redis_url`). A tier that fails (Redis down, disk full) is a miss and a
warning, never a failed request."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

__all__ = ["MemoryTier", "RedisTier", "SqliteTier", "Tier"]

log = logging.getLogger(__name__)
_ENTRY_OVERHEAD = 120  # bytes an entry costs besides its key and value (dict slot, tuple...)


class Tier(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryTier:
    """LRU of at most `max_bytes` (keys, values and a fixed overhead per entry). Not
    thread-safe; every call runs on the event loop and never awaits."""

    name = "memory"

    def __init__(self, max_bytes: int, ttl: float | None) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires and expires < time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def set_now(self, key: str, value: bytes) -> None:
        size = len(key) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        expires = time.monotonic() + self.ttl if self.ttl is not None else 0.0
        self._entries[key] = (expires, value)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(key) + len(value) + _ENTRY_OVERHEAD

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes) -> None:
        self.set_now(key, value)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class SqliteTier:
    """A table `cache(key, value, expires)` in the file at `path`, in WAL mode. Expired rows
    are deleted at start and every `prune_every` writes."""

    name = "disk"

    def __init__(self, path: Path, ttl: float | None, prune_every: int = 1000) -> None:
        self.path = path
        self.ttl = ttl
        self.prune_every = prune_every
        self._writes = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="cache-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "expires REAL NOT NULL)"
        )
        self._db = db
        self._prune()

    def _prune(self) -> None:
        assert self._db is not None
        self._db.execute("DELETE FROM cache WHERE expires > 0 AND expires < ?", (time.time(),))

    def _get(self, key: str) -> bytes | None:
        assert self._db is not None
        row = self._db.execute("SELECT value, expires FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] and row[1] < time.time()):
            return None
        return bytes(row[0])

    def _set(self, key: str, value: bytes) -> None:
        assert self._db is not None
        expires = time.time() + self.ttl if self.ttl is not None else 0.0
        self._db.execute(
            "INSERT OR REPLACE INTO cache (key, value, expires) VALUES (?, ?, ?)",
            (key, value, expires),
        )
        self._writes += 1
        if self._writes % self.prune_every == 0:
            self._prune()

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._run(self._get, key)
        except sqlite3.Error as exc:
            log.warning("cache: disk tier %s failed to read: %s", self.path, exc)
            return None
        return value

    async def set(self, key: str, value: bytes) -> None:
        try:
            await self._run(self._set, key, value)
        except sqlite3.Error as exc:
            log.warning("cache: disk tier %s failed to write: %s", self.path, exc)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._thread.shutdown(wait=True)


class RedisTier:
    """Keys `llm-router:cache:<key>` in the Redis at `url`, expiring after `ttl` seconds."""

    name = "redis"
    prefix = "llm-router:cache:"

    def __init__(self, url: str, ttl: float | None) -> None:
        self.url = url
        self.ttl = ttl
        self._client: Any = None

    async def start(self) -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise RuntimeError(
                "cache.redis needs the redis package: pip install 'llm-runner-router[redis]'"
            ) from None
        self._client = redis.asyncio.from_url(self.url)

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._client.get(self.prefix + key)
        except Exception as exc:  # redis' errors, OSError: a miss, never a failed request
            log.warning("cache: redis tier failed to read: %s", exc)
            return None
        return value

    async def set(self, key: str, value: bytes) -> None:
        ex = max(1, round(self.ttl)) if self.ttl is not None else None
        try:
            await self._client.set(self.prefix + key, value, ex=ex)
        except Exception as exc:
            log.warning("cache: redis tier failed to write: %s", exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
