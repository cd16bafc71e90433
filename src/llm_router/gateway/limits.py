"""Per-key rate limits: requests and tokens per minute, as sliding windows of the `limits`
library (in memory, or in Redis when several routers share the limits: gateway/windows.py),
and requests in flight at once, counted in this process, or across every router sharing Redis
(leases that expire when a router dies: gateway/concurrency.py).

`admit_now`, else `admit`, runs before a request (one request counted; the token window
checked, not charged), `Admission.admit_prompt` when a target is about to run the prompt
(routing/admission.py: `prompt_now`, else `take_prompt`: its tokens and its `max_tokens`
charged, or the request refused while nothing is generated), `charge` after it (its usage
less what was charged: the unused part of `max_tokens` given back, a completion without
`max_tokens` charged).
The `x-ratelimit-*` headers are those of `Admission.headers`: made once, when the response
starts, from what the admission last saw of each window (`Admission.views`).

Exact near the limit, batched far from it (gateway/windows.py): a prompt's tokens are charged
on this router's view of the key's window while it leaves half the limit after them, else by
one atomic check-and-charge in the storage; so are requests with the limits in memory. With
Redis every request is one atomic hit there (requests per minute hold exactly across routers),
and routers sharing Redis can together let prompts past a key's tokens per minute only when
the others spend more than half of it within about 0.15 s (how late one router sees the
others' charges), and then by at most what they spent in those 0.15 s."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limits.aio.storage import MemoryStorage, RedisStorage, Storage

from ..config import GatewaySettings
from ..errors import RateLimited
from .concurrency import SharedSlots
from .keys import ApiKey
from .windows import Windows

if TYPE_CHECKING:  # imported where used: not every server talks to Redis (start-up time)
    import redis.asyncio as redis

__all__ = ["Admission", "Limiter", "reset_text"]

Header = tuple[bytes, bytes]


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '120ms'; rounded up (the window is whole then,
    not a moment before)."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Effective:
    """A key's limits after the defaults: None is no limit."""

    rpm: int | None
    tpm: int | None
    max_concurrent: int | None


View = tuple[int, int, float]  # a window as a request last saw it: (limit, remaining, reset)


