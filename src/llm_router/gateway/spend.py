"""Keys' spend shared by the routers of one Redis (`redis_url`), so a budget holds across them
within a fraction of a second instead of the database's refresh (~2 s, each router then
spending the whole budget again).

Each router adds the cost of its finished requests to a key's counter for the period
(`INCRBYFLOAT`, batched every `interval`), and reads every budgeted key's counter back at the
same pace; the gateway checks a budget against the larger of that total and its own database
view (gateway/service.py), so a Redis that lost its data, or is down, changes nothing but
the lag. Nothing here is on a request's path: one background task per router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..logs import Occasional

__all__ = ["SharedSpend"]

log = logging.getLogger(__name__)
PREFIX = "llm-router-spend"
_KEEP = 32 * 86400  # seconds a period's counter outlives its start (a month and a day)

Budgeted = Callable[[], dict[str, float]]  # key name -> its period's start


class SharedSpend:
    def __init__(self, redis_url: str, budgeted: Budgeted, interval: float = 0.1) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self.budgeted = budgeted
        self.interval = interval
        self.totals: dict[str, float] = {}  # key name -> the period's spend, all routers
        self._unsent: dict[tuple[str, float], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._warned = Occasional(log, every=60)

    def add(self, name: str, period_start: float, cost: float) -> None:
        """This router's spend, sent with the next batch (and counted here at once)."""
        key = (name, period_start)
        self._unsent[key] = self._unsent.get(key, 0.0) + cost
        self.totals[name] = self.totals.get(name, 0.0) + cost

    def spent(self, name: str) -> float:
        """The key's spend this period as last read, with this router's since."""
        return self.totals.get(name, 0.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shared-spend")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception as exc:  # Redis down: the database's view still holds
                self._warned.warning("budgets: the spend in Redis could not be synced: %r", exc)

    async def sync(self) -> None:
        """Send this router's spend, then read every budgeted key's total."""
        unsent, self._unsent = self._unsent, {}
        budgeted = list(self.budgeted().items())
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for (name, start), cost in unsent.items():
                    counter = _counter(name, start)
                    pipe.incrbyfloat(counter, cost)
                    pipe.expire(counter, _KEEP)
                for name, start in budgeted:
                    pipe.get(_counter(name, start))
                replies = await pipe.execute()
        except BaseException:
            for key, cost in unsent.items():  # sent at the next sync
                self._unsent[key] = self._unsent.get(key, 0.0) + cost
            raise
        read = replies[2 * len(unsent) :]
        totals = {
            name: float(value or 0.0) for (name, _), value in zip(budgeted, read, strict=True)
        }
        for (name, _), cost in self._unsent.items():  # added while the pipeline ran
            totals[name] = totals.get(name, 0.0) + cost
        self.totals = totals

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            try:
                await self.sync()  # what is unsent: the others see it
            except Exception as exc:
                log.warning("budgets: the last spend could not be sent to Redis: %r", exc)
        await self.client.aclose()


def _counter(name: str, period_start: float) -> str:
    return f"{PREFIX}:{int(period_start)}:{name}"
