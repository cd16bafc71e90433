"""A circuit breaker per target: closed -> open -> half-open -> closed (or open again).

Pure state machine: no asyncio, no I/O, never blocks. Time comes from an injectable clock
(`time.monotonic` by default), and the open -> half-open step happens lazily when `state`,
`allow()` or `snapshot()` look at the clock, so no timer task is needed. Not thread-safe: one
event loop owns a breaker. Times in snapshots are in the clock's time base."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

__all__ = ["BreakerConfig", "BreakerSnapshot", "BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When to open: `failure_threshold` failures in a row, or more than
    `error_rate_threshold` of the outcomes in the last `window` seconds once there are at least
    `min_requests` of them. Open for `cooldown` seconds, then `half_open_probes` trial requests
    may run at once."""

    failure_threshold: int = 5
    error_rate_threshold: float = 0.5
    window: float = 60.0
    min_requests: int = 10
    cooldown: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.min_requests < 1 or self.half_open_probes < 1:
            raise ValueError("breaker thresholds and probe count must be at least 1")
        if not 0.0 < self.error_rate_threshold <= 1.0:
            raise ValueError("error_rate_threshold must be in (0, 1]")
        if self.window <= 0 or self.cooldown < 0:
            raise ValueError("breaker window must be positive and cooldown not negative")


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """For display (`GET /models`, route status). `retry_in` is seconds until half-open."""

    state: BreakerState
    failures: int
    error_rate: float
    opened_at: float | None
    retry_at: float | None
    retry_in: float | None


class CircuitBreaker:
    """Call `allow()` right before sending a request to the target; skip the target when it
    says False. Then report the request's end with exactly one of `record_success()`,
    `record_failure()` or `record_cancelled()` (the client went away: no verdict, but a probe
    slot is given back).

    In half-open at most `half_open_probes` admitted requests run at once. Any outcome that
    arrives in half-open decides, including one from a request admitted before the breaker
    opened: a success is evidence the target works, a failure that it does not. Outcomes that
    arrive while open are ignored (they belong to requests sent before it opened).

    Shared state (routing/shared_breakers.py): `on_change` is called with the new state when
    this breaker opens or closes by its own outcomes; `adopt_open` and `adopt_closed` apply
    another process's verdict without calling it."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self.config = config or BreakerConfig()
        self.name = name  # the target's, for the log lines of its own openings and closings
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probes = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._hold = 0.0  # added to the cooldown of an adopted open (see adopt_open)
        self.on_change: Callable[[BreakerState], None] | None = None

    def adopt_open(self, hold: float = 0.0) -> None:
        """Open now because another process's breaker of the same target opened; half-open
        `hold` seconds later than the cooldown says, so that the process that opened it
        probes first (its verdict reaches this one before it would probe itself)."""
        if self.state is BreakerState.OPEN:
            return
        self._open(notify=False)
        self._hold = hold

    def adopt_closed(self) -> None:
        """Close because another process's probe found the target working."""
        if self._state is not BreakerState.CLOSED:
            self._close(notify=False)

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._retry_at():
            self._state = BreakerState.HALF_OPEN
            self._probes = 0
        return self._state

    def allow(self) -> bool:
        """May a request go to the target now? In half-open, True reserves a probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.config.half_open_probes:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._close()
        elif state is BreakerState.CLOSED:
            self._failures = 0
            self._remember(ok=True)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._failures += 1
            self._open()
        elif state is BreakerState.CLOSED:
            self._failures += 1
            self._remember(ok=False)
            if self._should_open():
                self._open()

    def record_cancelled(self) -> None:
        if self.state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def error_rate(self) -> tuple[float, int]:
        """(failures / outcomes, outcomes) in the window while closed; (0.0, 0) when empty."""
        self._expire()
        count = len(self._outcomes)
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return (failures / count if count else 0.0), count

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        retry_at = self._retry_at() if state is BreakerState.OPEN else None
        return BreakerSnapshot(
            state=state,
            failures=self._failures,
            error_rate=self.error_rate()[0],
            opened_at=self._opened_at,
            retry_at=retry_at,
            retry_in=None if retry_at is None else max(0.0, retry_at - self._clock()),
        )

    def _should_open(self) -> bool:
        if self._failures >= self.config.failure_threshold:
            return True
        rate, count = self.error_rate()
        return count >= self.config.min_requests and rate > self.config.error_rate_threshold

    def _open(self, notify: bool = True) -> None:
        if notify and self.name:
            log.warning(
                "target %s: circuit breaker open after its failures; tried again in %g s",
                self.name,
                self.config.cooldown,
            )
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probes = 0
        self._hold = 0.0
        self._outcomes.clear()
        if notify and self.on_change is not None:
            self.on_change(BreakerState.OPEN)

    def _close(self, notify: bool = True) -> None:
        if notify and self.name and self._state is not BreakerState.CLOSED:
            log.info("target %s: circuit breaker closed (it answers again)", self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._probes = 0
        self._outcomes.clear()
        if notify and self.on_change is not None:
            self.on_change(BreakerState.CLOSED)

    def _retry_at(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self.config.cooldown + self._hold

    def _remember(self, *, ok: bool) -> None:
        self._outcomes.append((self._clock(), ok))
        self._expire()

    def _expire(self) -> None:
        horizon = self._clock() - self.config.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
