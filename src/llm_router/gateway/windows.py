"""Per-key sliding windows (requests or tokens per minute) in the `limits` library's storage,
as this process sees them: exact near the limit, batched far from it.

The storage (in memory, or Redis shared by several routers) holds each window; the library's
sliding-window counter decides an atomic check-and-charge there (`take`). This process keeps
a view of each window (`view`): the storage's count, read at most `stats_ttl` (0.1 s) ago,
less what this process counted since, its charges not yet stored included. While the view
leaves at least `local_share` (half) of the limit after a charge, the charge is taken on the
view (`local`): counted at once here, and stored with the other batched charges (`add`)
within `send_interval` (0.05 s), one storage call per window for many requests. Nearer the
limit every charge is a `take`, after this process's own unsent charges of that window.

So one process alone never passes a limit (its view never shows more than is left: the
sliding window's older half only weighs less as time goes). Processes sharing Redis each see
the others' charges up to about 0.15 s late (a view's age and the batching), so together they
can pass a limit only when the others charge more than half of it within those 0.15 s, and
then by at most what they charged in them. Charges may also be given back (negative) or be
more than is left (they fill the window, `fill`): that is usage known after the fact.

Nothing here blocks but the storage calls; `take` and `view` may raise the storage's errors
(Redis down), which the caller decides about; the batched sends log them and drop the
charges (limits must not take the service down)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from ..logs import Occasional

__all__ = ["Kind", "Windows"]

Kind = Literal["requests", "tokens"]
# The storage keys of a key's windows: the library's own namespace for requests (as before);
# tokens apart, so a key whose two limits are equal does not count both in one window.
_NAMESPACES: dict[str, str] = {"requests": "LIMITER", "tokens": "TOKENS"}
_EXPIRY = 60  # seconds: every window is per minute
log = logging.getLogger(__name__)


class _Window:
    """A window as this process sees it. `view`: [read at (monotonic), remaining, end of the
    current fixed window (clock time), base, previous window's count, current window's count],
    meaning `remaining - (counted - base)`, `counted` being all this process ever counted in
    it and `base` what of that the read held. `unsent`: charges counted here and not yet
    stored; `sending`: taken from `unsent` by a send under way."""

    __slots__ = ("counted", "key", "sending", "unsent", "view")

    def __init__(self, key: tuple[str, int, str]) -> None:
        self.key = key  # (kind, limit, key name): its storage key names the limit too
        self.view: list[float] | None = None
        self.counted = 0
        self.unsent = 0
        self.sending = 0


class Windows:
    def __init__(self, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.aligned = isinstance(storage, MemoryStorage)  # its windows: the clock's minutes
        self.clock = clock
        self.stats_ttl = 0.1
        self.local_share = 0.5
        self.send_interval = 0.05
        self._items: dict[tuple[str, int], RateLimitItem] = {}
        # one object a window, found with one lookup (a request asks three or four times)
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._unsent: dict[tuple[str, int, str], _Window] = {}  # those with unsent charges
        self._sender: asyncio.Task[None] | None = None
        self._warned = Occasional(log)

    def item(self, kind: str, limit: int) -> RateLimitItem:
        item = self._items.get((kind, limit))
        if item is None:
            item = RateLimitItemPerMinute(limit, namespace=_NAMESPACES[kind])
            self._items[(kind, limit)] = item
        return item

    def _window(self, kind: str, limit: int, name: str) -> _Window:
        key = (kind, limit, name)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(key)
        return window

    # -- the view ----------------------------------------------------------------------------

    async def view(
        self, kind: str, limit: int, name: str, fresh: bool = False
    ) -> tuple[int, float]:
        """(remaining, seconds to reset) of a window as this process sees it; read from the
        storage when the view is older than `stats_ttl` (or `fresh`)."""
        window = self._window(kind, limit, name)
        cached = None if fresh else self._fresh(window)
        if cached is None:
            cached = await self._read(window)
        return _left(cached, window), self._reset(cached, window, limit)

    def seen(self, kind: str, limit: int, name: str) -> tuple[int, int, float] | None:
        """`view` without a storage read: (limit, remaining, seconds to reset) when the view
        is fresh, else None."""
        window = self._windows.get((kind, limit, name))
        cached = None if window is None else self._fresh(window)
        if cached is None:
            return None
        return limit, _left(cached, window), self._reset(cached, window, limit)  # type: ignore[arg-type]

    def local(self, kind: str, limit: int, name: str, amount: int) -> tuple[int, int, float] | None:
        """Charge `amount` on this process's view, if the view is fresh and leaves at least
        `local_share` of the limit after it: (limit, remaining, seconds to reset); else None
        (nothing charged: ask the storage, `take`)."""
        window = self._windows.get((kind, limit, name))
        cached = None if window is None else self._fresh(window)
        if cached is None:
            return None
        left = _left(cached, window) - amount  # type: ignore[arg-type]
        if left < limit * self.local_share:
            return None
        self._add(window, amount)  # type: ignore[arg-type]
        return limit, left, self._reset(cached, window, limit)  # type: ignore[arg-type]

    def _fresh(self, window: _Window) -> list[float] | None:
        """The window's view when it was read at most `stats_ttl` ago, else None."""
        cached = window.view
        if cached is None or time.monotonic() - cached[0] > self.stats_ttl:
            return None
        return cached

    def forget(self, kind: str, limit: int, name: str) -> None:
        """Drop a window's view: the next look reads the storage."""
        window = self._windows.get((kind, limit, name))
        if window is not None:
            window.view = None

    def wait(self, kind: str, limit: int, name: str, amount: int) -> float:
        """Seconds until the window, as last read, has `amount` left (for a Retry-After): no
        sooner, so a client that waits that long is not refused again for the same reason
        (others' charges meanwhile aside). `amount` over the limit: the full reset."""
        window = self._windows.get((kind, limit, name))
        if window is None or window.view is None:
            return _EXPIRY
        return self._reset(window.view, window, min(amount, limit))

    def _reset(self, cached: list[float], window: _Window, amount: int) -> float:
        """Seconds until the window has `amount` left; `amount` = the limit: until it is
        whole again (OpenAI's `x-ratelimit-reset-*`). The library's sliding window counter
        weighs the previous fixed window's count by the part of the current one still to
        come, and counts the current one whole until it ends; then that one is the previous,
        fading over the next minute. It lets `amount` through when the weighted count,
        rounded down, is at most `room`: when the weighted previous count is under `room`
        less the current one, plus one (a wait taken from the exact weighted count was up to
        60 / previous seconds too long: 53 s where 34 s was enough)."""
        room = window.key[1] - amount  # the weighted count, rounded down, at most
        previous = cached[4]
        counted = window.counted - cached[3]
        current = cached[5] + counted if counted > 0 else cached[5]
        ends_in = cached[2] - self.clock()
        if ends_in < 0:
            ends_in = 0.0
        if current <= room:
            if previous <= 0:
                return 0.0
            return max(0.0, ends_in - (room - current + 1) * _EXPIRY / previous)
        return ends_in + _EXPIRY - (max(0, room) + 1) * _EXPIRY / current

    async def _read(self, window: _Window) -> list[float]:
        """Read a window from the storage into the view. What this process counted that the
        read may not hold is left out of it: its charges not stored yet, and whatever it counts
        while the read is under way (counted twice if the read holds it: the view errs on the
        side of less left, until the next read)."""
        kind, limit, name = window.key
        base = window.counted - window.unsent - window.sending
        item = self.item(kind, limit)
        storage: Any = self.storage  # the sliding window counter's own read, raw
        previous, previous_ttl, current, current_ttl = await storage.get_sliding_window(
            item.key_for(name), _EXPIRY
        )
        weighted = previous * previous_ttl / _EXPIRY + current  # as the library weighs it
        remaining = max(0, limit - math.floor(weighted))
        # when the current fixed window ends: the previous one's weight is gone then. The
        # memory storage's windows end on the clock's minutes, counted or not; a Redis window
        # with no count yet starts at its first charge, a minute from now at most
        if previous:
            ends_in = previous_ttl
        elif current or self.aligned:
            ends_in = current_ttl - _EXPIRY
        else:
            ends_in = _EXPIRY
        cached = [time.monotonic(), remaining, self.clock() + ends_in, base, previous, current]
        window.view = cached
        return cached

    # -- the storage -------------------------------------------------------------------------

    async def take(self, kind: str, limit: int, name: str, amount: int) -> tuple[bool, int, float]:
        """One atomic check-and-charge of `amount` in the storage (this process's unsent
        charges of the window stored first), then the window read afresh: (whether it was
        charged, remaining, seconds to reset)."""
        window = self._window(kind, limit, name)
        if self._unsent.pop(window.key, None) is not None and window.unsent:
            unsent, window.unsent = window.unsent, 0
            await self._send({window: unsent})
        ok = await self.strategy.hit(self.item(kind, limit), name, cost=amount)
        cached = await self._read(window)
        return ok, _left(cached, window), self._reset(cached, window, limit)

    async def hit(self, kind: str, limit: int, name: str, amount: int) -> bool:
        """One atomic check-and-charge in the storage, counted in the view if it was made
        (the view is not read again: see `take` for that)."""
        ok = await self.strategy.hit(self.item(kind, limit), name, cost=amount)
        if ok:
            self._window(kind, limit, name).counted += amount
        return ok

    def add(self, kind: str, limit: int, name: str, amount: int) -> None:
        """Count `amount` at once (negative: given back) and store it with the next batch."""
        self._add(self._window(kind, limit, name), amount)

    def _add(self, window: _Window, amount: int) -> None:
        window.counted += amount
        window.unsent += amount
        self._unsent[window.key] = window
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_later())

    async def fill(self, kind: str, limit: int, name: str, amount: int) -> None:
        """Store `amount` now, counted in the view; what is past the limit fills the window."""
        await self._store(kind, limit, name, amount)
        self._window(kind, limit, name).counted += amount

    async def _send_later(self) -> None:
        await asyncio.sleep(self.send_interval)
        await self.send()

    async def send(self) -> None:
        """Store the batched charges now."""
        windows, self._unsent = self._unsent, {}
        charges = {}
        for window in windows.values():
            if window.unsent:
                charges[window] = window.unsent
                window.unsent = 0
        await self._send(charges)

    async def _send(self, charges: dict[_Window, int]) -> None:
        for window, amount in charges.items():
            window.sending += amount
        for window, amount in charges.items():
            kind, limit, name = window.key
            try:
                await self._store(kind, limit, name, amount)
            finally:
                window.sending -= amount

    async def _store(self, kind: str, limit: int, name: str, amount: int) -> None:
        """Charge `amount` (counted already) in the storage: given back when negative; when
        more than is left, the window is filled (the rest is known usage, not lost: the window
        waits to slide)."""
        item = self.item(kind, limit)
        try:
            if amount < 0:
                await self.strategy.hit(item, name, cost=amount)
                return
            if amount == 0 or (
                amount <= limit and await self.strategy.hit(item, name, cost=amount)
            ):
                return
            stats = await self.strategy.get_window_stats(item, name)
            if stats.remaining > 0:
                await self.strategy.hit(item, name, cost=stats.remaining)
            self.forget(kind, limit, name)
        except Exception as exc:
            self.warn(exc)

    def warn(self, exc: Exception) -> None:
        self._warned.warning("rate limits not applied: the limits storage failed: %r", exc)

    async def close(self) -> None:
        """Store what is unsent (a send under way is finished, not cut)."""
        if self._sender is not None and not self._sender.done():
            await asyncio.wait([self._sender])
        await self.send()


def _left(cached: list[float], window: _Window) -> int:
    return int(cached[1] - (window.counted - cached[3]))
