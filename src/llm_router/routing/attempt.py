"""One attempt at one target: its first event awaited, then the rest passed on, the outcome told
to the target's breaker and stats. Also which failures are worth another target
(`RETRYABLE`, less the API key's own limits: `THE_KEYS`) and which of those are no sign the
target is broken (`NOT_THE_TARGETS`).

The dispatcher (dispatcher.py) decides which targets to try, in which order; this module
accounts for each try."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from .. import tracing
from ..errors import (
    BadRequest,
    ContextLengthExceeded,
    EngineError,
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotFound,
    ModelUnloaded,
    QueueFull,
    RateLimited,
    RouterError,
    UpstreamBusy,
    UpstreamTimeout,
)
from ..types import Finished, GenerationEvent
from .targets import Call, Target

__all__ = ["NOT_THE_TARGETS", "RETRYABLE", "THE_KEYS", "Attempt", "first_event", "since", "watch"]

# Worth another target: the target failed or is full, not the request.
RETRYABLE = (EngineError, ModelLoadFailed, QueueFull, InsufficientMemory, ContextLengthExceeded)
# A full queue that is the API key's (the gateway's limits, server/gateway.py): every target
# would refuse the same, so it is the request's answer, not a reason to try another.
THE_KEYS = (RateLimited,)
# Worth another target, but no sign the target is broken, so its breaker does not count them:
# a full queue, a prompt too long for it, a read timeout, which a client can cause for
# everyone by asking for a generation longer than the timeout (health checks and connect
# errors still count), an operator's unload or reload cutting a local model's requests (its
# breaker opened after a few, and routes skipped a healthy model for the cooldown: found from
# outside), a load that cannot fit beside the pinned models (the memory's state, not the
# model's health: the request still falls back, the next one may fit), and an upstream's 503
# that says when to come back (a draining or overloaded server: it rests for that instead,
# as after a 429; its breaker opened on a restart's drain and stayed open past it).
NOT_THE_TARGETS = (
    QueueFull,
    ContextLengthExceeded,
    UpstreamTimeout,
    ModelUnloaded,
    InsufficientMemory,
    UpstreamBusy,
)


@dataclass(slots=True)
class Attempt:
    """An attempt that produced its first event: the rest are `events`. Its span (None when
    not traced) lasts until `watch` has passed the last event on, so the work the target
    did after its first token (the decode) is in it."""

    first: GenerationEvent
    events: AsyncGenerator[GenerationEvent, None]
    started: float
    ttft: float
    span: tracing.Span | None


async def first_event(target: Target, call: Call) -> Attempt:
    target.stats.record_start()
    started = time.perf_counter()
    span = tracing.start("llm_router.attempt", {"llm_router.target": target.id})
    events = target.events(call)
    try:
        with tracing.within(span):
            first = await anext(events)
        ttft = since(started)
        target.stats.record_first_token(ttft)
        return Attempt(first, events, started, ttft, span)
    except BaseException as exc:
        tracing.end(span, error=exc if isinstance(exc, Exception) else None)  # says why
        await events.aclose()
        if isinstance(exc, RETRYABLE) and not isinstance(exc, NOT_THE_TARGETS):
            target.breaker.record_failure()
            target.stats.record_failure()
        else:  # the client's doing (bad request, cancelled) or a full queue: not the target's
            target.breaker.record_cancelled()
            target.stats.record_cancelled()
        raise


async def watch(
    target: Target, attempt: Attempt, route: tracing.Span | None = None
) -> AsyncGenerator[GenerationEvent, None]:
    """Pass the events on; the outcome goes to the target's stats and breaker, and ends the
    attempt's span, then `route`'s (the span of the routing it is part of: a parent does not
    end before its child)."""
    done = False
    events, span = attempt.events, attempt.span
    failed: BaseException | None = None
    try:
        event: GenerationEvent = attempt.first
        while True:
            if isinstance(event, Finished):
                done = True
                target.stats.record_success(
                    since(attempt.started), event.usage.completion_tokens, ttft=attempt.ttft
                )
                target.breaker.record_success()
                if span is not None:  # the inference's outcome (GenAI conventions)
                    reasons = {"gen_ai.response.finish_reasons": (event.finish_reason,)}
                    span.set_attributes(reasons)
                    if route is not None:
                        route.set_attributes(reasons)
            yield event
            if done:
                return
            if span is None:  # not traced: nothing to make current, on each streamed event
                event = await anext(events)
            else:
                with tracing.within(span):  # what the target records now is the attempt's
                    event = await anext(events)
    except (BadRequest, ModelNotFound, *NOT_THE_TARGETS) as exc:
        failed = exc
        target.breaker.record_cancelled()
        target.stats.record_cancelled()
        raise
    except RouterError as exc:
        failed = exc
        target.breaker.record_failure()
        target.stats.record_failure()
        raise
    except BaseException:
        if not done:
            target.breaker.record_cancelled()
            target.stats.record_cancelled()
        raise
    finally:
        try:
            await events.aclose()  # what the target still records (a cut decode) is in it
        finally:
            tracing.end(span, error=failed)
            tracing.end(route, error=failed)


def since(started: float) -> float:
    return time.perf_counter() - started
