"""Log-probabilities of tokens as OpenAI reports them (`logprobs`, `top_logprobs`, and a
completion's `echo`): per token, from the distribution it was sampled from (softmax of the
logits after temperature, before top-k/top-p/min-p truncation; a constraint's mask included).

Pure functions over a logits vector and a piece lookup, shared by the engines; the cost is a
float32 exp over the vocabulary (see sampling.token_logprobs), paid only by requests that
ask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from ..types import TokenLogprob
from .sampling import token_logprobs

__all__ = ["PROMPT_CHUNK", "prompt_entry", "token_entry"]

# Prompt tokens evaluated per step for `echo` with logprobs: each keeps its logits (a vocabulary
# of floats: 1 MiB for Gemma's 262k), so the chunk is bounded rather than a whole batch.
PROMPT_CHUNK = 64

Piece = Callable[[int], bytes]


def token_entry(
    logits: npt.NDArray[Any], temperature: float, token: int, k: int, piece: Piece
) -> TokenLogprob:
    """The entry of a sampled `token`: its log-probability and the `k` likeliest tokens'."""
    chosen, top = token_logprobs(logits, temperature, token, k)
    return TokenLogprob(piece(token), chosen, tuple((piece(t), lp) for t, lp in top))


def prompt_entry(logits: npt.NDArray[Any] | None, token: int, k: int, piece: Piece) -> TokenLogprob:
    """A prompt token's entry, from the logits at the position before it (the model's own
    distribution, temperature 1); the first token has none (`logits` None)."""
    if logits is None:
        return TokenLogprob(piece(token), None)
    return token_entry(logits, 1.0, token, k, piece)
