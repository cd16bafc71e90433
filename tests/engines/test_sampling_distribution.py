"""Sampling in numpy (the llama.cpp engine's sampled path, and the transformers and onnxruntime
engines' only one) draws from the distribution llama.cpp's own sampler chain defines for the
same parameters: the same top-k set, and over many draws the same token frequencies within a
statistical bound."""

from __future__ import annotations

import ctypes
from dataclasses import replace
from typing import Any

import llama_cpp as lc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_router.engines.llamacpp_sampler import build_chain
from llm_router.engines.sampling import Sampler, top_k
from llm_router.types import SamplingParams


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 300),
    spread=st.floats(0.1, 20),
    masked=st.floats(0, 1),
)
def test_top_k_is_the_k_largest(seed: int, k: int, spread: float, masked: float) -> None:
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal(5000) * spread).astype(np.float32)
    scores[rng.random(5000) < masked] = -np.inf  # a constraint's mask
    ids = top_k(scores, k)
    finite = int(np.isfinite(scores).sum())
    if finite >= k:
        expected = np.argsort(-scores, kind="stable")[:k]
        assert set(ids.tolist()) == set(expected.tolist())
    else:  # the finite ones; a -inf token weighs nothing
        assert set(np.flatnonzero(np.isfinite(scores)).tolist()) <= set(ids.tolist())


def _chain(p: SamplingParams, seed: int, history: list[int], n_vocab: int) -> Any:
    """llama.cpp's chain as the engine builds it, `history` already accepted."""
    chain = build_chain(replace(p, seed=seed), n_vocab, n_ctx=4096)
    for token in history:
        lc.llama_sampler_accept(chain, token)
    return chain


def _chain_draws(logits: np.ndarray, p: SamplingParams, history: list[int], n: int) -> np.ndarray:
    size = logits.shape[0]
    chain = _chain(p, 1234, history, size)
    data = (lc.llama_token_data * size)()
    view = np.ctypeslib.as_array(data)
    out = np.empty(n, dtype=np.int64)
    try:
        for i in range(n):
            view["id"] = np.arange(size)
            view["logit"] = logits
            view["p"] = 0
            arr = lc.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
            lc.llama_sampler_apply(chain, ctypes.byref(arr))
            out[i] = data[arr.selected].id
    finally:
        lc.llama_sampler_free(chain)
    return out


PARAMS = [
    SamplingParams(temperature=0.8),  # llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05
    SamplingParams(temperature=1.5, top_k=100, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=1.0, top_k=8, top_p=0.8, min_p=0.1),
    SamplingParams(
        temperature=0.7, repeat_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3
    ),
]


@pytest.mark.parametrize("p", PARAMS, ids=["defaults", "hot-wide", "narrow", "penalties"])
def test_frequencies_match_the_chain(p: SamplingParams) -> None:
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(4096) * 1.5).astype(np.float32)
    logits[rng.choice(4096, 30, replace=False)] += rng.uniform(3, 6, 30).astype(np.float32)
    history = [int(t) for t in np.argsort(-logits)[:6]] * 2  # the likeliest, seen twice
    n = 12000
    ours = Sampler(p)
    mine = np.array([ours(logits.copy(), history) for _ in range(n)])
    theirs = _chain_draws(logits, p, history, n)
    tokens = np.union1d(mine, theirs)
    f_mine = np.array([(mine == t).mean() for t in tokens])
    f_theirs = np.array([(theirs == t).mean() for t in tokens])
    pooled = (f_mine + f_theirs) / 2
    bound = 5 * np.sqrt(2 * pooled * (1 - pooled) / n) + 2 / n
    worst = np.argmax(np.abs(f_mine - f_theirs) - bound)
    assert np.all(np.abs(f_mine - f_theirs) <= bound), (
        int(tokens[worst]),
        f_mine[worst],
        f_theirs[worst],
    )
    assert len(tokens) > 3  # the test compares a real distribution, not one token


def test_a_seed_repeats_and_another_differs() -> None:
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(50000) * 3).astype(np.float32)
    draws = [[Sampler(SamplingParams(seed=s))(logits, []) for _ in range(1)] for s in (5, 5)]
    assert draws[0] == draws[1]
    one, other = Sampler(SamplingParams(seed=5)), Sampler(SamplingParams(seed=6))
    assert [one(logits, []) for _ in range(40)] != [other(logits, []) for _ in range(40)]
