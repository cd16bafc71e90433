"""A Redis pub/sub channel one router listens to in the background (`redis_url`): the key
events of the gateway and the shared breakers of remote targets.

The listener is one task that subscribes, hands each message's data to `on_message`, and
reconnects with a backoff (0.1 s doubling up to 5 s) when Redis goes away; `subscribed` is set
while it listens, so start-up and tests can wait for it. Nothing here is on a request's path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: not every server talks to Redis (start-up time)
    import redis.asyncio as redis

__all__ = ["Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """Listens to `channel` on `client` once started; `on_message` gets each message's data
    (awaited when it returns an awaitable). The owner closes the client."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        on_message: Callable[[Any], Awaitable[None] | None],
        what: str,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_message = on_message
        self.what = what  # for the log: whose subscription was lost
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait: float = 2.0) -> None:
        """Start listening; waits up to `wait` seconds for the subscription (a Redis that is
        down does not hold the start up: the task keeps trying)."""
        self._task = asyncio.create_task(self._listen(), name=self.what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            done = self.on_message(message.get("data"))
                            if done is not None:
                                await done
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarting: try again, slower each time
                self.subscribed.clear()
                log.warning("%s: Redis subscription lost (%r); retrying", self.what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
