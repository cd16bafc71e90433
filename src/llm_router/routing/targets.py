"""Targets: what a request can be sent to, one interface for a local model (local.py: its
lifecycle owned by the ModelManager) and a remote OpenAI-compatible server (remote.py): each
yields the internal events `TextDelta`... `Finished` for a generation, makes embeddings,
answers a health check, and carries its live stats and breaker. The dispatcher
(dispatcher.py) knows no more of a target than this."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..config import ModelConfig
from ..errors import BadRequest
from ..types import Answers, Embeddings, GenerationEvent, GenerationRequest
from ..units import parse_duration
from .breaker import CircuitBreaker
from .stats import TargetStats
from .strategies import Candidate, Capabilities

__all__ = ["Call", "EmbedCall", "Lease", "Target"]

_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
MAX_REST = 60.0  # seconds at most a Retry-After (a 429's, a 503's) keeps a target out of routes
DEFAULT_REST = 1.0  # ... when it names no wait


@dataclass(frozen=True, slots=True)
class Lease:
    """A request's lifecycle options for a local model: `autoload` may only turn loading off;
    `keep_alive` is this request's idle time before unload (math.inf: never); `answers`, when
    this is one of several answers to the request, what they share; `evict=False`: load the
    model only where it fits beside the loaded ones (the semantic cache's lookups)."""

    autoload: bool | None = None
    keep_alive: float | None = None
    answers: Answers | None = None
    evict: bool = True

    @classmethod
    def of(
        cls, autoload: bool | None, keep_alive: str | float | None, answers: Answers | None = None
    ) -> Lease:
        """A request's `autoload` and `keep_alive` (seconds, "5m", -1 or 0, as Ollama's);
        raises BadRequest for a `keep_alive` that is no duration."""
        if keep_alive is None:
            return cls(autoload, None, answers)
        try:
            seconds = parse_duration(keep_alive)
        except ValueError as exc:
            raise BadRequest(str(exc), param="keep_alive") from None
        return cls(autoload, math.inf if seconds is None else seconds, answers)


@dataclass(frozen=True, slots=True)
class Call:
    """One generation as targets need it: the internal request (local models) and the OpenAI
    body (remote servers), with the lifecycle options of the request."""

    kind: Literal["chat", "completion"]
    request: GenerationRequest
    body: dict[str, Any]
    lease: Lease = field(default_factory=Lease)
    stream: bool = True


@dataclass(frozen=True, slots=True)
class EmbedCall:
    """One embedding request: the inputs, `dimensions` if asked (a remote target is asked for
    them; a local model's vectors are cut when it declares Matryoshka training), and the
    OpenAI body for a remote target."""

    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    lease: Lease = field(default_factory=Lease)


@dataclass(eq=False)
class Target(ABC):
    """Something a request can be sent to, with its live stats and breaker (the dispatcher
    records outcomes in them). `events` and `embed` may be called concurrently."""

    id: str
    config: ModelConfig
    stats: TargetStats = field(default_factory=TargetStats)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    token_limit: int = 32768  # most tokens one answer may ask for (settings.max_tokens_limit)
    # A 429 from it (its own rate limit), or a 503 that said when to come back: routes leave
    # it out until then (time.monotonic()), as its Retry-After says, instead of asking it
    # again first on every request. `rate_limited`: the latest rest is a 429's.
    rests_until: float = 0.0
    rate_limited: bool = True

    def rest(self, seconds: float, *, rate_limited: bool) -> None:
        """Leave this target out of routes for `seconds` (at most MAX_REST)."""
        until = time.monotonic() + min(seconds, MAX_REST)
        if until > self.rests_until:
            self.rests_until, self.rate_limited = until, rate_limited

    def resting(self) -> float:
        """Seconds this target still rests after a 429 or a 503 (0: it does not)."""
        return max(0.0, self.rests_until - time.monotonic())

    @property
    @abstractmethod
    def makes_tool_calls(self) -> bool: ...

    @abstractmethod
    def context_length(self) -> int | None:
        """Tokens a prompt and its answer may take here, None when unknown."""

    @abstractmethod
    def stream(self, call: Call) -> AsyncGenerator[GenerationEvent, None]:
        """The events of `call`, as prepared by `events`."""

    @abstractmethod
    async def embed(self, call: EmbedCall) -> Embeddings:
        """Embedding vectors, one per input in order, and the input tokens they took."""

    @abstractmethod
    async def health(self) -> bool:
        """Whether the target answers now (a remote server's GET /models; a local model is
        healthy unless its last load failed)."""

    def candidate(self) -> Candidate:
        """This target as a strategy sees it (a snapshot of its stats)."""
        return Candidate(
            id=self.id,
            quality=self.config.quality,
            cost_input=self.config.cost.input,
            cost_output=self.config.cost.output,
            capabilities=Capabilities(
                context_length=self.context_length(), tools=self.makes_tool_calls
            ),
            stats=self.stats.snapshot(),
            breaker_open=self.breaker.state == "open",
        )

    def events(self, call: Call) -> AsyncGenerator[GenerationEvent, None]:
        """The events of `call` with this target's sampling defaults and token cap applied."""
        return self.stream(self.capped(self.with_sampling(call)))

    def token_cap(self) -> int:
        """The most tokens one answer may ask for here."""
        return self.token_limit

    keeps_its_default = False  # a request without max_tokens: the target's own default applies

    def capped(self, call: Call) -> Call:
        """`call` asking for at most `token_limit` tokens, and for a remote target no more than
        its context (a client cannot make a paid upstream generate without bound)."""
        cap = self.token_cap()
        asked = call.request.params.max_tokens
        if (asked is None and self.keeps_its_default) or (asked is not None and asked <= cap):
            return call  # within bounds, or the upstream's own default applies
        params = replace(call.request.params, max_tokens=min(asked or cap, cap))
        body = {
            k: min(v, cap) if k in _TOKEN_FIELDS and isinstance(v, int) else v
            for k, v in call.body.items()
        }
        return replace(call, request=replace(call.request, params=params), body=body)

    def with_sampling(self, call: Call) -> Call:
        """`call` with this target's sampling defaults in the fields its request left out."""
        fill = self.config.sampling.fill(call.body)
        if not fill:
            return call
        values: dict[str, Any] = {k: tuple(v) if k == "stop" else v for k, v in fill.items()}
        params = replace(call.request.params, **values)
        return replace(
            call, request=replace(call.request, params=params), body={**call.body, **fill}
        )
