"""The sampled path (llama.cpp's chain run on the top-k's candidates only) against the same
chain over the whole vocabulary, on the logits of a real model, step after step: for random
parameters (penalties of either sign, `ignore_eos`, narrow and wide top-k, top-p, min-p) and
random seeds, both pick the same token every time, so both draw from the one distribution
the chain defines. Over many seeds of one prompt the first tokens are many, and the same.
The same on random logits built to trip the shortcut: penalties that push the likeliest
tokens out of the top-k, or lift a token far below it into it."""

from __future__ import annotations

import ctypes
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np
import pytest

from llm_router.engines import llamacpp_sampler as sampling
from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.engines.llamacpp_sampler import ChainSampler, TopKFirstSampler, make_sampler
from llm_router.types import SamplingParams

from .test_llamacpp_sampler import generate_with


@pytest.fixture(scope="module")
def engine(gemma_gguf: Path) -> Iterator[LlamaCppEngine]:
    """Gemma 3: 262k tokens, the vocabulary the shortcut is for."""
    e = LlamaCppEngine(LoadSpec(str(gemma_gguf), {"threads": 2, "parallel": 2}, "gemma3"))
    yield e
    e.close()


class Both:
    """Samples the same logits with the whole chain and with the engine's sampler; records
    both picks and goes on with the whole chain's."""

    def __init__(self, engine: LlamaCppEngine, params: SamplingParams) -> None:
        banned = engine._eog_tokens() if params.ignore_eos else []
        whole = sampling.build_chain(params, engine._n_vocab, banned, n_ctx=engine.context_size)
        self.whole = ChainSampler(whole)
        self.ours = make_sampler(params, engine._vocab, engine._eog_tokens, engine.context_size)
        self.picks: list[tuple[int, int]] = []

    def sample(self, ctx: Any, index: int) -> int:
        whole = self.whole.sample(ctx, index)  # first: ours writes -inf into banned tokens
        self.picks.append((whole, self.ours.sample(ctx, index)))
        return whole

    def free(self) -> None:
        self.whole.free()
        self.ours.free()


def _random_params(rng: random.Random) -> SamplingParams:
    return SamplingParams(
        max_tokens=rng.choice([6, 16]),
        temperature=rng.choice([0.3, 0.8, 1.0, 1.7]),
        top_k=rng.choice([1, 5, 40, 40, 200, 1024]),
        top_p=rng.choice([1.0, 0.95, 0.6]),
        min_p=rng.choice([0.0, 0.05, 0.2]),
        repeat_penalty=rng.choice([1.0, 1.0, 1.3, 0.85]),
        frequency_penalty=rng.choice([0.0, 0.0, 0.6, -0.4]),
        presence_penalty=rng.choice([0.0, 0.0, 0.9, -0.8]),
        ignore_eos=rng.random() < 0.3,
        seed=rng.getrandbits(32),
    )


PROMPTS = [
    "Once upon a time",
    "The list of prime numbers: 2, 3, 5,",
    "def fibonacci(n):",
    "a a a a",
]


@pytest.mark.real
@pytest.mark.parametrize("case", range(12))
def test_same_token_as_the_whole_chain_at_every_step(engine: LlamaCppEngine, case: int) -> None:
    rng = random.Random(1000 + case)
    params = _random_params(rng)
    both = Both(engine, params)
    generate_with(engine, 0, params, both, rng.choice(PROMPTS))
    assert both.picks, params
    assert [o for _, o in both.picks] == [w for w, _ in both.picks], params


@pytest.mark.real
def test_the_shortcut_is_taken_and_the_defaults_repeat_per_seed(engine: LlamaCppEngine) -> None:
    """llama.cpp's defaults (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8): the first
    token over 80 seeds is the whole chain's every time, varied, and the candidates were
    found by the threshold (not by falling back to the whole vocabulary)."""
    firsts: Counter[int] = Counter()
    for seed in range(80):
        params = SamplingParams(temperature=0.8, seed=seed, max_tokens=1)
        both = Both(engine, params)
        ours = both.ours
        assert isinstance(ours, TopKFirstSampler)
        generate_with(engine, 0, params, both, "My favourite animal is the")
        ((whole, mine),) = both.picks
        assert mine == whole, seed
        assert ours.whole_vocabulary == 0
        firsts[mine] += 1
    assert len(firsts) >= 5  # a real distribution, not one token


@pytest.mark.real
def test_which_sampler_each_request_gets(engine: LlamaCppEngine) -> None:
    def kind(**kw: Any) -> type:
        s = make_sampler(
            SamplingParams(**kw), engine._vocab, engine._eog_tokens, engine.context_size
        )
        s.free()
        return type(s)

    assert kind(temperature=0.8) is TopKFirstSampler
    assert kind(temperature=0.8, repeat_penalty=1.2, ignore_eos=True) is TopKFirstSampler
    assert kind(temperature=0.8, top_k=0) is ChainSampler  # no top-k: every token is a candidate
    assert kind(temperature=0.8, top_k=5000) is ChainSampler
    assert kind(temperature=0, repeat_penalty=1.2) is ChainSampler  # greedy with history


