"""A prompt's tokens, counted before a target runs it, for limits that count tokens (the
gateway's tokens per minute).

Whoever limits tokens (server/gateway.py, for a key with a TPM limit) puts a `PromptGate` in
`prompt_gate` for the request; the target that is about to run the prompt counts it and awaits
`gate.admit_prompt(tokens)`, which may raise RateLimited: nothing has been generated yet, and
a stream has sent nothing, so the client gets a plain 429. No gate (the default): nothing is
counted and nothing waits. A generation's `max_tokens` is counted with its prompt, as OpenAI
counts it (requests running at once must fit together), and what it did not generate is given
back when it ends (the gateway charges the usage).

How a prompt is counted:
- a local model: with its own tokenizer, in its worker (`count_local`): the chat template
  applied to the messages (tools and system prompt included), then tokenized as the engine
  tokenizes it, so the count is the prompt's usage;
- a remote target: an estimate (`estimate`), OpenAI's rule of thumb of 4 characters a token
  plus 4 tokens of framing per message and 3 to prime the answer; the upstream's own count,
  known at the end, corrects it;
- embedding inputs: a local model's own count (`Worker.embedding_tokens`: its tokenizer, and
  its cut at the model's length, in one round trip to its worker; the inputs are tokenized
  again to embed them, which costs little beside the embedding); a remote target's, the
  estimate (`estimate_inputs`), corrected by the usage."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from ..types import GenerationRequest

if TYPE_CHECKING:
    from ..worker.client import Worker

__all__ = [
    "PromptGate",
    "completion_reserve",
    "count_local",
    "estimate",
    "estimate_inputs",
    "prompt_gate",
]

CHARS_PER_TOKEN = 4
PER_MESSAGE = 4
ANSWER_PRIMING = 3
MAX_TOKEN_BYTES = 64  # no token of a real vocabulary is longer (engines/llamacpp.py)


class PromptGate(Protocol):
    async def admit_prompt(self, tokens: int, completion: int = 0) -> None:
        """Count `tokens` of prompt, and the `completion` tokens the request may generate
        (its `max_tokens`), against the limits, or raise RateLimited."""


prompt_gate: ContextVar[PromptGate | None] = ContextVar("llm_router_prompt_gate", default=None)


def completion_reserve(body: Mapping[str, Any]) -> int:
    """The completion tokens a request asks for at most (its body's `max_completion_tokens`,
    else `max_tokens`, as the target's cap left them), counted ahead with its prompt; 0 when
    it names none (a local model's cap, its context, is not counted ahead)."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    return asked if isinstance(asked, int) and not isinstance(asked, bool) else 0


def estimate(request: GenerationRequest) -> int:
    """The tokens a remote target will likely count for the prompt (exact for token ids)."""
    if request.prompt_tokens is not None:
        return len(request.prompt_tokens)
    if request.messages is None:
        return math.ceil(len(request.prompt or "") / CHARS_PER_TOKEN)
    return ANSWER_PRIMING + sum(
        PER_MESSAGE + math.ceil(len(m.content) / CHARS_PER_TOKEN) for m in request.messages
    )


def estimate_inputs(inputs: list[str] | list[list[int]]) -> int:
    """The tokens embedding `inputs` on a remote target will likely count (exact for token
    ids): charged before they are sent; the usage the answer reports corrects it."""
    return sum(
        len(item) if isinstance(item, list) else math.ceil(len(item) / CHARS_PER_TOKEN)
        for item in inputs
    )


async def count_local(
    worker: Worker, request: GenerationRequest, context: int | None = None
) -> int:
    """The prompt's tokens by the model's own tokenizer (one short round trip to its worker,
    which waits for the decode step under way). `request` as the engine gets it (prepared).
    A prompt too long in bytes to fit a `context` of tokens even at 64 bytes a token is not
    tokenized (that would stall the model's streams; the engine refuses it unread), and an
    engine that cannot tell (no chat template: the generation refuses it anyway) gets the
    estimate too."""
    if request.prompt_tokens is not None:
        return len(request.prompt_tokens)
    if context is not None:
        size = len((request.prompt or "").encode()) + sum(
            len(m.content.encode()) for m in request.messages or ()
        )
        if size > MAX_TOKEN_BYTES * context:
            return estimate(request)
    try:
        counted = await worker.prompt_tokens(
            text=request.prompt or "", messages=request.messages, options=request.template
        )
        return max(1, counted)
    except Exception:  # the engine's refusal comes again, clearer, from the generation
        return estimate(request)
