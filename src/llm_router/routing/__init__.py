"""Routing: the dispatcher (`dispatcher.Dispatcher`, `targets.Target`: the effects) and the pure pieces it
is built from, exported here:

- `stats`: live per-target measurements (`TargetStats`) and their frozen `TargetSnapshot`.
- `breaker`: a per-target `CircuitBreaker` (closed / open / half-open).
- `strategies`: pure ranking functions by name (`load_strategy`), `rank`, `ab_split`.

Nothing here does I/O, sleeps or owns a task; the router feeds measurements in, asks for an
order, and carries out the side effects (load, send, retry, fall back)."""

from __future__ import annotations

from .breaker import BreakerConfig, BreakerSnapshot, BreakerState, CircuitBreaker
from .stats import TargetSnapshot, TargetStats
from .strategies import (
    STRATEGIES,
    Balanced,
    Candidate,
    Capabilities,
    RoundRobin,
    RouteRequest,
    Strategy,
    ab_split,
    eligible,
    load_strategy,
    rank,
)

__all__ = [
    "STRATEGIES",
    "Balanced",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "Candidate",
    "Capabilities",
    "CircuitBreaker",
    "RoundRobin",
    "RouteRequest",
    "Strategy",
    "TargetSnapshot",
    "TargetStats",
    "ab_split",
    "eligible",
    "load_strategy",
    "rank",
]