@dataclass(slots=True)
class Admission:
    """A request let in: what it holds (a concurrency slot), what it saw of its windows (for
    the headers it answers), and the prompt tokens charged so far (`admit_prompt`)."""

    key: ApiKey
    limits: Effective
    views: dict[str, View]  # "tokens", "requests" -> View, in the headers' order
    holds_slot: bool = False
    lease: str | None = None  # the shared slot (Redis) this request holds
    limiter: Limiter | None = None
    prompt_charged: int = 0
    prompt_decided: bool = False

    async def admit_prompt(self, tokens: int, completion: int = 0) -> None:
        """routing/admission.py's PromptGate: Limiter.prompt_now, else Limiter.take_prompt,
        for the prompt's `tokens` and the `completion` tokens reserved with it."""
        if self.limiter is not None and not self.limiter.prompt_now(self, tokens + completion):
            await self.limiter.take_prompt(self, tokens, completion)

    def header_list(self) -> list[Header]:
        """The `x-ratelimit-*` headers of what the request saw last (called when the response
        starts: server/front.py)."""
        return _headers(self.views)

    headers = property(header_list)


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
        storage: Storage
        if redis_url:
            # Blocking: at most 64 connections; a request waits for one rather than failing.
            import redis.asyncio as redis

            self._pool = redis.BlockingConnectionPool.from_url(
                redis_url, max_connections=64, timeout=5
            )
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="llm-router-limits",
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
            self.slots = SharedSlots(self._pool)
        else:
            storage = MemoryStorage()
        self.shared = redis_url is not None  # other routers count in the same windows
        self.windows = Windows(storage, clock)
        self.in_flight: dict[str, int] = {}
        self._effective: dict[str, tuple[ApiKey, Effective]] = {}
        # Charges known once an answer is done are batched (windows.add); False: stored at once.
        self.batched = True

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

    def admit_now(self, key: ApiKey) -> Admission | None:
        """`admit` when this process's fresh views decide it alone, far from every limit and
        with no storage call (in memory, or a Redis key's tokens): the Admission; else None,
        nothing counted (then `admit`, which asks the storage). Most requests are let in
        here, without the coroutines of the storage path."""
        lim = self.effective(key)
        if lim.max_concurrent is not None and (
            self.slots is not None or self.in_flight.get(key.name, 0) >= lim.max_concurrent
        ):
            return None
        views: dict[str, View] = {}
        windows, name = self.windows, key.name
        if lim.tpm is not None:
            seen = windows.seen("tokens", lim.tpm, name)
            if seen is None or seen[1] <= 0:
                return None
            views["tokens"] = seen
        if lim.rpm is not None:  # last: the only one that counts
            taken = None if self.shared else windows.local("requests", lim.rpm, name, 1)
            if taken is None:
                return None
            views["requests"] = taken
        admission = Admission(key, lim, views, limiter=self)
        if lim.max_concurrent is not None:
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
            admission.holds_slot = True
        return admission

    async def admit(self, key: ApiKey) -> Admission:
        """Count one request against `key`'s limits, or raise RateLimited (with the headers
        on `exc.headers`) when it is over one. If the storage (Redis) fails, the request is
        let in without limits, and that is logged: limits must not take the service down."""
        lim = self.effective(key)
        if lim.rpm is None and lim.tpm is None and lim.max_concurrent is None:
            return Admission(key, lim, {})
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
                    self.windows.warn(exc)
        try:
            views = await self._check(key, lim, full)
        except RateLimited:
            if lease is not None and self.slots is not None:
                self.slots.release(key.name, lease)
            raise
        except Exception as exc:  # redis errors, connection refused, timeouts
            self.windows.warn(exc)
            views = {}
        admission = Admission(key, lim, views, lease=lease, limiter=self)
        if lim.max_concurrent is not None:
            self.in_flight[key.name] = self.in_flight.get(key.name, 0) + 1
            admission.holds_slot = True
        return admission

    async def look(self, key: ApiKey) -> list[Header]:
        """The `x-ratelimit-*` headers of `key`'s windows as they are, nothing counted: for
        an answer refused before its admission (an allow-list's 404, a budget's 429). None
        when the storage fails (logged)."""
        lim = self.effective(key)
        views: dict[str, View] = {}
        try:
            for kind, limit in (("tokens", lim.tpm), ("requests", lim.rpm)):
                if limit is not None:
                    views[kind] = (limit, *await self.windows.view(kind, limit, key.name))
        except Exception as exc:  # redis errors: no headers rather than no answer
            self.windows.warn(exc)
            return []
        return _headers(views)

    async def _check(self, key: ApiKey, lim: Effective, full: bool) -> dict[str, View]:
        views: dict[str, View] = {}
        refused: tuple[str, float] | None = None
        windows, name = self.windows, key.name
        if full:
            at_once = lim.max_concurrent
            refused = (f"{at_once} request{'s' if at_once != 1 else ''} at once", 1.0)
        if lim.tpm is not None:
            remaining, reset = await windows.view("tokens", lim.tpm, name)
            views["tokens"] = (lim.tpm, remaining, reset)
            if remaining <= 0 and refused is None:
                refused = (f"{lim.tpm} tokens per minute", windows.wait("tokens", lim.tpm, name, 1))
        if lim.rpm is not None:
            ok, remaining, reset = await self._request(lim.rpm, name, refused is None)
            views["requests"] = (lim.rpm, remaining, reset)
            if not ok and refused is None:
                wait = windows.wait("requests", lim.rpm, name, 1)
                refused = (f"{lim.rpm} requests per minute", wait)
        if refused is not None:
            what, wait = refused
            exc = RateLimited(
                f"Rate limit reached for key '{name}': {what}; try again in {reset_text(wait)}",
                retry_after=max(1.0, wait),
            )
            exc.headers = _headers(views)  # type: ignore[attr-defined]
            raise exc
        return views

    async def _request(self, rpm: int, name: str, wanted: bool) -> tuple[bool, int, float]:
        """Count one request if `wanted`: (whether it was counted, remaining, reset). Shared
        (Redis): one atomic hit each, so the routers together hold the limit exactly. In
        memory (this process the only one counting): on the view far from the limit."""
        windows = self.windows
        if not wanted:
            return (False, *await windows.view("requests", rpm, name, fresh=True))
        if self.shared:
            ok = await windows.hit("requests", rpm, name, 1)
            return (ok, *await windows.view("requests", rpm, name, fresh=not ok))
        taken = windows.local("requests", rpm, name, 1)
        if taken is not None:
            return (True, taken[1], taken[2])
        return await windows.take("requests", rpm, name, 1)

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

    def prompt_now(self, admission: Admission, tokens: int) -> bool:
        """Charge a prompt's `tokens` before it runs, when no storage call is needed: True,
        charged; else False, nothing charged, and `take_prompt` decides. The first prompt of
        a request decides: far from the limit on this router's view of the window (no
        storage call), near it in the storage; later ones (another of `n` choices, a
        fallback target) are charged without refusal, and `charge` at the end makes the
        total the request's usage."""
        tpm = admission.limits.tpm
        if tpm is None or tokens <= 0:
            return True
        windows, name = self.windows, admission.key.name
        if admission.prompt_decided:
            admission.prompt_charged += tokens
            windows.add("tokens", tpm, name, tokens)
            return True
        taken = windows.local("tokens", tpm, name, tokens)
        if taken is None:
            return False
        admission.prompt_charged += tokens
        admission.prompt_decided = True
        admission.views["tokens"] = taken
        return True

    async def take_prompt(self, admission: Admission, prompt: int, completion: int = 0) -> None:
        """A first prompt `prompt_now` could not decide: one atomic check-and-charge in the
        storage (Redis when shared), so two routers cannot both spend the last tokens; or
        RateLimited (x-ratelimit-* headers on `exc.headers`) when `tokens` are more than what
        is left of the key's tokens this minute. A storage failure lets the prompt through, as
        `admit` does."""
        tpm = admission.limits.tpm
        assert tpm is not None
        windows, name = self.windows, admission.key.name
        tokens = prompt + completion
        admission.prompt_charged += tokens
        admission.prompt_decided = True
        try:
            ok, remaining, reset = await windows.take("tokens", tpm, name, tokens)
        except Exception as exc:
            windows.warn(exc)
            return
        admission.views["tokens"] = (tpm, remaining, reset)
        if ok:
            return
        admission.prompt_charged -= tokens
        admission.prompt_decided = False  # refused: the next prompt (another target) decides
        asked = (
            f"the prompt ({prompt} tokens) and max_tokens ({completion}) need {tokens} tokens"
            if completion
            else f"the prompt has {prompt} tokens"
        )
        if tokens > tpm:  # as OpenAI's "Request too large": no wait makes it fit
            refusal = RateLimited(
                f"Request too large for key '{name}' on tokens per minute: limit {tpm}, "
                f"{asked}; make the prompt{' or max_tokens' if completion else ''} smaller "
                "(waiting will not help)",
                retry_after=None,
            )
        else:  # the wait until they fit, not the window's full reset
            wait = windows.wait("tokens", tpm, name, tokens)
            refusal = RateLimited(
                f"Rate limit reached for key '{name}': {asked} and {max(0, remaining)} of "
                f"its {tpm} tokens per minute are left; try again in {reset_text(wait)}",
                retry_after=max(1.0, wait),
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
        if self.batched:
            self.windows.add("tokens", tpm, admission.key.name, tokens)
        else:
            await self.windows.fill("tokens", tpm, admission.key.name, tokens)

    async def send_charges(self) -> None:
        """Store the charges batched so far (Redis)."""
        await self.windows.send()

    async def close(self) -> None:
        """Store what is unsent and close the Redis connections (the counters stay: other
        routers share them)."""
        await self.windows.close()
        if self.slots is not None:
            await self.slots.close()
        if self._pool is not None:
            await self._pool.disconnect()


_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}".encode() for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


def _headers(views: dict[str, View]) -> list[Header]:
    """The three headers of each window in `views`; the limit's header and whole seconds'
    reset texts made once (on the request path: once a response)."""
    headers: list[Header] = []
    for kind, (limit, remaining, reset) in views.items():
        limit_header = _LIMIT_HEADERS.get((kind, limit))
        if limit_header is None:
            limit_header = _LIMIT_HEADERS[(kind, limit)] = (_NAMES[kind][0], b"%d" % limit)
        names = _NAMES[kind]
        whole = math.ceil(reset)
        text = _RESET_SECONDS[whole] if 1 <= reset and whole < 120 else reset_text(reset).encode()
        headers += (limit_header, (names[1], b"%d" % max(0, remaining)), (names[2], text))
    return headers


_LIMIT_HEADERS: dict[tuple[str, int], Header] = {}
_RESET_SECONDS = [reset_text(float(s)).encode() for s in range(120)]
