"""Circuit breakers of remote targets shared by every router on one Redis (`redis_url`).

Each router keeps its own breakers (routing/breaker.py) and decides with them alone: the
request path never waits on Redis. What is shared are the verdicts: when a remote target's
breaker opens or closes by this router's own outcomes, the change is published on one
channel (by a task: nothing waits for it); every other router applies it to its breaker of
the same target as soon as the message arrives. So a target failing for one router is
skipped by all of them, and one success of a probe closes it everywhere.

Half-open stays sane with N routers: a router that adopted an open breaker half-opens
`hold` seconds after the one that opened it, so the opener's probe normally decides for
everyone (its "closed", or its "open" with a fresh cooldown, arrives first). If the opener is
gone, the others probe after the hold: at most one probe per router per cooldown.

An open breaker is also kept in Redis for one cooldown (a key per target), so a router that
starts later (or is restarted) begins with the breakers that are open (`catch_up`); one that
lost its subscription for a while learns of the others' breakers from their next change.
Local models are not shared: each router process has its own workers."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from ..redis_channel import Subscription
from .breaker import BreakerState, CircuitBreaker

__all__ = ["CHANNEL", "BreakerSync"]

log = logging.getLogger(__name__)
CHANNEL = "llm-router:breakers"
STATE = "llm-router:breaker:"  # + target: "open" while the breaker is open somewhere


class BreakerSync:
    """The breakers of this router's remote targets, told to and from the others."""

    def __init__(self, redis_url: str, hold: float = 1.0, cooldown: float = 30.0) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        self.hold = hold
        self.cooldown = cooldown
        self.me = uuid.uuid4().hex
        self.breakers: dict[str, CircuitBreaker] = {}
        self._subscription = Subscription(self.client, CHANNEL, self.apply, "breaker sync")
        self.subscribed = self._subscription.subscribed
        self._sends: set[asyncio.Task[None]] = set()

    def attach(self, target: str, breaker: CircuitBreaker) -> None:
        """Share `breaker`, the breaker of the remote target called `target`."""
        self.breakers[target] = breaker
        breaker.on_change = lambda state: self._publish(target, state)

    async def start(self, wait: float = 2.0) -> None:
        await self._subscription.start(wait)

    async def catch_up(self) -> None:
        """Adopt the breakers open in other routers now (one read, at start-up)."""
        names = list(self.breakers)
        if not names:
            return
        try:
            states = await self.client.mget([STATE + name for name in names])
        except Exception as exc:
            log.warning("could not read the shared breakers from Redis: %r", exc)
            return
        for name, state in zip(names, states, strict=True):
            if state is not None:
                self.breakers[name].adopt_open(self.hold)

    async def close(self) -> None:
        await self._subscription.stop()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        await self.client.aclose()

    def _publish(self, target: str, state: BreakerState) -> None:
        message = json.dumps({"from": self.me, "target": target, "state": str(state)})
        try:
            task = asyncio.get_running_loop().create_task(self._send(target, state, message))
        except RuntimeError:  # no loop (a breaker driven outside the server): nothing to tell
            return
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, target: str, state: BreakerState, message: str) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                if state is BreakerState.OPEN:
                    pipe.set(STATE + target, "open", px=max(1, int(self.cooldown * 1000)))
                else:
                    pipe.delete(STATE + target)
                pipe.publish(CHANNEL, message)
                await pipe.execute()
        except Exception as exc:  # the others decide alone meanwhile
            log.warning("could not share a breaker's state through Redis: %r", exc)

    def apply(self, data: Any) -> None:
        """Apply another router's verdict (a message of this channel)."""
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict) or event.get("from") == self.me:
            return
        breaker = self.breakers.get(str(event.get("target")))
        if breaker is None:
            return
        if event.get("state") == BreakerState.OPEN:
            breaker.adopt_open(self.hold)
        elif event.get("state") == BreakerState.CLOSED:
            breaker.adopt_closed()
