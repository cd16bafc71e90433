"""Usage of the requests served without a key (`auth: off`, or loopback clients while no key
exists): recorded as every other request, with no key name, whenever the gateway has a
database. No limits apply to them; the request path adds one wrapped `send` and an append."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .service import Gateway

__all__ = ["serve_keyless"]


async def serve_keyless(
    gateway: Gateway, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run `app` for one inference request that carries no key, then record its usage (the
    route's record, `scope["state"]["route"]`, as for a keyed request)."""
    started = time.perf_counter()
    status = 0

    async def sending(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, sending)
    finally:
        route = scope.get("state", {}).get("route")
        usage = getattr(route, "usage", None)
        gateway.record(
            None,
            model=getattr(route, "model", "") or "",
            target=getattr(route, "target", "") or "",
            route=scope["path"],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            status=status or 499,
            latency=time.perf_counter() - started,
            ttft=getattr(route, "ttft", None),
        )
