"""Routing strategies: pure decisions from (request, candidates) to candidates, best first.

A strategy is any callable `(RouteRequest, list[Candidate]) -> list[Candidate]`. It reads the
frozen snapshots inside each candidate and never loads, evicts, retries or measures anything:
those side effects belong to the router. Every built-in strategy first drops candidates whose
breaker is open or that cannot serve the request (wrong kind, context too short), and sorts
stably, so ties keep the configured target order.

Time estimates (`expected_seconds`) count a cold load (an unloaded local model adds its
`cold_load_seconds`) and queue depth (each queued request ahead adds one service time) as cost;
speed-priority, balanced and least-loaded use them. A target with no measurement yet is tried:
while nothing is in flight to it, its service time counts as 0, so one request goes there and
measures it (a target listed after a measured one was never tried, ties keeping the config's
order). While that request runs, it is given the median service time of the measured
candidates, neither favoured nor shunned, so a burst does not all go to an unknown target."""

from __future__ import annotations

import hashlib
import importlib
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from ..errors import ConfigError
from .stats import TargetSnapshot

__all__ = [
    "STRATEGIES",
    "Balanced",
    "Candidate",
    "Capabilities",
    "Kind",
    "RoundRobin",
    "RouteRequest",
    "Strategy",
    "ab_split",
    "api_key_id",
    "cost_optimized",
    "eligible",
    "estimated_cost",
    "expected_seconds",
    "fits",
    "least_loaded",
    "load_strategy",
    "quality_first",
    "rank",
    "speed_priority",
]

