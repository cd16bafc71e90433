"""The router: a model name -> an ordered plan of targets -> the first target that accepts.

A name is a route (virtual model: strategy, fallbacks, A/B split), a remote target, or a local
model. The plan comes from the route's strategy (pure); the effects live here: breakers are
asked before sending, stats are recorded, and on a retryable failure before the first token
the next target is tried after a short backoff. Once a target has produced its first event the
stream is committed to it: a token a client has seen is never taken back.

One concept, the Dispatcher (resolve, plan, try in order), whose generation, embedding and
local-only paths share the same resolution: what a name means and its plan are in planning.py,
each attempt's accounting in attempt.py, the targets and routes the settings make (and a
reload replaces) in configured.py."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp

from .. import tracing
from ..config import Cost, Settings
from ..errors import (
    BadRequest,
    ModelNotFound,
    QueueFull,
    RouterError,
    ServerBusy,
    UpstreamBusy,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..lifecycle.manager import ModelManager
from ..logs import redact
from ..types import Embeddings, GenerationEvent
from .attempt import NOT_THE_TARGETS, RETRYABLE, THE_KEYS, first_event, since, watch
from .breaker import BreakerConfig
from .configured import Route, load_routes
from .planning import Planning, attempts
from .remote import RemoteTarget
from .shared_breakers import BreakerSync
from .strategies import RouteRequest
from .targets import DEFAULT_REST, Call, EmbedCall, Target

__all__ = ["Dispatcher", "Routed"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Routed:
    """A request committed to `target`; `events` starts with the first event already read.
    `failures`: the (target, error class) of each attempt the route moved past first.
    `fallback`: served by one of the route's fallbacks, as its targets failed, rest, have
    their breaker open or cannot take the request (the response cache stores none of those:
    a route's answer is its targets')."""

    target: str
    reason: str
    events: AsyncGenerator[GenerationEvent, None]
    failures: tuple[tuple[str, str], ...] = ()
    fallback: bool = False


class Dispatcher(Planning):
    def __init__(self, settings: Settings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        self._session: aiohttp.ClientSession | None = None
        # breaker.py is pure and knows no settings: its config is built from them here.
        self._breaker = BreakerConfig(**settings.breaker.model_dump())
        self._targets: dict[str, Target] = {}
        self._routes = load_routes(settings.routes)
        self._health: dict[str, asyncio.Task[None]] = {}  # remote target -> its checks
        self._suspects: dict[str, asyncio.Task[None]] = {}  # target -> a check after a timeout
        self._shared: BreakerSync | None = None  # remote targets' breakers, through Redis
        # (route, target) -> attempts a route sent to `target` after an earlier attempt of the
        # same request failed: served or not (the fallbacks counter has only the served ones).
        self.retries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._gone: dict[str, Cost] = {}  # the prices of targets a reload removed

    async def start(self) -> None:
        self._check_route_names(self.settings.routes)
        if self.settings.redis_url:
            cooldown = self._breaker.cooldown
            self._shared = BreakerSync(self.settings.redis_url, min(5.0, cooldown / 2), cooldown)
            await self._shared.start()
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector)
        for cfg in self.settings.models:
            if cfg.provider == "openai":
                self._add_remote(cfg)
        self._warn()
        if self._shared is not None:
            await self._shared.catch_up()  # the breakers open in other routers now

    async def close(self) -> None:
        tasks = [*self._health.values(), *self._suspects.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._shared is not None:
            await self._shared.close()
        if self._session is not None:
            await self._session.close()

    # -- sending -------------------------------------------------------------------------------

    async def open(self, name: str, call: Call, request: RouteRequest) -> Routed:
        """Send `call` along the plan for `name`; returns once a target produced its first
        event. Raises the last target's error when every attempt failed, or ServerBusy when
        every target's breaker is open."""
        if tracing.current() is None:  # off, or not sampled: not a dict more
            return await self._open(name, call, request, None)
        span = tracing.start("llm_router.route", _route_attributes(name, call.body))
        assert span is not None  # sampled, as current() said
        try:
            with tracing.within(span):
                routed = await self._open(name, call, request, span)
        except BaseException as exc:
            if isinstance(exc, Exception):
                span.record_exception(exc)
            span.end()
            raise
        span.set_attributes({"llm_router.target": routed.target, "llm_router.route": routed.reason})
        return routed

    def _fallback(self, route: Route, target: Target) -> bool:
        """Whether `target` is one of `route`'s fallbacks, not of its targets (by id or alias)."""
        for name in route.config.targets:
            with contextlib.suppress(ModelNotFound):
                if name == target.id or self.target(name) is target:
                    return False
        return True

    async def _open(
        self, name: str, call: Call, request: RouteRequest, span: tracing.Span | None
    ) -> Routed:
        """`open`'s work; `span`, the route's (None when not traced), lasts as long as the
        stream of the target that serves (ended by `watch`)."""
        ordered, why, route, left_out = self.plan(name, request)
        failures: list[str] = []
        failed: list[tuple[str, str]] = []
        errors: list[RouterError] = []
        said: list[str] = []  # each target's failure, in the words of its error
        resting = [t for t in ordered if t.resting()] if route is not None else []
        for target in attempts(ordered, route):
            if target in resting:
                why_out = "rate limited" if target.rate_limited else "unavailable for now"
                if (note := f"{target.id}: {why_out}") not in failures:
                    failures.append(note)
                    said.append(note)
                continue
            if route is None:
                self._check_breaker(target)
            elif not target.breaker.allow():
                if (note := f"{target.id}: breaker open") not in failures:
                    failures.append(note)
                    said.append(note)
                continue
            if failed and route is not None:  # a backoff after a failure, not after a skip
                try:
                    await asyncio.sleep(route.config.backoff * 2 ** (len(failed) - 1))
                except BaseException:  # cancelled meanwhile: the probe `allow` kept is free
                    target.breaker.record_cancelled()
                    raise
            if failed:  # not after a target skipped for its open breaker alone
                self.retries[name, target.id] += 1
            try:
                attempt = await first_event(target, call)
            except RETRYABLE as exc:
                if isinstance(exc, THE_KEYS):
                    raise
                self._suspect(target, exc)
                if isinstance(exc, UpstreamRateLimited | UpstreamBusy):  # it said when: routes
                    limited = isinstance(exc, UpstreamRateLimited)  # leave it out till then
                    target.rest(exc.retry_after or DEFAULT_REST, rate_limited=limited)
                errors.append(exc)
                failures.append(f"{target.id}: {type(exc).__name__}")
                said.append(f"{target.id}: {exc.message}")
                failed.append((target.id, type(exc).__name__))
                if route is None:
                    raise
                continue
            reason = why + (f" after [{'; '.join(failures)}]" if failures else "")
            fallback = route is not None and self._fallback(route, target)
            events = watch(target, attempt, span)
            return Routed(target.id, reason, events, tuple(failed), fallback)
        tried = why + f" after [{'; '.join(failures)}]" if failures else why
        if errors or (resting and len(resting) == len(ordered)):  # all resting: no attempt
            answer = _answer_of(name, errors, resting)
            if (
                errors and answer is errors[-1] and len(said) > 1
            ):  # not the last failure alone: each
                answer.message = f"no target of '{name}' could answer ({'; '.join(said)})"
                answer.args = (answer.message,)
            answer.tried = tried
            raise answer
        names = [t.id for t in ordered]
        if not names and route is not None:
            names = [*route.config.targets, *route.config.fallbacks]
        busy = ServerBusy(
            f"no target of '{name}' is available ({'; '.join(failures) or left_out or 'none'})",
            retry_after=self._retry_after(names),
        )
        busy.tried = tried
        raise busy

    async def embed(self, name: str, call: EmbedCall) -> tuple[str, Embeddings]:
        """Embeddings from the target called `name` (routes serve chat and completions only):
        its breaker is asked first and told the outcome, its stats count it. Returns the
        target's id and the vectors. Raises ModelNotFound, BadRequest for a route or a model
        that makes no embeddings, ServerBusy when its breaker is open, or the target's error."""
        if name in self._routes:
            raise BadRequest(
                f"'{name}' is a route, which serves chat and completions; embeddings need a model "
                "id or alias",
                param="model",
            )
        # the spans of a generation's path: a cold load shows under the request's
        with tracing.span("llm_router.route", {"gen_ai.request.model": redact(name)}) as span:
            target = self.target(name)
            if span is not None:
                span.set_attributes({"llm_router.target": target.id, "llm_router.route": "direct"})
            self._check_breaker(target)
            return target.id, await self._embed(target, call)

    async def _embed(self, target: Target, call: EmbedCall) -> Embeddings:
        target.stats.record_start()
        started = time.perf_counter()
        span = tracing.start("llm_router.attempt", {"llm_router.target": target.id})
        try:
            with tracing.within(span):
                result = await target.embed(call)
        except BaseException as exc:
            tracing.end(span, error=exc if isinstance(exc, Exception) else None)
            if isinstance(exc, RETRYABLE) and not isinstance(exc, NOT_THE_TARGETS):
                target.breaker.record_failure()
                target.stats.record_failure()
            else:
                target.breaker.record_cancelled()
                target.stats.record_cancelled()
                self._suspect(target, exc)
            raise
        tracing.end(span)
        target.breaker.record_success()
        target.stats.record_success(since(started), 0)
        return result

    def _check_breaker(self, target: Target) -> None:
        """A request to a remote `target` by name while its breaker is open is refused at once
        (ServerBusy, Retry-After the breaker's wait): one rule for chat, completions and
        embeddings (chats went to the upstream, embeddings did not). A local model by name is
        not: its own answer says more (why its load failed, that its worker died), and the
        next request loads it again."""
        if isinstance(target, RemoteTarget) and not target.breaker.allow():
            raise ServerBusy(
                f"target '{target.id}' is failing (its breaker is open); retry later",
                retry_after=self._retry_after([target.id]),
            )

    def _suspect(self, target: Target, exc: BaseException) -> None:
        """After a timeout before the upstream's answer began, check the target's health once
        (one check a target at a time, in the background: the request moves on at once). The
        timeout alone cannot tell: a non-streamed answer (and a stream from a server that
        sends its headers with the first token) begins only once generated, so a long
        generation looks the same as a target that hangs. A failed check counts as that
        request's failure, for the breaker and the error rate the strategies read."""
        if not isinstance(exc, UpstreamTimeout) or exc.answered or target.id in self._suspects:
            return
        task = asyncio.create_task(self._check_suspect(target))
        self._suspects[target.id] = task
        task.add_done_callback(lambda _: self._suspects.pop(target.id, None))

    @staticmethod
    async def _check_suspect(target: Target) -> None:
        if not await target.health():
            log.warning(
                "target %s: no answer within its timeout, and its health check fails", target.id
            )
            target.breaker.record_failure()
            target.stats.record_failure(finished=True)

    async def _check_health(self, target: Target) -> None:
        while True:
            await asyncio.sleep(target.config.health_check_interval)
            ok = await target.health()
            if not ok:
                target.breaker.record_failure()
            elif target.breaker.state != "closed" and target.breaker.allow():
                target.breaker.record_success()

    def _retry_after(self, names: list[str]) -> float:
        """When the first of these targets' open breakers lets a request through again (the
        cooldown when none says)."""
        waits = []
        for target_name in names:
            with contextlib.suppress(ModelNotFound):
                retry_in = self.target(target_name).breaker.snapshot().retry_in
                if retry_in is not None:
                    waits.append(retry_in)
        return max(1.0, min(waits)) if waits else (self._breaker.cooldown or 1.0)

    def route_status(self, name: str) -> dict[str, Any]:
        """A route as clients may see it (its targets and strategy, not its tuning or import
        paths) with its live state: each target's breaker (or "missing"), and the order in
        which a plain chat request would try them now."""
        route = self._routes[name]
        states: dict[str, str] = {}
        for target_name in [*route.config.targets, *route.config.fallbacks]:
            try:
                states[target_name] = str(self.target(target_name).breaker.state)
            except ModelNotFound:
                states[target_name] = "missing"
        status: dict[str, Any] = {"order": [], "breakers": states}
        try:
            look = RouteRequest(peek=True)  # a look: a stateful strategy does not advance
            status["order"] = [t.id for t in self.plan(name, look)[0]]
        except RouterError as exc:  # this route's trouble, not the listing's (no target exists)
            status["error"] = exc.message
        cfg = route.config
        strategy = cfg.strategy if ":" not in cfg.strategy else "custom"  # no import paths
        return {
            "name": cfg.name,
            "strategy": strategy,
            "targets": cfg.targets,
            "fallbacks": cfg.fallbacks,
            "status": status,
        }

    def describe(self, target: Target) -> dict[str, Any]:
        snap = target.stats.snapshot()
        b = target.breaker.snapshot()
        return {
            "breaker": {"state": str(b.state), "failures": b.failures, "retry_in": b.retry_in},
            "stats": {
                "latency_s": snap.latency,
                "ttft_s": snap.ttft,
                "tokens_per_second": snap.tokens_per_second,
                "error_rate": snap.error_rate,
                "in_flight": snap.in_flight,
            },
        }


