"""CircuitBreaker on a hand-driven clock: open, skip, half-open probes, close, re-open."""

from __future__ import annotations

import pytest

from llm_router.routing import BreakerConfig, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **config: float) -> CircuitBreaker:
    settings: dict[str, float] = {"failure_threshold": 3, "cooldown": 10, **config}
    return CircuitBreaker(BreakerConfig(**settings), clock=clock)  # type: ignore[arg-type]


def state(b: CircuitBreaker) -> BreakerState:
    """The state, read through a call so mypy does not narrow it across transitions."""
    return b.state


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_failure()


def test_closed_breaker_admits_everything() -> None:
    b = breaker(Clock())
    assert state(b) is BreakerState.CLOSED
    assert all(b.allow() for _ in range(100))


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(Clock())
    fail(b, 2)
    b.record_success()  # breaks the run
    fail(b, 2)
    assert state(b) is BreakerState.CLOSED
    fail(b)
    assert state(b) is BreakerState.OPEN
    assert not b.allow()


def test_opens_on_error_rate_once_enough_requests_were_seen() -> None:
    b = breaker(Clock(), failure_threshold=100, error_rate_threshold=0.5, min_requests=6)
    for ok in (True, False, True, False, False):  # 60 % errors, but only 5 requests
        b.record_success() if ok else b.record_failure()
    assert state(b) is BreakerState.CLOSED
    b.record_failure()  # 4 of 6
    assert state(b) is BreakerState.OPEN


def test_error_rate_counts_only_the_window() -> None:
    clock = Clock()
    b = breaker(clock, failure_threshold=100, window=10, min_requests=4)
    b.record_failure()
    b.record_failure()
    clock.now += 11  # those two fall out of the window
    for ok in (True, True, False):
        b.record_success() if ok else b.record_failure()
    assert state(b) is BreakerState.CLOSED
    rate, count = b.error_rate()
    assert count == 3
    assert rate == pytest.approx(1 / 3)


def test_half_open_after_cooldown_admits_limited_probes() -> None:
    clock = Clock()
    b = breaker(clock, half_open_probes=2)
    fail(b, 3)
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.1
    assert state(b) is BreakerState.HALF_OPEN
    assert [b.allow() for _ in range(3)] == [True, True, False]


def test_probe_success_closes() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert state(b) is BreakerState.CLOSED
    assert b.snapshot().failures == 0
    fail(b, 2)  # the old failures are forgotten: two more do not re-open it
    assert state(b) is BreakerState.CLOSED


def test_probe_failure_reopens_and_restarts_the_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    fail(b)
    assert state(b) is BreakerState.OPEN
    snap = b.snapshot()
    assert (snap.opened_at, snap.retry_at, snap.retry_in) == (510.0, 520.0, 10.0)
    clock.now += 9
    assert not b.allow()
    clock.now += 1
    assert b.allow()


def test_cancelled_probe_gives_its_slot_back() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    assert b.allow()
    assert not b.allow()
    b.record_cancelled()
    assert b.allow()


def test_outcomes_while_open_are_ignored() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    b.record_success()  # a request sent before it opened
    b.record_failure()
    assert b.snapshot().opened_at == 500.0
    assert state(b) is BreakerState.OPEN


def test_flapping_upstream_opens_skips_half_opens_and_closes() -> None:
    """A target that fails in bursts: the breaker follows it through every state."""
    clock = Clock()
    b = breaker(clock)
    seen: list[tuple[str, bool]] = []
    # up, down for a while, up again
    health = [True] * 3 + [False] * 40 + [True] * 20
    for healthy in health:
        clock.now += 1
        admitted = b.allow()
        seen.append((b.state.value, admitted))
        if admitted:
            b.record_success() if healthy else b.record_failure()
    states = [s for s, _ in seen]
    assert states[:6] == ["closed"] * 6
    # three failures open it; skipped (not admitted) while open
    assert seen[6] == ("open", False)
    skipped = sum(1 for state, admitted in seen if state == "open" and not admitted)
    assert skipped >= 30
    # while the target is still down, every probe fails and re-opens it
    probes_while_down = [i for i in range(3, 43) if seen[i] == ("half_open", True)]
    assert len(probes_while_down) == 3  # at t=16, 27, 38 (cooldown 10 after each failure)
    assert state(b) is BreakerState.CLOSED
    assert seen[-1] == ("closed", True)


def test_snapshot_of_a_closed_breaker() -> None:
    b = breaker(Clock())
    b.record_failure()
    snap = b.snapshot()
    assert (snap.state, snap.failures, snap.opened_at, snap.retry_at) == ("closed", 1, None, None)
    assert snap.error_rate == 1.0


@pytest.mark.parametrize(
    "bad", [{"failure_threshold": 0}, {"error_rate_threshold": 0}, {"window": 0}]
)
def test_invalid_config_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]
