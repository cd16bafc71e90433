"""Targets: what a request can be sent to. A local model (its lifecycle owned by the
ModelManager) and a remote OpenAI-compatible server look the same from here on: each yields
the internal events `TextDelta`... `Finished`, and each carries its live stats and breaker."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any, get_args

from ..config import ModelConfig
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from ..types import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    MessageFields,
    TextDelta,
    Usage,
)
from .breaker import CircuitBreaker
from .stats import TargetStats
from .strategies import Candidate, Capabilities
from .upstream import Upstream

__all__ = ["Call", "Target"]

DEFAULT_LOCAL_CONTEXT = 2048
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class Call:
    """One request as targets need it: the internal request (local models) and the OpenAI
    body (remote servers), with the lifecycle options of the request."""

    kind: str  # "chat" | "completion"
    request: GenerationRequest
    body: dict[str, Any]
    lease: dict[str, Any]
    stream: bool = True


@dataclass(eq=False)
class Target:
    id: str
    config: ModelConfig
    stats: TargetStats
    breaker: CircuitBreaker
    remote: Upstream | None = None  # None: a local model
    token_limit: int = 32768  # most tokens one answer may ask for (settings.max_tokens_limit)

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def makes_tool_calls(self) -> bool:
        """Remote targets do unless configured not to; local models do not yet."""
        return self.is_remote and self.config.tools is not False

    def candidate(self, manager: ModelManager) -> Candidate:
        """This target as a strategy sees it, with lifecycle facts folded into its stats."""
        context = self.config.context_length
        if not self.is_remote:
            state = manager.resolve(self.id)
            info = state.worker.info if state.worker else {}
            context = info.get("context_size") or self.config.context_size or (
                min(state.source.info.context_length or DEFAULT_LOCAL_CONTEXT, DEFAULT_LOCAL_CONTEXT)
                if state.source.info else DEFAULT_LOCAL_CONTEXT
            )  # fmt: skip
            self.stats.set_loaded(state.status == Status.LOADED)
            self.stats.set_queued(len(state.waiters))
            if state.load_seconds is not None:
                self.stats.record_cold_load(state.load_seconds)
        return Candidate(
            id=self.id, quality=self.config.quality, cost_input=self.config.cost.input,
            cost_output=self.config.cost.output,
            capabilities=Capabilities(context_length=context, tools=self.makes_tool_calls),
            stats=self.stats.snapshot(), breaker_open=self.breaker.state == "open",
        )  # fmt: skip

    def events(self, manager: ModelManager, call: Call) -> AsyncGenerator[GenerationEvent, None]:
        call = self.capped(self.with_sampling(call))
        if self.remote is not None:
            return _remote_events(self.remote, call)
        return _local_events(manager, self, call)

    def capped(self, call: Call) -> Call:
        """`call` asking for at most `token_limit` tokens, and for a remote target no more than
        its context (a client cannot make a paid upstream generate without bound)."""
        cap = self.token_limit
        if self.is_remote and self.config.context_length:
            cap = min(cap, self.config.context_length)
        asked = call.request.params.max_tokens
        if (asked is None and self.is_remote) or (asked is not None and asked <= cap):
            return call  # within bounds, or the upstream's own default applies
        params = replace(call.request.params, max_tokens=min(asked or cap, cap))
        body = {k: min(v, cap) if k in _TOKEN_FIELDS and isinstance(v, int) else v
                for k, v in call.body.items()}  # fmt: skip
        return replace(call, request=replace(call.request, params=params), body=body)

    def with_sampling(self, call: Call) -> Call:
        """`call` with this target's sampling defaults in the fields its request left out."""
        fill = self.config.sampling.fill(call.body)
        if not fill:
            return call
        values: dict[str, Any] = {k: tuple(v) if k == "stop" else v for k, v in fill.items()}
        params = replace(call.request.params, **values)
        return replace(call, request=replace(call.request, params=params),
                       body={**call.body, **fill})  # fmt: skip


async def _local_events(
    manager: ModelManager, target: Target, call: Call
) -> AsyncGenerator[GenerationEvent, None]:
    request = call.request
    system = target.config.system_prompt
    if (
        system
        and request.messages is not None
        and all(m.role != "system" for m in request.messages)
    ):
        request = replace(request, messages=(ChatMessage("system", system), *request.messages))
    async with manager.lease(target.id, **call.lease) as worker:
        async for event in worker.generate(request):
            yield event


async def _remote_events(remote: Upstream, call: Call) -> AsyncGenerator[GenerationEvent, None]:
    """Streams upstream when the client streams (asking for usage in the last chunk), else one
    plain request; either way cancelling the caller cancels the upstream request. What the
    upstream's message carries besides text (tool calls, refusals, reasoning) is passed on as
    MessageFields, and its finish reason as it said it."""
    if not call.stream:
        done = await (remote.chat(call.body) if call.kind == "chat" else remote.complete(call.body))
        choice = (done.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") if call.kind == "chat" else choice.get("text")
        if text:
            yield TextDelta(text)
        if extra := _extra_fields(message):
            yield MessageFields(extra)
        yield Finished(_finish(choice.get("finish_reason")), _usage(done.get("usage")))
        return
    body = {**call.body, "stream_options": {"include_usage": True}}
    stream = remote.stream_chat(body) if call.kind == "chat" else remote.stream_complete(body)
    reason: str | None = None
    usage = Usage(0, 0)
    try:
        async for chunk in stream:
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text = choice.get("text") if call.kind == "completion" else delta.get("content")
                if text:
                    yield TextDelta(text)
                if extra := _extra_fields(delta):
                    yield MessageFields(extra)
                reason = choice.get("finish_reason") or reason
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # closes the upstream request
    yield Finished(_finish(reason), usage)


_FINISH = frozenset(get_args(FinishReason))


def _finish(reason: Any) -> FinishReason:
    """The upstream's finish reason when it is one of OpenAI's, else "stop"."""
    return reason if reason in _FINISH else "stop"


def _extra_fields(message: dict[str, Any]) -> dict[str, Any]:
    """A message's (or delta's) fields other than its role and text, the empty ones left out."""
    return {
        k: v for k, v in message.items() if k not in ("role", "content") and v not in (None, [], "")
    }


def _usage(u: dict[str, Any] | None) -> Usage:
    if not u:
        return Usage(0, 0)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0), cached)