def _whole(chain: Any, logits: np.ndarray) -> int:
    data = (lc.llama_token_data * len(logits))()
    view = np.ctypeslib.as_array(data)
    view["id"] = np.arange(len(logits))
    view["logit"] = logits
    arr = lc.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    lc.llama_sampler_apply(chain, ctypes.byref(arr))
    token = int(data[arr.selected].id)
    lc.llama_sampler_accept(chain, token)
    return token


@pytest.mark.parametrize("case", range(40))
def test_penalties_cannot_trip_the_shortcut(case: int) -> None:
    """Random logits where the history's tokens sit far below the maximum (a negative
    penalty lifts them past the top-k) or at the very top (a positive one pushes them out of
    it): the same token as the whole chain at every step, and the shortcut taken."""
    rng = np.random.default_rng(case)
    n_vocab, k = 20000, int(rng.choice([1, 8, 40]))
    lift = case % 2 == 0
    params = SamplingParams(
        temperature=float(rng.choice([0.5, 1.0, 2.0])),
        top_k=k,
        top_p=float(rng.choice([1.0, 0.9])),
        min_p=float(rng.choice([0.0, 0.05])),
        repeat_penalty=float(rng.choice([1.0, 0.5] if lift else [1.0, 1.8])),
        frequency_penalty=float(rng.choice([-2.0, -0.5] if lift else [1.5, 0.5])),
        presence_penalty=float(rng.choice([-2.0, 0.0] if lift else [2.0, 0.0])),
        seed=int(rng.integers(2**32)),
    )
    history = rng.choice(n_vocab, 30, replace=False)
    whole = sampling.build_chain(params, n_vocab, n_ctx=4096)
    ours = TopKFirstSampler(sampling.build_chain(params, n_vocab, n_ctx=4096), k, n_vocab, [], 64)
    try:
        for t in rng.choice(history, 60):  # each seen twice on average: counts matter
            lc.llama_sampler_accept(whole, int(t))
            ours.accept(int(t))
        for step in range(30):
            logits = rng.standard_normal(n_vocab).astype(np.float32)
            logits[rng.choice(n_vocab, 50, replace=False)] += 12  # a clear top
            # no ties: which of two equal logits comes first is the sort's choice, not ours
            logits[history] = (2.5 if lift else 12) + rng.uniform(0, 1, len(history))
            theirs = _whole(whole, logits.copy())
            mine = ours.pick(logits)
            assert mine == theirs, (step, params)
        assert ours.whole_vocabulary == 0
    finally:
        lc.llama_sampler_free(whole)
        ours.free()


def _near_top_by_passes(logits: np.ndarray, need: int) -> np.ndarray | None:
    """What near_top replaced: passes over the whole vocabulary for each threshold."""
    top = float(logits.max())
    if not np.isfinite(top):
        return None
    for span in sampling.SPANS:
        ids = np.flatnonzero(logits >= top - span)
        if len(ids) >= need:
            return ids
    return None


@pytest.mark.parametrize("seed", range(200))
def test_near_top_finds_what_a_pass_over_every_logit_finds(seed: int) -> None:
    """Any vocabulary size (below one row, whole rows, a partial last row), logits spread
    wide or narrow, ties, banned (-inf) and NaN logits, the maximum in the last partial row:
    the same ids in the same order as thresholds over the whole array, or None alike."""
    rng = np.random.default_rng(seed)
    n_vocab = int(rng.choice([7, 300, 4096, 20000, 49152, 65536 + 11, 262144]))
    width = min(int(rng.choice([64, 512, sampling.COLUMNS])), n_vocab)
    logits = (rng.standard_normal(n_vocab) * rng.choice([1.0, 4.0, 20.0])).astype(np.float32)
    if rng.random() < 0.3:
        logits = np.round(logits)  # many equal logits
    if rng.random() < 0.3:
        logits[rng.choice(n_vocab, n_vocab // 2)] = -np.inf  # a mask, or banned tokens
    if rng.random() < 0.2:
        logits[-1] = logits.max() + rng.uniform(0, 40)  # the top in the partial last row
    if rng.random() < 0.05:
        logits[rng.integers(n_vocab)] = rng.choice([np.nan, np.inf, -np.inf])
    if rng.random() < 0.03:
        logits[:] = -np.inf
    need = int(rng.choice([1, 40, 104, 1100, 5000]))
    expected = _near_top_by_passes(logits, need)
    found = sampling.near_top(logits, need, width)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.tolist() == expected.tolist()
