"""Live statistics of one target, as the router measures them; strategies read snapshots.

Pure bookkeeping: no asyncio, no I/O, no locks. Every method runs in O(window) at worst and
never blocks, so the router calls them inline on the event loop. The clock is injectable
(`time.monotonic` by default) so tests drive time by hand. Not thread-safe: one event loop owns
a `TargetStats`."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Clock", "TargetSnapshot", "TargetStats"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """What a strategy sees of a target at one instant. Times are seconds; None is "not yet
    measured". `error_rate` is over the sliding window (0.0 when the window is empty)."""

    latency: float | None = None
    ttft: float | None = None
    tokens_per_second: float | None = None
    error_rate: float = 0.0
    outcomes: int = 0
    in_flight: int = 0
    queued: int = 0
    loaded: bool = True
    cold_load_seconds: float = 0.0


_MEASURED = 0.25  # decode speed counts when the tokens came over this share of the latency


class TargetStats:
    """EWMA latency, time-to-first-token and decode speed, a sliding error window, and the
    target's current load. The router calls, per request:

    `record_start()` when it sends the request; `record_first_token(s)` when the first token
    arrives; then exactly one of `record_success(latency, tokens, ttft=)`, `record_failure()`
    or `record_cancelled()` (client went away: neither a success nor the target's fault).

    The error window keeps the last `window_size` outcomes that are at most `window_seconds`
    old (whichever is fewer)."""

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        window_size: int = 100,
        window_seconds: float = 60.0,
        loaded: bool = True,
        cold_load_seconds: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if window_size < 1 or window_seconds <= 0:
            raise ValueError("the error window needs a positive size and duration")
        self.alpha = alpha
        self.window_seconds = window_seconds
        self.loaded = loaded
        self.cold_load_seconds = cold_load_seconds
        self.in_flight = 0
        self.queued = 0
        self.failures = 0  # since the start, retried or not (a counter for /metrics)
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=window_size)
        self._latency: float | None = None
        self._ttft: float | None = None
        self._tps: float | None = None
        self._measured_load: float | None = None

    def record_start(self) -> None:
        self.in_flight += 1

    def record_first_token(self, seconds: float) -> None:
        self._ttft = self._ewma(self._ttft, seconds)

    def record_success(
        self, latency: float, completion_tokens: int, *, ttft: float | None = None
    ) -> None:
        """A request finished well after `latency` seconds. Decode speed is measured over the
        time after the first token when `ttft` is given, over the whole latency otherwise. An
        answer whose text came nearly all at once at the end (a constrained tool call, held
        until it is whole) says nothing of the decode speed: not counted (it read 77,000
        tokens/s, and speed-priority routes by this)."""
        self._finish()
        self._latency = self._ewma(self._latency, latency)
        decode = latency - ttft if ttft is not None else latency
        if completion_tokens > 0 and decode > _MEASURED * latency:
            self._tps = self._ewma(self._tps, completion_tokens / decode)
        self._outcomes.append((self._clock(), True))

    def record_failure(self, *, finished: bool = False) -> None:
        """A request failed because of the target (transport error, timeout, 5xx, crash).
        `finished`: it was already recorded as cancelled (a timeout that a health check made
        afterwards found to be the target's), so its slot is not freed again."""
        self.failures += 1
        if not finished:
            self._finish()
        self._outcomes.append((self._clock(), False))

    def record_cancelled(self) -> None:
        """A request ended without an outcome (the client went away): only frees its slot."""
        self._finish()

    def set_queued(self, queued: int) -> None:
        """Requests waiting for this target (for local models: the model's queue depth)."""
        self.queued = max(0, queued)

    def set_loaded(self, loaded: bool) -> None:
        self.loaded = loaded

    def record_cold_load(self, seconds: float) -> None:
        """A measured load time replaces the estimate given at construction, then averages."""
        first = self._measured_load is None
        self._measured_load = seconds if first else self._ewma(self._measured_load, seconds)
        self.cold_load_seconds = self._measured_load

    def error_rate(self) -> tuple[float, int]:
        """(failures / outcomes, outcomes) over the window; (0.0, 0) when it is empty."""
        self._expire()
        count = len(self._outcomes)
        if count == 0:
            return 0.0, 0
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return failures / count, count

    def snapshot(self) -> TargetSnapshot:
        """A frozen copy; later records do not change it."""
        rate, count = self.error_rate()
        return TargetSnapshot(
            latency=self._latency,
            ttft=self._ttft,
            tokens_per_second=self._tps,
            error_rate=rate,
            outcomes=count,
            in_flight=self.in_flight,
            queued=self.queued,
            loaded=self.loaded,
            cold_load_seconds=self.cold_load_seconds,
        )

    def _finish(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def _ewma(self, old: float | None, sample: float) -> float:
        return sample if old is None else old + self.alpha * (sample - old)

    def _expire(self) -> None:
        horizon = self._clock() - self.window_seconds
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
