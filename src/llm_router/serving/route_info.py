"""`RouteInfo`: the record of one request, shared by the services (generate.py, embed.py, the
cache) and the middleware that reads it once the response is done (usage accounting, logs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..types import Answers, Usage

__all__ = ["RouteInfo"]


@dataclass
class RouteInfo:
    """The record of one request, created by the route and filled in as the request runs: who
    asks (`api_key_id`, the sticky key of A/B splits when the request names no `user`), then,
    once committed to a target, which target serves and why, then the usage and the time to the
    first event. The route keeps it on the ASGI scope (`scope["state"]["route"]`), so
    middleware (usage accounting, request logs) can read it once the response is done."""

    api_key_id: str | None = None
    target: str = ""
    reason: str = ""
    model: str = ""  # the name the client asked for (client-chosen: never a metric label)
    usage: Usage | None = None
    ttft: float | None = None  # seconds from the start of routing to the first event
    cache: str = ""  # "hit" | "miss", "" when not looked up (cache/service.py)
    error: str = ""  # the error class that ended it, even after a 200 (a stream cut short)
    cache_read: bool = True  # False: the client asked for a fresh answer (no-cache)
    cache_write: bool = True  # False: the answer must not be stored (no-store)
    fallback: bool = False  # served by a route's fallback (dispatcher.py `Routed`): not stored
    answers: Answers | None = None  # one of several answers to the request (serving/choices.py)
    # a request asked of several targets (/v1/compare, /v1/ensemble and its judge): one
    # record each, which usage accounting charges at each target's prices
    parts: list[RouteInfo] = field(default_factory=list)

    def part(self) -> RouteInfo:
        """A new record for one of the targets this request asks: who asks, and the cache
        directives, as this one's."""
        one = RouteInfo(self.api_key_id, cache_read=self.cache_read, cache_write=self.cache_write)
        self.parts.append(one)
        return one

    def sum_parts(self) -> None:
        """This request's usage: its parts' together (the request log's tokens)."""
        used = [p.usage for p in self.parts if p.usage is not None]
        if used:
            self.usage = Usage(
                sum(u.prompt_tokens for u in used),
                sum(u.completion_tokens for u in used),
                sum(u.cached_tokens for u in used),
            )
