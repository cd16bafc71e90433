"""What a model name means and the order its targets are tried in (a part of the Dispatcher,
as a mixin, beside configured.py's): a name is a route, a remote target (id or alias) or a
local model (id or alias); a route's plan is its strategy's ranking (pure, strategies.py) of the
targets that exist, its A/B arm first, then its fallbacks. Why a target was left out is said in
the plan's reason. Nothing here sends; runs on the event loop, as the whole dispatcher does."""

from __future__ import annotations

import contextlib
import uuid

from ..config import Cost, RouteConfig
from ..errors import BadRequest, ConfigError, ContextLengthExceeded, ModelNotFound
from .breaker import CircuitBreaker
from .configured import Route, Targets
from .local import LocalTarget
from .remote import RemoteTarget
from .stats import TargetStats
from .strategies import Candidate, RouteRequest, ab_split, rank
from .targets import Target

__all__ = ["Planning", "attempts"]


class Planning(Targets):
    # -- names ---------------------------------------------------------------------------------

    def routes(self) -> list[RouteConfig]:
        return [r.config for r in self._routes.values()]

    def remotes(self) -> list[RemoteTarget]:
        return [t for t in self._targets.values() if isinstance(t, RemoteTarget)]

    def target(self, name: str) -> Target:
        """The target called `name` (a remote id or alias, or a local model id or alias)."""
        if name in self._targets:
            return self._targets[name]
        for remote in self.remotes():  # few; the config keeps every alias unique
            if name in remote.config.aliases:
                return remote
        state = self.manager.resolve(name)
        if state.id not in self._targets:
            cfg = state.source.config
            self._targets[state.id] = LocalTarget(
                state.id,
                cfg,
                TargetStats(),
                CircuitBreaker(self._breaker, name=state.id),
                self.settings.max_tokens_limit,
                manager=self.manager,
            )
        return self._targets[state.id]

    def local(self, name: str, what: str) -> LocalTarget:
        """The local model called `name` (id or alias). Raises ModelNotFound, or BadRequest
        for a route or a remote target: `what` (e.g. "/tokenize") needs a model of our own."""
        kind = "a route" if name in self._routes else None
        if kind is None:
            target = self.target(name)
            if isinstance(target, LocalTarget):
                return target
            kind = "a remote target"
        raise BadRequest(
            f"'{name}' is {kind}; {what} needs a local model: name one by its id or alias",
            param="model",
        )

    def price(self, name: str) -> Cost:
        """The configured price per 1M tokens of the target called `name` (of one a reload
        removed while a request was on it: its last price)."""
        try:
            return self.target(name).config.cost
        except ModelNotFound:
            if name in self._gone:
                return self._gone[name]
            raise

    def targets(self) -> list[Target]:
        """Every target known so far: remote ones, and local ones once requested."""
        return list(self._targets.values())

    def resolve(self, name: str) -> str:
        """Canonical name of a route or target; raises ModelNotFound."""
        return name if name in self._routes else self.target(name).id

    def split_arm(self, name: str, sticky_key: str | None) -> str | None:
        """The A/B arm a request to `name` goes to first, as `plan` picks it: None when `name`
        is no route with a split, "" when the request has no sticky key (its arm is random)."""
        route = self._routes.get(name)
        if route is None or not route.config.split:
            return None
        return ab_split(route.config.split, sticky_key, salt=name) if sticky_key else ""

    # -- planning ------------------------------------------------------------------------------

    def plan(self, name: str, request: RouteRequest) -> tuple[list[Target], str, Route | None, str]:
        route = self._routes.get(name)
        if route is None:
            target = self.target(name)
            if request.tools and not target.makes_tool_calls:
                raise BadRequest(
                    f"model '{name}' makes no tool calls (its configuration says `tools: "
                    "false`); send requests with tools to a model or route that makes them",
                    param="tools",
                )
            return [target], "direct", None, ""
        targets, candidates = [], []
        for target_name in route.config.targets:
            try:
                t = self.target(target_name)
            except ModelNotFound:  # said once, at start and on a reload (`warnings`)
                continue
            targets.append(t)
            candidates.append(t.candidate())
        by_id = {t.id: t for t in targets}
        ordered = [by_id[c.id] for c in rank(route.strategy, request, candidates)]
        why = f"route={name} strategy={route.config.strategy}"
        kept = {t.id for t in ordered}
        skipped = {c.id: _left_out(request, c) for c in candidates if c.id not in kept}
        left_out = "; ".join(f"{t}: {r}" for t, r in skipped.items())
        if skipped:
            why += f" skipped=[{left_out}]"
        if route.config.split and ordered:  # the arm the cache keys by too (`split_arm`)
            arm = self.split_arm(name, request.sticky_key or uuid.uuid4().hex)
            ordered.sort(key=lambda t: t.id != arm)
            why += f" split={arm}"
        for fallback in route.config.fallbacks:
            with contextlib.suppress(ModelNotFound):
                t = self.target(fallback)
                if t not in ordered and (t.makes_tool_calls or not request.tools):
                    ordered.append(t)
        if not ordered and not targets:  # not one name exists: no retry can help
            raise ConfigError(
                f"route '{name}' has no target that exists "
                f"({', '.join(route.config.targets)}): check its targets in the configuration"
            )
        if request.tools and not ordered and not any(t.makes_tool_calls for t in targets):
            raise BadRequest(f"no target of route '{name}' makes tool calls", param="tools")
        if not ordered and skipped and all(r.startswith("context") for r in skipped.values()):
            raise ContextLengthExceeded(  # no wait helps: the client's to make shorter
                f"The prompt and max_tokens need about {request.needed_context} tokens, more "
                f"than any target of '{name}' holds ({left_out})",
                param="messages" if request.kind == "chat" else "prompt",
            )
        return ordered, why, route, left_out


def attempts(ordered: list[Target], route: Route | None) -> list[Target]:
    """The targets to try, in order: the strategy's `retries + 1` times, round them again
    when that is more than they are (`retries: 2` on a route of one target asks it three
    times, as LiteLLM's `num_retries`), every one once by default; then each fallback once,
    whatever `retries` says (`retries: 0` left the fallbacks out, and retries went round them
    with the targets)."""
    if route is None:
        return ordered
    primary = set(route.config.targets)
    firsts = [t for t in ordered if t.id in primary]
    backups = [t for t in ordered if t.id not in primary]
    tries = len(firsts) if route.config.retries is None else route.config.retries + 1
    rounds = -(-tries // len(firsts)) if firsts else 0
    return (firsts * rounds)[:tries] + backups


def _left_out(request: RouteRequest, candidate: Candidate) -> str:
    """Why a route's target is not among those tried (for the route's reason and errors)."""
    caps = candidate.capabilities
    if candidate.breaker_open:
        return "breaker open"
    if not caps.serves(request.kind):
        return f"does not serve {request.kind}"
    if request.tools and not caps.tools:
        return "makes no tool calls"
    if caps.context_length is not None and request.needed_context > caps.context_length:
        return f"context {caps.context_length} tokens"
    return "left out by the strategy"
