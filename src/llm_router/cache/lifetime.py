"""How long a cache entry lives, shared by the tiers."""

from __future__ import annotations

import time

__all__ = ["Stored", "expiry"]

Stored = tuple[bytes, float]  # an answer, and when it expires (a Unix time; 0: never)


def expiry(ttl: float | None, until: float = 0.0) -> float:
    """When an entry stored now expires in a tier of `ttl` (0: never), at the latest `until`
    (0: no bound): an answer copied from a slower tier keeps the time it had left there, so
    the copy does not outlive its TTL (it got a whole new one)."""
    own = time.time() + ttl if ttl is not None else 0.0
    return min(own, until) if own and until else own or until
