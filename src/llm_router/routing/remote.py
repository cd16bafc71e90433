"""A remote OpenAI-compatible server as a target (its HTTP client is upstream.py)."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import ValidationError

from ..errors import UpstreamError
from ..protocol import EmbeddingResponse
from ..types import (
    Embeddings,
    Finished,
    FinishReason,
    GenerationEvent,
    MessageFields,
    TextDelta,
    Usage,
)
from .admission import (
    CHARS_PER_TOKEN,
    completion_reserve,
    estimate,
    estimate_inputs,
    prompt_gate,
)
from .targets import Call, EmbedCall, Target
from .upstream import Upstream

__all__ = ["RemoteTarget"]


@dataclass(eq=False)
class RemoteTarget(Target):
    upstream: Upstream | None = None

    @property
    def client(self) -> Upstream:
        assert self.upstream is not None, "a remote target needs its upstream"
        return self.upstream

    @property
    def makes_tool_calls(self) -> bool:
        """Yes, unless the configuration says this server does not."""
        return self.config.tools is not False

    keeps_its_default = True

    def context_length(self) -> int | None:
        return self.config.context_length

    def token_cap(self) -> int:
        """No more than the server's context, when the configuration says what it is."""
        context = self.config.context_length
        return min(self.token_limit, context) if context else self.token_limit

    def stream(self, call: Call) -> AsyncGenerator[GenerationEvent, None]:
        return _remote_events(self.client, call)

    async def embed(self, call: EmbedCall) -> Embeddings:
        """The server's vectors (asked as floats), whatever encoding the client wants."""
        gate = prompt_gate.get()
        if gate is not None:  # a limit counts the inputs' tokens before they are sent
            await gate.admit_prompt(estimate_inputs(call.inputs))
        body = {**call.body, "encoding_format": "float"}
        data = await self.client.embed(body)
        try:
            answer = EmbeddingResponse.model_validate({**data, "model": self.id})
        except ValidationError as exc:
            raise UpstreamError(
                f"upstream {self.id} answered with no embeddings response: "
                f"{exc.errors()[0]['msg']}",
                status=502,
            ) from None
        rows = sorted(answer.data, key=lambda d: d.index)
        vectors = [r.embedding for r in rows if isinstance(r.embedding, list)]
        if len(vectors) != len(call.inputs):
            raise UpstreamError(
                f"upstream {self.id} answered {len(vectors)} embeddings for "
                f"{len(call.inputs)} inputs",
                status=502,
            )
        return Embeddings(vectors, answer.usage.prompt_tokens, self.config.context_length)

    async def health(self) -> bool:
        return await self.client.health()


async def _remote_events(remote: Upstream, call: Call) -> AsyncGenerator[GenerationEvent, None]:
    """Streams upstream when the client streams (asking for usage in the last chunk), else one
    plain request; either way cancelling the caller cancels the upstream request. What the
    upstream's message carries besides text (tool calls, refusals, reasoning) is passed on as
    MessageFields, and its finish reason as it said it."""
    gate = prompt_gate.get()
    if gate is not None:  # a limit counts the prompt's tokens (an estimate) before it is sent
        await gate.admit_prompt(estimate(call.request), completion_reserve(call.body))
    if not call.stream:
        done = await (remote.chat(call.body) if call.kind == "chat" else remote.complete(call.body))
        choice = (done.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") if call.kind == "chat" else choice.get("text")
        if text:
            yield TextDelta(text)
        if extra := _extra_fields(message):
            yield MessageFields(extra)
        reported = _usage(done.get("usage"))
        guessed = reported or _guess(call, len(text or ""), 1 if text else 0)
        yield Finished(_finish(choice.get("finish_reason")), guessed)
        return
    body = {**call.body, "stream_options": {"include_usage": True}}
    stream = remote.stream_chat(body) if call.kind == "chat" else remote.stream_complete(body)
    reason: str | None = None
    usage: Usage | None = None
    sent = pieces = 0  # the text streamed: what the usage is guessed from when none comes
    try:
        async for chunk in stream:
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text = choice.get("text") if call.kind == "completion" else delta.get("content")
                if text:
                    sent += len(text)
                    pieces += 1
                    yield TextDelta(text)
                if extra := _extra_fields(delta):
                    yield MessageFields(extra)
                reason = choice.get("finish_reason") or reason
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # closes the upstream request
    yield Finished(_finish(reason), usage or _guess(call, sent, pieces))


_FINISH = frozenset(get_args(FinishReason))


def _finish(reason: Any) -> FinishReason:
    """The upstream's finish reason when it is one of OpenAI's, else "stop"."""
    return reason if reason in _FINISH else "stop"


def _extra_fields(message: dict[str, Any]) -> dict[str, Any]:
    """A message's (or delta's) fields other than its role and text, the empty ones left out."""
    return {
        k: v for k, v in message.items() if k not in ("role", "content") and v not in (None, [], "")
    }


def _usage(u: dict[str, Any] | None) -> Usage | None:
    """The usage the upstream reported; None when it reported none."""
    if not u:
        return None
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0), cached)


def _guess(call: Call, chars: int, pieces: int) -> Usage:
    """The usage of an answer whose upstream reported none (a server that ignores
    `stream_options.include_usage`): the prompt as estimated for the token limits, the answer
    at 4 characters a token, or a token a streamed piece when that is more. Reported as 0/0,
    it kept keys' token limits, budgets and the token metrics from counting it."""
    return Usage(estimate(call.request), max(pieces, math.ceil(chars / CHARS_PER_TOKEN)))
