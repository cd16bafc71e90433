"""Requests in flight per key, counted across every router that shares one Redis.

Each request in flight holds a lease: a member of the key's sorted set in Redis whose score is
its expiry (Redis's own clock, so the routers' clocks do not matter). Taking one is one Lua
script (drop the expired leases, count the rest, add this one if there is room): atomic, one
round trip. The router refreshes the expiry of the leases it holds every `ttl / 3` seconds (one
pipeline for all of them) and removes a lease when its request ends. A router that dies stops
refreshing: its leases expire within `ttl` seconds, so a crash never holds a key's slots for
longer than that.

Ending a request does not wait for Redis: the removal is sent by a task of its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: not every server talks to Redis (start-up time)
    import redis.asyncio as redis

__all__ = ["SharedSlots"]

log = logging.getLogger(__name__)

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""


class SharedSlots:
    """Leases of the requests in flight (see the module's docstring). `ttl` in seconds."""

    def __init__(
        self, pool: redis.ConnectionPool, prefix: str = "llm-router-slots", ttl: float = 15.0
    ) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.ttl = ttl
        self._me = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._acquire = self.client.register_script(_ACQUIRE)
        self._refresh = self.client.register_script(_REFRESH)
        self.held: dict[str, set[str]] = {}  # key name -> this router's leases
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def acquire(self, name: str, limit: int) -> str | None:
        """A lease on one of `name`'s `limit` slots, or None when they are all taken. Raises
        Redis's errors (the caller lets the request through, as for the other limits)."""
        lease = f"{self._me}:{next(self._ids)}"
        ok = await self._acquire(keys=[self._key(name)], args=[limit, int(self.ttl * 1000), lease])
        if not ok:
            return None
        self.held.setdefault(name, set()).add(lease)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._keep_alive(), name="gateway-slots")
        return lease

    def release(self, name: str, lease: str) -> None:
        """Give the slot back (sent by a task: the caller does not wait for Redis)."""
        leases = self.held.get(name)
        if leases is not None:
            leases.discard(lease)
            if not leases:
                del self.held[name]
        task = asyncio.create_task(self._remove(name, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, name: str, lease: str) -> None:
        try:
            await self.client.zrem(self._key(name), lease)
        except Exception as exc:  # it expires by itself within `ttl`
            log.warning("could not give back a slot of key %r in Redis: %r", name, exc)

    async def _keep_alive(self) -> None:
        """Refresh the expiry of every lease held, every ttl/3 seconds, while any is held."""
        while self.held:
            await asyncio.sleep(self.ttl / 3)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for name, leases in list(self.held.items()):
                        await self._refresh(
                            keys=[self._key(name)],
                            args=[int(self.ttl * 1000), *leases],
                            client=pipe,
                        )
                    await pipe.execute()
            except Exception as exc:
                log.warning("could not refresh the slots held in Redis: %r", exc)

    async def close(self) -> None:
        """Stop refreshing and give back what is held (a clean shutdown)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for name, leases in list(self.held.items()):
            with contextlib.suppress(Exception):
                await self.client.zrem(self._key(name), *leases)
        self.held.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
