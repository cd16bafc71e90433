"""Usage of the requests served without a key (`auth: off`, or loopback clients while no key
exists): recorded as every other request, with no key name, whenever the gateway has a
database. No limits apply to them; the request path adds an append."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .keys import ApiKey
from .service import Gateway

__all__ = ["record_route", "serve_keyless", "started_status"]


async def serve_keyless(
    gateway: Gateway, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run `app` for one inference request that carries no key, then record its usage (the
    route's record, `scope["state"]["route"]`, as for a keyed request)."""
    started = time.perf_counter()
    try:
        await app(scope, receive, send)
    finally:
        record_route(gateway, None, scope, started_status(scope.get("state", {})), started)


def started_status(state: dict[str, Any]) -> int:
    """The status the response started with (server/front.py keeps its start at the scope's
    state); 0 when it did not start (the client left first)."""
    start = state.get("response")
    return int(start["status"]) if start is not None else 0


def record_route(
    gateway: Gateway, key: ApiKey | None, scope: Scope, status: int, started: float
) -> tuple[int, int, float]:
    """Record one finished inference request from the route's record (serving/generate.py's
    `RouteInfo` at `scope["state"]["route"]`; none for a request refused before the route):
    its (prompt tokens, completion tokens, cost). No status: the client left (499). A request
    asked of several targets (compare, ensemble: `RouteInfo.parts`) is a row per target."""
    route = scope.get("state", {}).get("route")
    if route is not None and route.parts:  # asked of several targets: each at its prices
        sums = [_record(gateway, key, part, scope, status, started) for part in route.parts]
        return sum(x[0] for x in sums), sum(x[1] for x in sums), sum(x[2] for x in sums)
    return _record(gateway, key, route, scope, status, started)


def _record(
    gateway: Gateway, key: ApiKey | None, route: Any, scope: Scope, status: int, started: float
) -> tuple[int, int, float]:
    usage = getattr(route, "usage", None)
    failed: str = getattr(route, "error", None) or ""
    if status == 200 and failed:  # a stream that failed after its 200 was counted as served
        status = 499 if failed == "cancelled" else 500
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    hit = getattr(route, "cache", None) == "hit"  # the response cache's: nothing spent
    cost = gateway.record(
        key,
        model=getattr(route, "model", "") or "",
        target=getattr(route, "target", "") or "",
        route=scope["path"],
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=prompt if hit else usage.cached_tokens if usage else 0,
        status=status or 499,
        latency=time.perf_counter() - started,
        ttft=getattr(route, "ttft", None),
        free=hit,
    )
    return prompt, completion, cost
