"""The cache in front of the generation and embedding services (which it extends): a
deterministic request (temperature 0 or a seed; an embedding always) is looked up by its key
(keys.py, identity.py) before it is routed, and its answer stored after.

A cached answer is replayed as the events the model produced, so a streamed hit has the same
chunk shape as a computed stream (a role chunk, one text chunk, the finish, the usage) and
a whole answer the same body. Concurrent identical requests share one computation: the first
computes (streaming to its own client), the others wait for its answer; if it fails they
compute their own. Requests that are not cacheable pay one comparison."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from ..errors import RouterError
from ..metrics import Metrics
from ..protocol import ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse, _Request
from ..routing.admission import prompt_gate
from ..routing.dispatcher import Dispatcher
from ..serving.embed import EmbeddingService, encoded
from ..serving.generate import GenerationService
from ..serving.route_info import RouteInfo
from ..types import Finished, GenerationEvent, GenerationRequest, Usage
from .entries import Recorder, decode
from .identity import Identities, StaleModel
from .keys import cache_flag, canonical, deterministic, digest, exact_part
from .semantic import SemanticCache
from .store import ResponseCache

__all__ = ["CachedEmbeddingService", "CachedGenerationService"]

log = logging.getLogger(__name__)


class CachedGenerationService(GenerationService):
    def __init__(
        self,
        dispatcher: Dispatcher,
        metrics: Metrics | None,
        cache: ResponseCache,
        identities: Identities,
        semantic: SemanticCache | None = None,
    ) -> None:
        super().__init__(dispatcher, metrics)
        self.cache = cache
        self.identities = identities
        self.semantic = semantic

    def _events(
        self,
        wire: _Request,
        request: GenerationRequest,
        route: RouteInfo,
        fields: dict[str, Any] | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        read = cache_flag(wire)  # checked on every request, not only the cacheable ones
        # log-probabilities are not kept; completions' `logprobs: 0` asks for them too
        logprobs = wire.logprobs_asked() is not None
        if logprobs or not deterministic(wire.temperature, request.params.seed):
            return super()._events(wire, request, route, fields)
        route.cache_read = route.cache_read and read
        return self._cached_events(wire, request, route, fields)

    async def _body(
        self, wire: _Request, kind: str, fields: dict[str, Any] | None, route: RouteInfo
    ) -> dict[str, Any] | None:
        """The canonical request (keys.py), None when it cannot be cached now. A route with
        an A/B split keys its answers by the arm the request goes to (sticky per `user` or
        API key); a request to it without either goes to a random arm, and is not cached."""
        try:
            served_by = await self.identities.of(wire.model)
        except (RouterError, StaleModel):
            return None  # unknown model (the service raises the error), or one being reloaded
        arm = self.dispatcher.split_arm(wire.model, wire.user or route.api_key_id)
        if arm == "":
            return None
        body = canonical(wire, kind, served_by)
        if arm is not None:
            body["split_arm"] = arm
        body.update(fields or {})  # one choice of several: its own prompt, seed
        return body

    async def _cached_events(
        self,
        wire: _Request,
        request: GenerationRequest,
        route: RouteInfo,
        fields: dict[str, Any] | None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        started = time.perf_counter()
        read = route.cache_read
        kind = "chat" if isinstance(wire, ChatCompletionRequest) else "completion"
        body = await self._body(wire, kind, fields, route)
        if body is None or not (read or route.cache_write):
            async for event in super()._events(wire, request, route, fields):
                yield event
            return
        key = "gen:" + digest(body)
        served_by = body["served_by"]
        flight = match = None
        group = ""
        if read:
            hit = await self.cache.get(key)
            reason = "cache"
            if hit is None and self.semantic is not None:
                group = digest(exact_part(body))
                match = await self.semantic.lookup(group, _text(request))
                if match is not None and match.key is not None:
                    hit = await self.cache.get(match.key)
                    reason = f"cache semantic distance={match.distance:.4f}"
            if hit is None and route.cache_write:
                flight = self.cache.flight(key)
                if not flight.leader:
                    hit = await flight.wait()
                    if hit is not None:
                        self.metrics.cache_lookups.labels("flight", "hit").inc()
                    flight = None
            if hit is not None:
                replay = self._replay(hit, route, wire, kind, started, reason)
                if replay is not None:
                    await _admit(route)  # a key's tokens per minute count a hit's tokens too
                    if route.usage is not None:
                        elapsed = time.perf_counter() - started
                        self.metrics.count_cache_hit(
                            route.target, kind, route.usage, route.ttft, elapsed
                        )
                    for event in replay:
                        yield event
                    return
        route.cache = "miss"
        record: Recorder | None = None
        if flight is None and route.cache_write:
            flight = self.cache.flight(key)  # no-cache: this answer replaces the stored one
            if not flight.leader:
                flight = None
        try:
            async for event in super()._events(wire, request, route, fields):
                if record is None:
                    record = Recorder(route.target)
                record.add(event)
                yield event
        finally:
            storable = record is not None and route.cache_write and not route.fallback
            value = record.encode() if storable and record is not None else None
            stored = None
            try:
                if value is not None and await self.identities.holds(wire.model, served_by):
                    stored = value
                    self.cache.put(key, value)
                    if match is not None and self.semantic is not None:
                        self.semantic.add(group, match.vector, key)
            finally:
                if flight is not None:
                    self.cache.land(key, flight, stored)

    def _replay(
        self,
        value: bytes,
        route: RouteInfo,
        wire: _Request,
        kind: str,
        started: float,
        reason: str = "cache",
    ) -> list[GenerationEvent] | None:
        try:
            target, events = decode(value)
        except ValueError as exc:
            log.warning("cache: unreadable entry ignored: %s", exc)
            return None
        route.model = wire.model
        route.target, route.reason, route.cache = target, reason, "hit"
        route.ttft = time.perf_counter() - started
        for event in events:
            if isinstance(event, Finished):
                route.usage = event.usage
        return events


class CachedEmbeddingService(EmbeddingService):
    def __init__(
        self,
        dispatcher: Dispatcher,
        metrics: Metrics | None,
        cache: ResponseCache,
        identities: Identities,
    ) -> None:
        super().__init__(dispatcher, metrics)
        self.cache = cache
        self.identities = identities

    async def embed(
        self, req: EmbeddingRequest, route: RouteInfo | None = None
    ) -> EmbeddingResponse:
        started = time.perf_counter()
        route = route or RouteInfo()
        read = route.cache_read and cache_flag(req)
        if not (read or route.cache_write):
            return await super().embed(req, route)
        try:
            served_by = await self.identities.of(req.model)
        except (RouterError, StaleModel):
            return await super().embed(req, route)
        # One entry for both encodings (the openai SDK asks base64, most others floats): the
        # vectors are computed and kept as floats, and encoded as each client asks.
        asked = req.encoding_format
        req = req.model_copy(update={"encoding_format": "float"})
        key = "emb:" + digest(canonical(req, "embeddings", served_by))
        flight = None
        if read:
            hit = await self.cache.get(key)
            if hit is None and route.cache_write:
                flight = self.cache.flight(key)
                if not flight.leader:
                    hit = await flight.wait()
                    flight = None
            if hit is not None:
                result = EmbeddingResponse.model_validate_json(hit)
                route.model, route.target, route.reason = req.model, result.model, "cache"
                route.cache = "hit"
                route.usage = Usage(result.usage.prompt_tokens, 0)  # as a computed answer's
                await _admit(route)
                usage, elapsed = route.usage, time.perf_counter() - started
                self.metrics.count_cache_hit(result.model, "embeddings", usage, None, elapsed)
                return encoded(result, asked)
        route.cache = "miss"
        value = None
        try:
            result = await super().embed(req, route)
            value = result.model_dump_json().encode() if route.cache_write else None
            return encoded(result, asked)
        finally:
            stored = None
            try:
                if value is not None and await self.identities.holds(req.model, served_by):
                    stored = value
                    self.cache.put(key, value)
            finally:
                if flight is not None:
                    self.cache.land(key, flight, stored)


async def _admit(route: RouteInfo) -> None:
    """A hit's tokens (its usage, known exactly) against a key's tokens per minute before it
    is served, as a computed answer's prompt and max_tokens are (routing/admission.py): hits
    at once could pass the limit together, and a single flight's followers did. Refused: a
    429 before anything is sent, and nothing charged (the record's usage is dropped)."""
    gate = prompt_gate.get()
    if gate is None or route.usage is None:
        return
    try:
        await gate.admit_prompt(route.usage.prompt_tokens, route.usage.completion_tokens)
    except BaseException:
        route.usage, route.cache = None, ""
        raise


def _text(request: GenerationRequest) -> str:
    """What a request says, for its embedding: the turns of a chat, or the prompt."""
    if request.messages is not None:
        return "\n".join(f"{m.role}: {m.content}" for m in request.messages)
    return request.prompt or ""
