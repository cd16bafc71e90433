"""Per-key rate limits: requests and tokens per minute through the `limits` library (its
sliding-window counter; in memory, or in Redis when several routers share the limits), and
requests in flight at once, counted in this process, or across every router sharing Redis
(leases that expire when a router dies: gateway/concurrency.py).

`admit` runs before a request (one request counted; the token window checked, not charged),
`admit_prompt` when a target is about to run the prompt (routing/admission.py: its tokens
charged, or the request refused while nothing is generated), `charge` after it (the rest of
its usage: the completion, and the difference between the prompt's count and its usage).
The `x-ratelimit-*` headers are those of `Admission.headers`, kept current as it goes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as redis
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from ..config import GatewaySettings
from ..errors import RateLimited
from .concurrency import SharedSlots
from .keys import ApiKey

__all__ = ["Admission", "Limiter", "reset_text"]

Header = tuple[bytes, bytes]
log = logging.getLogger(__name__)


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '120ms'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Effective:
    """A key's limits after the defaults: None is no limit."""

    rpm: int | None
    tpm: int | None
    max_concurrent: int | None


@dataclass
class Admission:
    """A request let in: what it holds (a concurrency slot), the headers to answer, and the
    prompt tokens charged so far (`admit_prompt`). The headers list is updated in place."""

    key: ApiKey
    limits: Effective
    headers: list[Header]
    holds_slot: bool = False
    lease: str | None = None  # the shared slot (Redis) this request holds
    limiter: Limiter | None = None
    prompt_charged: int = 0
    prompt_decided: bool = False

    async def admit_prompt(self, tokens: int) -> None:
        """routing/admission.py's PromptGate: see Limiter.admit_prompt."""
        if self.limiter is not None:
            await self.limiter.admit_prompt(self, tokens)


