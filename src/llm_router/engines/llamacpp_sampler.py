"""llama.cpp sampler chains (sampling runs in C, one chain per sequence) built from the
project's SamplingParams."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import llama_cpp as lc

from ..types import SamplingParams

__all__ = ["make_sampler"]


def make_sampler(p: SamplingParams, vocab: Any, eog_tokens: Callable[[], list[int]]) -> Any:
    """A sampler chain for one sequence: end-of-generation tokens banned for `ignore_eos`,
    penalties, then greedy, or top-k, top-p, min-p, temperature and a seeded draw (a fresh
    seed when `p.seed` is None). The caller frees it with `llama_sampler_free`."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lc.llama_sampler_chain_add
    if p.ignore_eos:
        eog = eog_tokens()
        biases = (lc.llama_logit_bias * len(eog))()
        for i, token in enumerate(eog):
            biases[i].token, biases[i].bias = token, float("-inf")  # type: ignore[assignment]
        n_vocab = lc.llama_vocab_n_tokens(vocab)
        add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(eog), biases))
    if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
        n_vocab = lc.llama_vocab_n_tokens(vocab)
        add(
            chain,
            lc.llama_sampler_init_penalties(
                n_vocab, 64, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            ),
        )
    if p.temperature <= 0:
        add(chain, lc.llama_sampler_init_greedy())
        return chain
    if p.top_k > 0:
        add(chain, lc.llama_sampler_init_top_k(p.top_k))
    if p.top_p < 1.0:
        add(chain, lc.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        add(chain, lc.llama_sampler_init_min_p(p.min_p, 1))
    add(chain, lc.llama_sampler_init_temp(p.temperature))
    seed = p.seed if p.seed is not None else random.getrandbits(32)
    add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
