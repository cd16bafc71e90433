"""Key changes told to every router at once through Redis pub/sub (`redis_url`).

A router that creates or revokes a key, and `llm-router keys create|revoke`, write the database
first, then publish `{"event": "revoked"|"created", "name": ...}` on one channel. Every router
subscribed to it applies a revocation to the keys it holds in memory as soon as the message
arrives (well under a second), then re-reads the keys from the database. Polling
(`gateway.refresh_interval`) stays as it was: it is what works without Redis, and what
catches a message lost while a router was disconnected from Redis.

Nothing here is on a request's path: the subscriber is one background task, reconnecting with
a backoff when Redis goes away."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..redis_channel import Subscription

if TYPE_CHECKING:  # imported where used: not every server talks to Redis (start-up time)
    import redis.asyncio as redis

__all__ = ["CHANNEL", "KeyEvents", "publish", "publish_once"]

log = logging.getLogger(__name__)
CHANNEL = "llm-router:keys"
Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def publish(client: redis.Redis, event: str, name: str) -> None:
    await client.publish(CHANNEL, json.dumps({"event": event, "name": name}))


async def publish_once(redis_url: str, event: str, name: str) -> None:
    """Publish one event from a short-lived process (the CLI); a Redis that is down is
    logged, not raised: the routers' polling still sees the change."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await publish(client, event, name)
    except (redis.RedisError, OSError) as exc:
        log.warning("could not tell the routers through Redis (%r); they poll for it", exc)
    finally:
        await client.aclose()


class KeyEvents:
    """The subscription of one router: `handler` is awaited for each event (in the
    subscriber's task; its errors are logged)."""

    def __init__(self, redis_url: str, handler: Handler) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        self.handler = handler
        self._subscription = Subscription(self.client, CHANNEL, self._handle, "key events")
        self.subscribed = self._subscription.subscribed  # set once listening

    async def start(self, wait: float = 2.0) -> None:
        await self._subscription.start(wait)

    async def publish(self, event: str, name: str) -> None:
        import redis.asyncio as redis

        try:
            await publish(self.client, event, name)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not tell the other routers through Redis (%r); they poll", exc)

    async def close(self) -> None:
        await self._subscription.stop()
        await self.client.aclose()

    async def _handle(self, data: Any) -> None:
        try:
            event = json.loads(data)
            if not isinstance(event, dict):
                return
            await self.handler(event)
        except Exception:
            log.exception("key events: could not apply %r", data)