class Limiter:
    """The limits of every key. `storage` is memory or Redis (`redis_url`)."""

    def __init__(
        self,
        defaults: GatewaySettings,
        redis_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.defaults = defaults
        self._pool: redis.ConnectionPool | None = None
        self.slots: SharedSlots | None = None
        self.storage: Storage
        if redis_url:
            # Blocking: at most 64 connections; a request waits for one rather than failing.
            self._pool = redis.BlockingConnectionPool.from_url(
                redis_url, max_connections=64, timeout=5
            )
            self.storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="llm-router-limits",
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
            self.slots = SharedSlots(self._pool)
        else:
            self.storage = MemoryStorage()
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self.clock = clock
        self.in_flight: dict[str, int] = {}
        self._items: dict[int, RateLimitItem] = {}
        self._effective: dict[str, tuple[ApiKey, Effective]] = {}
        # Window reads for the headers and the token check: at most `stats_ttl` old, less what
        # this process counted since (the hits, which decide, always go to the storage).
        self.stats_ttl = 0.1
        self._stats: dict[tuple[str, str], list[float]] = {}
        self._warned = 0.0
        # Token charges, known once an answer is done, are summed per key and sent to the
        # storage every `send_interval` (this process counts them at once, see `_count`).
        self.batched = True
        self.send_interval = 0.05
        self._unsent: dict[tuple[int, str], int] = {}
        self._sender: asyncio.Task[None] | None = None

    def effective(self, key: ApiKey) -> Effective:
        cached = self._effective.get(key.hash)
        if cached is not None and cached[0] is key:
            return cached[1]
        d = self.defaults
        limits = Effective(
            key.rpm if key.rpm is not None else d.rpm,
            key.tpm if key.tpm is not None else d.tpm,
            key.max_concurrent if key.max_concurrent is not None else d.max_concurrent,
        )
        self._effective[key.hash] = (key, limits)  # replaced when the key's record is
        return limits

    def _item(self, amount: int) -> RateLimitItem:
        item = self._items.get(amount)
        if item is None:
            item = self._items[amount] = RateLimitItemPerMinute(amount)
        return item

    async def admit(self, key: ApiKey) -> Admission:
        """Count one request against `key`'s limits, or raise RateLimited (with the headers
        on `exc.headers`) when it is over one. If the storage (Redis) fails, the request is
        let in without limits, and that is logged: limits must not take the service down."""
        lim = self.effective(key)
        lease: str | None = None
        full = False
        if lim.max_concurrent is not None:
            if self.slots is None:
                full = self.in_flight.get(key.name, 0) >= lim.max_concurrent
            else:
                try:
                    lease = await self.slots.acquire(key.name, lim.max_concurrent)
                    full = lease is None
                except Exception as exc:
                    self._warn(exc)
        try:
            headers = await self._check(key, lim, full)
        except RateLimited:
            if lease is not None and self.slots is not None:
                self.slots.release(key.name, lease)
            raise
        except Exception as exc:  # redis errors, connection refused, timeouts
            self._warn(exc)
            headers = []
        admission = Admission(key, lim, headers, lease=lease, limiter=self)
        if lim.max_concurrent is not None:
            self.in_flight[key.name] = self.in_flight.get(key.name, 0) + 1
            admission.holds_slot = True
        return admission

    async def _check(self, key: ApiKey, lim: Effective, full: bool) -> list[Header]:
        headers: list[Header] = []
        refused: tuple[str, float] | None = None
        if full:
            refused = (f"{lim.max_concurrent} requests at once", 1.0)
        if lim.tpm is not None:
            remaining, reset = await self._window(self._item(lim.tpm), key.name, "tokens")
            headers += _headers("tokens", lim.tpm, remaining, reset)
            if remaining <= 0 and refused is None:
                refused = (f"{lim.tpm} tokens per minute", reset)
        if lim.rpm is not None:
            item = self._item(lim.rpm)
            ok = refused is None and await self.strategy.hit(item, key.name)
            if ok:
                self._count("requests", key.name, 1)
            remaining, reset = await self._window(item, key.name, "requests", fresh=not ok)
            headers += _headers("requests", lim.rpm, remaining, reset)
            if not ok and refused is None:
                refused = (f"{lim.rpm} requests per minute", reset)
        if refused is not None:
            what, wait = refused
            exc = RateLimited(
                f"Rate limit reached for key '{key.name}': {what}; try again in {reset_text(wait)}",
                retry_after=max(1.0, wait),
            )
            exc.headers = headers  # type: ignore[attr-defined]
            raise exc
        return headers

    async def _window(
        self, item: RateLimitItem, name: str, kind: str, fresh: bool = False
    ) -> tuple[int, float]:
        """(remaining, seconds to reset) of a key's window."""
        now = time.monotonic()
        cached = self._stats.get((kind, name))
        if cached is None or fresh or now - cached[0] > self.stats_ttl:
            stats = await self.strategy.get_window_stats(item, name)
            cached = self._stats[(kind, name)] = [now, stats.remaining, stats.reset_time, 0]
        return int(cached[1] - cached[3]), max(0.0, cached[2] - self.clock())

    def _count(self, kind: str, name: str, amount: int) -> None:
        cached = self._stats.get((kind, name))
        if cached is not None:
            cached[3] += amount

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._warned > 10:
            self._warned = time.monotonic()
            log.warning("rate limits not applied: the limits storage failed: %r", exc)

    def release(self, admission: Admission) -> None:
        if admission.holds_slot:
            admission.holds_slot = False
            if admission.lease is not None and self.slots is not None:
                self.slots.release(admission.key.name, admission.lease)
                admission.lease = None
            left = self.in_flight.get(admission.key.name, 1) - 1
            if left > 0:
                self.in_flight[admission.key.name] = left
            else:
                self.in_flight.pop(admission.key.name, None)

    async def admit_prompt(self, admission: Admission, tokens: int) -> None:
        """Charge a prompt's `tokens` before it runs, or raise RateLimited (x-ratelimit-*
        headers on `exc.headers`) when they are more than what is left of the key's tokens
        this minute: one atomic check-and-charge in the storage (Redis when shared), so two
        routers cannot both spend the last tokens. The first prompt of a request decides;
        later ones (another of `n` choices, a fallback target) are charged without refusal,
        and `charge` at the end makes the total the request's usage. A storage failure lets
        the prompt through, as `admit` does."""
        tpm = admission.limits.tpm
        if tpm is None or tokens <= 0:
            return
        name = admission.key.name
        admission.prompt_charged += tokens
        if admission.prompt_decided:
            self._batch(tpm, name, tokens)
            return
        admission.prompt_decided = True
        item = self._item(tpm)
        try:
            if self._unsent.get((tpm, name)):  # this router's own charges first
                await self._charge(tpm, name, self._unsent.pop((tpm, name)), counted=True)
            ok = await self.strategy.hit(item, name, cost=tokens)
            stats = await self.strategy.get_window_stats(item, name)
        except Exception as exc:
            self._warn(exc)
            return
        now = time.monotonic()
        self._stats[("tokens", name)] = [now, stats.remaining, stats.reset_time, 0]
        reset = max(0.0, stats.reset_time - self.clock())
        _replace(admission.headers, _headers("tokens", tpm, stats.remaining, reset))
        if ok:
            return
        admission.prompt_charged -= tokens
        what = (
            f"the prompt has {tokens} tokens, more than the {tpm} tokens per minute it may use"
            if tokens > tpm
            else f"the prompt has {tokens} tokens and {stats.remaining} of its {tpm} tokens "
            "per minute are left"
        )
        refusal = RateLimited(
            f"Rate limit reached for key '{name}': {what}; try again in {reset_text(reset)}",
            retry_after=max(1.0, reset),
        )
        refusal.headers = list(admission.headers)  # type: ignore[attr-defined]
        raise refusal

    async def charge(self, admission: Admission, tokens: int) -> None:
        """Count a finished request's `tokens` (its usage: prompt and completion) against the
        key's tokens per minute, less the prompt tokens `admit_prompt` charged already (when
        they were more, the difference is given back). Tokens past the limit fill the window
        (the next request waits for it to slide) rather than being lost. A key's charges are
        summed and sent together every `send_interval` (one storage call for many requests;
        other routers sharing Redis see them that much later)."""
        tpm = admission.limits.tpm
        tokens -= admission.prompt_charged
        admission.prompt_charged = 0
        if tpm is None or tokens == 0:
            return
        name = admission.key.name
        if not self.batched:
            await self._charge(tpm, name, tokens)
            return
        self._batch(tpm, name, tokens)

    def _batch(self, tpm: int, name: str, tokens: int) -> None:
        self._count("tokens", name, tokens)
        self._unsent[(tpm, name)] = self._unsent.get((tpm, name), 0) + tokens
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_later())

    async def _send_later(self) -> None:
        await asyncio.sleep(self.send_interval)
        await self.send_charges()

    async def send_charges(self) -> None:
        """Send the token charges gathered so far (Redis)."""
        unsent, self._unsent = self._unsent, {}
        for (tpm, name), tokens in unsent.items():
            await self._charge(tpm, name, tokens, counted=True)

    async def _charge(self, tpm: int, name: str, tokens: int, counted: bool = False) -> None:
        item = self._item(tpm)
        if tokens <= 0:  # tokens given back (a prompt counted higher than its usage)
            if tokens < 0:
                try:
                    await self.strategy.hit(item, name, cost=tokens)
                except Exception as exc:
                    self._warn(exc)
            return
        try:
            if await self.strategy.hit(item, name, cost=min(tokens, tpm)) and tokens <= tpm:
                if not counted:
                    self._count("tokens", name, tokens)
                return
            stats = await self.strategy.get_window_stats(item, name)
            if stats.remaining > 0:
                await self.strategy.hit(item, name, cost=stats.remaining)
            self._stats.pop(("tokens", name), None)
        except Exception as exc:
            self._warn(exc)

    async def close(self) -> None:
        """Send what is unsent and close the Redis connections (the counters stay: other
        routers share them)."""
        if self._sender is not None:
            self._sender.cancel()
        await self.send_charges()
        if self.slots is not None:
            await self.slots.close()
        if self._pool is not None:
            await self._pool.disconnect()


_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


def _replace(headers: list[Header], new: list[Header]) -> None:
    """`headers` with `new`'s names set to `new`'s values (in place)."""
    names = {name for name, _ in new}
    headers[:] = [h for h in headers if h[0] not in names] + new


def _headers(kind: str, limit: int, remaining: int, reset: float) -> list[Header]:
    limit_name, remaining_name, reset_name = _NAMES[kind]
    return [
        (limit_name, b"%d" % limit),
        (remaining_name, b"%d" % max(0, remaining)),
        (reset_name, reset_text(reset).encode()),
    ]
