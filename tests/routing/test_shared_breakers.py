"""Breaker verdicts shared between routers (routing/shared_breakers.py), without Redis: what a
breaker tells when it changes by its own outcomes, and how it applies another router's."""

from __future__ import annotations

import json

from llm_router.routing.breaker import BreakerConfig, BreakerState, CircuitBreaker
from llm_router.routing.shared_breakers import BreakerSync


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> tuple[CircuitBreaker, list[BreakerState]]:
    b = CircuitBreaker(BreakerConfig(failure_threshold=2, cooldown=10), clock=clock)
    told: list[BreakerState] = []
    b.on_change = told.append
    return b, told


def test_a_breaker_tells_when_it_opens_and_closes_by_its_own_outcomes() -> None:
    clock = Clock()
    b, told = breaker(clock)
    b.record_failure()
    assert told == []
    b.record_failure()
    assert told == [BreakerState.OPEN]
    clock.now += 10
    assert b.allow()  # the probe
    b.record_failure()  # it failed: open again, told again
    assert told == [BreakerState.OPEN, BreakerState.OPEN]
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert told == [BreakerState.OPEN, BreakerState.OPEN, BreakerState.CLOSED]


def test_an_adopted_verdict_is_applied_silently_and_probes_after_the_opener() -> None:
    clock = Clock()
    b, told = breaker(clock)
    b.adopt_open(hold=2.0)
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now += 10  # the opener's cooldown is over: it probes, this one waits `hold` more
    assert b.state is BreakerState.OPEN
    clock.now += 2
    assert b.state is BreakerState.HALF_OPEN and b.allow()
    b.adopt_open(hold=2.0)  # the opener's probe failed: open again, a fresh cooldown
    assert b.state is BreakerState.OPEN
    b.adopt_closed()  # a probe elsewhere succeeded
    assert b.state is BreakerState.CLOSED and b.allow()
    assert told == []  # adopted verdicts are not told again (no echo between routers)
    b.record_failure()
    b.record_failure()  # its own opening is told, with a cooldown of its own (no hold)
    assert told == [BreakerState.OPEN]
    clock.now += 10
    assert b.state is BreakerState.HALF_OPEN


def test_the_sync_applies_other_routers_messages_only() -> None:
    sync = BreakerSync("redis://127.0.0.1:1/0", hold=1.0)  # never connected here
    clock = Clock()
    b, _ = breaker(clock)
    sync.attach("flaky", b)
    sync.apply(json.dumps({"from": sync.me, "target": "flaky", "state": "open"}))
    assert b.state is BreakerState.CLOSED  # its own message
    for garbage in ("not json", json.dumps([1]), json.dumps({"from": "x", "target": "other"})):
        sync.apply(garbage)
    assert b.state is BreakerState.CLOSED
    sync.apply(json.dumps({"from": "x", "target": "flaky", "state": "open"}))
    assert b.state is BreakerState.OPEN
    sync.apply(json.dumps({"from": "x", "target": "flaky", "state": "closed"}))
    assert b.state is BreakerState.CLOSED