_SAMPLING = (  # the request's fields its route span says (GenAI conventions)
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
)


def _route_attributes(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The route span's attributes: the model asked and the sampling the request set (what
    it left out is the target's default, which the router may not know)."""
    out: dict[str, Any] = {"gen_ai.request.model": redact(name)}
    for field, key in _SAMPLING:
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def _answer_of(name: str, errors: list[RouterError], resting: list[Target]) -> RouterError:
    """The error a request to `name` gets when no target served it: the last attempt's, but
    when each target was full (429s, busy models), the one whose Retry-After is the soonest,
    counting the targets left out as they rest after a 429 or a 503 of theirs (`resting`;
    every target may be resting, and none was asked: then a 429 if they all rest for theirs,
    else a 503). Its Retry-After is never later than the soonest any target can serve again
    (a 503's said 30 while another target rested 2 s more)."""
    rests = [t.resting() for t in resting]
    waits = [e for e in errors if isinstance(e, QueueFull) and e.retry_after is not None]
    if len(waits) < len(errors):
        last = errors[-1]
        if isinstance(last, UpstreamUnavailable):  # its own wait, or another target's sooner
            sooner = [e.retry_after for e in errors if isinstance(e, UpstreamUnavailable)]
            sooner += [w.retry_after for w in waits if w.retry_after is not None]
            last.retry_after = min([*sooner, *rests])
        return last
    soonest = min(waits, key=lambda e: e.retry_after or 0.0, default=None)
    if rests and (soonest is None or min(rests) < (soonest.retry_after or 0.0)):
        if not all(t.rate_limited for t in resting):
            return UpstreamBusy(
                f"every target of '{name}' is unavailable or rate limited for now; retry later",
                retry_after=min(rests),
            )
        return UpstreamRateLimited(
            f"every target of '{name}' is rate limited by its upstream; retry later",
            retry_after=min(rests),
        )
    assert soonest is not None  # errors, all waits
    return soonest
