"""The plain-greedy sampler (an argmax over llama.cpp's logits) against llama.cpp's own greedy
sampler chain on the same logits of a real model, and when each kind is chosen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_router.engines import llamacpp_sampler as sampling
from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.engines.llamacpp_sampler import (
    ChainSampler,
    GreedySampler,
    TopKFirstSampler,
    make_sampler,
)
from llm_router.types import GenerationRequest, LlamaSampling, SamplingParams, TextDelta


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[LlamaCppEngine]:
    e = LlamaCppEngine(LoadSpec(str(smollm2_gguf), {"threads": 2, "parallel": 2}, "llama"))
    yield e
    e.close()


class BothAgree:
    """Samples with llama.cpp's chain and with the argmax on the same logits; records both."""

    def __init__(self, engine: LlamaCppEngine, params: SamplingParams, banned: list[int]) -> None:
        vocab = engine._vocab
        n_vocab = sampling.lc.llama_vocab_n_tokens(vocab)
        self.chain = ChainSampler(
            sampling.build_chain(params, n_vocab, banned, n_ctx=engine.context_size)
        )
        self.greedy = GreedySampler(n_vocab, banned)
        self.picks: list[tuple[int, int]] = []

    def sample(self, ctx: Any, index: int) -> int:
        by_chain = self.chain.sample(ctx, index)  # first: the argmax writes -inf into banned
        self.picks.append((by_chain, self.greedy.sample(ctx, index)))
        return by_chain

    def free(self) -> None:
        self.chain.free()


def generate_with(
    engine: LlamaCppEngine,
    seq: int,
    params: SamplingParams,
    sampler: Any,
    prompt: str = "The three primary colors are",
) -> str:
    """The text of one request whose sampler is replaced by `sampler`."""
    engine.submit(seq, GenerationRequest(prompt=prompt, params=params))
    engine._waiting[-1].sampler.free()
    engine._waiting[-1].sampler = sampler
    text = ""
    while engine.busy:
        text += "".join(e.text for _, e in engine.step() if isinstance(e, TextDelta))
    return text


def test_the_argmax_picks_llama_cpps_greedy_token_at_every_step(engine: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0)
    both = BothAgree(engine, params, [])
    text = generate_with(engine, 1, params, both)
    assert len(both.picks) == 24 and text.strip()
    assert [g for _, g in both.picks] == [c for c, _ in both.picks]


def test_banned_tokens_are_never_picked_and_the_next_best_is(engine: LlamaCppEngine) -> None:
    """Ban what greedy would say first: both must agree on the runner-up, step after step."""
    params = SamplingParams(max_tokens=1, temperature=0)
    first = BothAgree(engine, params, [])
    generate_with(engine, 2, params, first)
    ((favourite, _),) = first.picks
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    both = BothAgree(engine, params, [favourite, *engine._eog_tokens()])
    generate_with(engine, 3, params, both)
    assert [g for _, g in both.picks] == [c for c, _ in both.picks]
    assert favourite not in [g for _, g in both.picks]


def test_only_plain_greedy_takes_the_argmax(engine: LlamaCppEngine) -> None:
    def kind(**kw: Any) -> type:
        s = make_sampler(
            SamplingParams(**kw), engine._vocab, engine._eog_tokens, engine.context_size
        )
        s.free()
        return type(s)

    assert kind(temperature=0) is GreedySampler
    assert kind(temperature=0, ignore_eos=True) is GreedySampler
    assert kind(temperature=0, repeat_penalty=1.1) is ChainSampler  # needs the token history
    assert kind(temperature=0, presence_penalty=0.5) is ChainSampler
    assert kind(temperature=0.7) is TopKFirstSampler  # a top-k: the chain on its candidates


@pytest.mark.parametrize(
    ("asked", "window"), [(-1, 2048), (0, 0), (64, 64), (2048, 2048), (2**31 - 1, 2048)]
)
def test_the_penalty_and_dry_windows_are_at_most_the_context(asked: int, window: int) -> None:
    """-1 is the whole context, as in llama-server; a longer window is the context too: a
    sequence holds no more, and llama.cpp allocates the window whole (2^31-1 killed the
    worker)."""
    p = SamplingParams(penalty_last_n=asked, presence_penalty=0.5)
    assert sampling.penalty_window(p, 2048) == window
    assert sampling.dry_window(LlamaSampling(dry_penalty_last_n=asked), 2048) == window


def test_dry_is_made_once_for_its_values_and_its_clones_sample_alike(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a DRY sampler reads the whole vocabulary for each sequence breaker, in the
    decode loop (64 breakers: 1.2 s on Gemma), and `samplers` may name DRY 32 times, each
    answer of `n` again: a request held every stream of the model for minutes (found from
    outside, beside the windows). Made once for its values, then cloned: the same text as a
    DRY made afresh, from the same seed, and again for the next request."""
    made: list[Any] = []
    make = sampling.lc.llama_sampler_init_dry
    monkeypatch.setattr(
        sampling.lc, "llama_sampler_init_dry", lambda *a: made.append(a) or make(*a)
    )
    x = LlamaSampling(
        dry_multiplier=0.8, dry_allowed_length=1, dry_sequence_breakers=("\n", ":") * 32,
        samplers=("dry", "dry", "top_k", "temperature"),
    )  # fmt: skip
    params = SamplingParams(max_tokens=24, temperature=0.9, seed=11, llama=x)

    def text(seq: int) -> str:
        engine.submit(seq, GenerationRequest(prompt="The three primary colors are", params=params))
        out = ""
        while engine.busy:
            out += "".join(e.text for _, e in engine.step() if isinstance(e, TextDelta))
        return out

    with monkeypatch.context() as uncached:
        uncached.setattr(engine, "_dry", None)
        expected = text(4)
    assert [len(m[-2]) for m in made] == [2, 2]  # made afresh, twice; each breaker once
    made.clear()
    assert [text(5), text(6)] == [expected, expected] and expected.strip()
    assert len(made) == 1
