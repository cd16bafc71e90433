"""Sampling one token from a logits vector with numpy, in llama.cpp's order: penalties over the
last 64 tokens (`repeat_last_n`; the prompt's, then the answer's), top-k, top-p, min-p, temperature, then a draw from the sequence's
own seeded generator. Shared by the engines that hand out logits (transformers,
onnxruntime-genai), so a request means the same on each of them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import BadRequest
from ..types import SamplingParams
from .base import text_bias_refused

__all__ = ["Sampler", "token_logprobs", "top_k"]

MARGINS = (4.0, 10.0, 24.0)  # logits this far below the maximum, tried in turn (see top_k)


def top_k(scores: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """The ids of the `k` largest scores (all, when `k` is 0 or the vocabulary's size), in no
    order; tokens at -inf (banned, or outside a constraint) only when fewer remain, where they
    weigh nothing anyway. Exactly llama.cpp's top-k set, found without touching the whole
    vocabulary twice: the tokens within a few logits of the maximum are nearly always more than
    `k` (0.05 ms for Gemma's 262k, where a partition of all of them costs ~1 ms), and the `k`
    largest of those are the `k` largest of all."""
    n = scores.shape[0]
    if not 0 < k < n:
        return np.arange(n)
    best = scores.max()
    for margin in MARGINS:
        ids = np.flatnonzero(scores >= best - margin)
        if ids.size >= k:
            break
    else:
        ids = np.flatnonzero(scores > -np.inf)  # few finite scores: a constraint's mask
        if ids.size <= k:
            return ids if ids.size else np.arange(n)
    if ids.size > k:
        ids = ids[np.argpartition(-scores[ids], k - 1)[:k]]
    return ids


def token_logprobs(
    logits: npt.NDArray[Any], temperature: float, token: int, k: int
) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of `token` under softmax(logits / temperature) (temperature 0, a
    greedy pick, reads as 1: the model's own distribution), and the `k` likeliest tokens with
    theirs, most likely first. Logits at -inf (a constraint's mask) count as impossible, and
    are never listed among the likeliest (JSON has no -inf)."""
    t = temperature if temperature > 0 else 1.0
    best = float(logits.max())
    # One pass of float32 arithmetic in place over a scratch copy (numpy sums float32
    # pairwise: ~1e-7 relative): 0.2 ms for Gemma's 262k logits, where selecting the tokens
    # near the maximum first, in float64, took 2 ms.
    scaled = np.subtract(logits, np.float32(best), dtype=np.float32)
    scaled *= np.float32(1 / t)
    np.exp(scaled, out=scaled)
    lse = best / t + float(np.log(scaled.sum()))
    chosen = float(logits[token]) / t - lse
    top: list[tuple[int, float]] = []
    if k > 0:
        ids = top_k(logits, k)
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        top = [(int(i), float(logits[i]) / t - lse) for i in ids if logits[i] > -np.inf]
    return chosen, top


class Sampler:
    """One sequence's sampler. Greedy (argmax) when temperature is 0; else draws from a
    generator seeded with `params.seed` (a fresh seed when None), so a seed reproduces.
    With `params.ignore_eos` the `eos` tokens are never drawn (as llama.cpp's logit bias)."""

    def __init__(
        self, params: SamplingParams, eos: Collection[int] = (), prompt: Sequence[int] = ()
    ) -> None:
        if params.llama is not None:  # sampling otherwise would not be what was asked
            field = params.llama.set_fields()[0]
            raise BadRequest(
                f"`{field}` is one of llama.cpp's samplers, served by GGUF models (llama.cpp) only",
                param=field,
            )
        if params.logit_bias_text:
            raise text_bias_refused()
        self.params = params
        window = params.penalty_last_n
        # the prompt's last tokens count for the penalties, as llama.cpp (llama-server) counts
        # them: the history the penalties see begins with them
        self._window = window if window >= 0 else None  # -1: all of it
        self._prompt = list(prompt[-window:] if window > 0 else prompt if window < 0 else ())
        self._banned = np.array(sorted(eos), dtype=np.int64) if params.ignore_eos else None
        self._bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)
        self._bias = np.array([b for _, b in params.logit_bias], dtype=np.float32)
        self._rng: np.random.Generator | None = None
        if params.temperature > 0:
            self._rng = np.random.default_rng(params.seed32())

    def __call__(self, logits: npt.NDArray[Any], history: list[int]) -> int:
        """The next token from `logits` ([vocab]) given the tokens generated so far."""
        p = self.params
        scores = np.asarray(logits, dtype=np.float32).reshape(-1)
        banned = self._banned is not None and self._banned.size
        if self._bias.size or banned:  # one copy: the caller's logits may be read again
            scores = scores.copy()
            inside = self._bias_ids < scores.shape[0]
            scores[self._bias_ids[inside]] += self._bias[inside]  # first, as llama.cpp's chain
            if banned:  # -inf stays -inf through the penalties
                assert self._banned is not None
                scores[self._banned[self._banned < scores.shape[0]]] = -np.inf
        scores = self._penalize(scores, history)
        if self._rng is None:
            return int(np.argmax(scores))
        ids = top_k(scores, p.top_k)
        ids = ids[np.argsort(-scores[ids], kind="stable")]
        values = scores[ids].astype(np.float64)
        if p.top_p < 1.0:
            probs = np.exp(values - values[0])
            cumulative = np.cumsum(probs / probs.sum())
            keep = int(np.searchsorted(cumulative, p.top_p)) + 1
            values, ids = values[:keep], ids[:keep]
        if p.min_p > 0:
            keep = max(int((values >= values[0] + np.log(p.min_p)).sum()), 1)
            values, ids = values[:keep], ids[:keep]
        weights = np.exp((values - values[0]) / p.temperature)
        return int(ids[self._rng.choice(len(ids), p=weights / weights.sum())])

    def _penalize(self, scores: npt.NDArray[np.float32], history: list[int]) -> npt.NDArray[Any]:
        p = self.params
        if (
            p.repeat_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty
        ) or self._window == 0:
            return scores
        w = self._window
        seen = (self._prompt + history[-w:])[-w:] if w else self._prompt + history
        if not seen:
            return scores
        ids, counts = np.unique(np.array(seen), return_counts=True)
        scores = scores.copy()
        values = scores[ids]
        if p.repeat_penalty != 1.0:
            values = np.where(values > 0, values / p.repeat_penalty, values * p.repeat_penalty)
        scores[ids] = values - counts * p.frequency_penalty - p.presence_penalty
        return scores