Kind = Literal["chat", "completion", "embedding"]
DEFAULT_OUTPUT_TOKENS = 256  # assumed answer length when a request sets no max_tokens
MIN_SERVICE_SECONDS = 0.1  # floor when converting a cold load into queued requests


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a target can serve. `context_length=None` means unknown: never filtered on."""

    context_length: int | None = None
    chat: bool = True
    completion: bool = True
    embedding: bool = False
    tools: bool = False  # makes tool calls

    def serves(self, kind: Kind) -> bool:
        return {"chat": self.chat, "completion": self.completion, "embedding": self.embedding}[kind]

    def can(self, request: RouteRequest) -> bool:
        """Serves this kind of request, with tool calls if it needs them (the context aside)."""
        return self.serves(request.kind) and (self.tools or not request.tools)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One target as a strategy sees it: static profile from config plus a stats snapshot.
    Costs are per 1M input / output tokens; quality is 0..1."""

    id: str
    quality: float = 0.5
    cost_input: float = 0.0
    cost_output: float = 0.0
    capabilities: Capabilities = field(default_factory=Capabilities)
    stats: TargetSnapshot = field(default_factory=TargetSnapshot)
    breaker_open: bool = False


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing needs to know of a request. `user` and `api_key_id` (an id or hash of the
    caller's key, never the key) are the sticky keys for A/B splits."""

    kind: Kind = "chat"
    prompt_tokens: int = 0
    max_tokens: int | None = None
    user: str | None = None
    api_key_id: str | None = None
    tools: bool = False  # the request offers tools the model may call
    peek: bool = False  # a look at the order (GET /models), not a request: no state moves

    @property
    def output_tokens(self) -> int:
        if self.kind == "embedding":
            return 0
        return DEFAULT_OUTPUT_TOKENS if self.max_tokens is None else self.max_tokens

    @property
    def needed_context(self) -> int:
        """Prompt plus the whole answer asked for (OpenAI upstreams reject less room; local
        models would cut the answer short)."""
        if self.kind == "embedding":
            return self.prompt_tokens
        return self.prompt_tokens + (self.max_tokens or 1)

    @property
    def sticky_key(self) -> str | None:
        return self.user or self.api_key_id


Strategy = Callable[[RouteRequest, list[Candidate]], list[Candidate]]


# -- shared pieces -----------------------------------------------------------------------------


def fits(request: RouteRequest, candidate: Candidate) -> bool:
    caps = candidate.capabilities
    if not caps.can(request):
        return False
    return caps.context_length is None or request.needed_context <= caps.context_length


def eligible(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Candidates whose breaker is closed (or half-open) and that can serve `request`."""
    return [c for c in candidates if not c.breaker_open and fits(request, c)]


def estimated_cost(request: RouteRequest, candidate: Candidate) -> float:
    """Money for this request, in the configured currency (costs are per 1M tokens)."""
    spent = request.prompt_tokens * candidate.cost_input
    spent += request.output_tokens * candidate.cost_output
    return spent / 1_000_000


def _service(request: RouteRequest, snap: TargetSnapshot) -> float | None:
    """Seconds to serve the request once it runs, from measurements; None if unmeasured."""
    if snap.ttft is not None and snap.tokens_per_second:
        return snap.ttft + request.output_tokens / snap.tokens_per_second
    return snap.latency


def _prior(request: RouteRequest, candidates: list[Candidate]) -> float:
    measured = [s for c in candidates if (s := _service(request, c.stats)) is not None]
    return statistics.median(measured) if measured else 0.0


def expected_seconds(request: RouteRequest, candidate: Candidate, prior: float = 0.0) -> float:
    """Service time + queue wait + cold load if not loaded. Unmeasured, the service time is 0
    while nothing is in flight to the target (it is tried), else `prior`."""
    snap = candidate.stats
    service = _service(request, snap)
    if service is None:
        service = prior if snap.in_flight or snap.queued else 0.0
    wait = snap.queued * (snap.latency if snap.latency is not None else service)
    cold = 0.0 if snap.loaded else snap.cold_load_seconds
    return service + wait + cold


def _load(request: RouteRequest, candidate: Candidate, prior: float) -> float:
    """Requests ahead: in flight + queued + a cold load counted as the requests that could be
    served in its time."""
    snap = candidate.stats
    load = float(snap.in_flight + snap.queued)
    if not snap.loaded:
        service = _service(request, snap)
        service = prior if service is None else service
        load += snap.cold_load_seconds / max(service, MIN_SERVICE_SECONDS)
    return load


# -- the strategies ----------------------------------------------------------------------------


def quality_first(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Highest configured quality first."""
    return sorted(eligible(request, candidates), key=lambda c: -c.quality)


def cost_optimized(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Cheapest for this request's token counts first; equal cost: higher quality first."""
    pool = eligible(request, candidates)
    return sorted(pool, key=lambda c: (estimated_cost(request, c), -c.quality))


def speed_priority(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Soonest expected end first (service time + queue wait + cold load)."""
    pool = eligible(request, candidates)
    prior = _prior(request, pool)
    return sorted(pool, key=lambda c: (expected_seconds(request, c, prior), -c.quality))


def least_loaded(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Fewest requests ahead first (in flight + queued + a cold load's worth)."""
    pool = eligible(request, candidates)
    prior = _prior(request, pool)
    return sorted(pool, key=lambda c: _load(request, c, prior))


class Balanced:
    """Weighted score: quality minus cost, expected time and load, each of the last three
    normalised to 0..1 by the largest among the eligible candidates. Stateless once built."""

    def __init__(
        self, quality: float = 0.4, cost: float = 0.2, speed: float = 0.3, load: float = 0.1
    ) -> None:
        if min(quality, cost, speed, load) < 0:
            raise ConfigError("balanced strategy weights must not be negative")
        self.weights = {"quality": quality, "cost": cost, "speed": speed, "load": load}

    def __call__(self, request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
        pool = eligible(request, candidates)
        prior = _prior(request, pool)
        costs = _normalised([estimated_cost(request, c) for c in pool])
        times = _normalised([expected_seconds(request, c, prior) for c in pool])
        loads = _normalised([_load(request, c, prior) for c in pool])
        w = self.weights
        scores = {
            c.id: w["quality"] * c.quality - w["cost"] * cost - w["speed"] * t - w["load"] * load
            for c, cost, t, load in zip(pool, costs, times, loads, strict=True)
        }
        return sorted(pool, key=lambda c: -scores[c.id])

    def __repr__(self) -> str:
        return f"Balanced({', '.join(f'{k}={v}' for k, v in self.weights.items())})"


def _normalised(values: list[float]) -> list[float]:
    top = max(values, default=0.0)
    return [v / top if top > 0 else 0.0 for v in values]


class RoundRobin:
    """The one stateful strategy: a counter rotates the eligible candidates, so build one
    instance per route (`load_strategy` does). Not thread-safe; one event loop calls it."""

    def __init__(self) -> None:
        self._turn = 0

    def __call__(self, request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
        pool = eligible(request, candidates)
        if not pool:
            return []
        start = self._turn % len(pool)
        if not request.peek:
            self._turn += 1
        return pool[start:] + pool[:start]


STRATEGIES: Mapping[str, object] = MappingProxyType(
    {
        "quality-first": quality_first,
        "cost-optimized": cost_optimized,
        "speed-priority": speed_priority,
        "balanced": Balanced,
        "round-robin": RoundRobin,
        "least-loaded": least_loaded,
    }
)
"""Name -> strategy function, or a class that `load_strategy` instantiates per route."""


# -- resolving a configured strategy -----------------------------------------------------------


def load_strategy(spec: str, options: Mapping[str, Any] | None = None) -> Strategy:
    """Resolve a configured strategy: a name from STRATEGIES, or "package.module:attr" naming a
    function or a class. Classes are instantiated with `options` as keyword arguments, once per
    call (so each route gets its own state). Imports the module, so call it at config time.
    Raises ConfigError naming the problem."""
    obj = STRATEGIES.get(spec)
    if obj is None:
        if ":" not in spec:
            known = ", ".join(STRATEGIES)
            raise ConfigError(
                f"unknown strategy {spec!r}: use one of {known} or 'package.module:function'"
            )
        obj = _import(spec)
    return _instantiate(spec, obj, dict(options or {}))


def _import(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"strategy {spec!r}: write it as 'package.module:function'")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"strategy {spec!r}: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"strategy {spec!r}: {module_name!r} has no {attr!r}") from None
    return obj


def _instantiate(spec: str, obj: object, options: dict[str, Any]) -> Strategy:
    if isinstance(obj, type):
        try:
            obj = obj(**options)
        except TypeError as exc:
            raise ConfigError(f"strategy {spec!r}: invalid options {options}: {exc}") from None
    elif options:
        raise ConfigError(f"strategy {spec!r} is a function and takes no options")
    if not callable(obj):
        raise ConfigError(f"strategy {spec!r} is not callable")
    return cast(Strategy, obj)


def rank(strategy: Strategy, request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Run any strategy (a custom one may forget the rules) and keep only eligible candidates
    from the input, each once, in the strategy's order. The strategy gets its own list copy."""
    allowed = {c.id for c in eligible(request, candidates)}
    ranked: list[Candidate] = []
    for candidate in strategy(request, list(candidates)):
        if candidate.id in allowed:
            allowed.discard(candidate.id)
            ranked.append(candidate)
    return ranked


def api_key_id(api_key: str) -> str:
    """The id an API key is known by in routing (A/B splits): a hash, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def ab_split(weights: Mapping[str, float], key: str, *, salt: str = "") -> str:
    """Sticky A/B assignment: the same `key` (user or API-key id) always gets the same arm for
    the same weights, in every process (sha256, not hash()). Arms are ordered by name, so
    reordering the config moves nobody. `salt` (e.g. the route name) decorrelates routes."""
    if any(w < 0 for w in weights.values()):
        raise ConfigError("A/B split weights must not be negative")
    arms = sorted((name, w) for name, w in weights.items() if w > 0)
    if not arms:
        raise ConfigError("an A/B split needs at least one arm with a positive weight")
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(w for _, w in arms)
    upto = 0.0
    for name, weight in arms:
        upto += weight
        if point < upto:
            return name
    return arms[-1][0]
