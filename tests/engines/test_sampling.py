"""The numpy sampler shared by the transformers and onnxruntime-genai engines."""

from __future__ import annotations

import numpy as np
import pytest

from llm_router.engines.base import logit_bias
from llm_router.engines.sampling import Sampler, token_logprobs
from llm_router.errors import BadRequest
from llm_router.types import SamplingParams

LOGITS = np.array([1.0, 3.0, 2.9, -1.0, 0.5], dtype=np.float32)


def draws(params: SamplingParams, n: int = 200) -> list[int]:
    sampler = Sampler(params)
    return [sampler(LOGITS, []) for _ in range(n)]


def test_greedy_is_argmax_and_ignores_the_seed() -> None:
    assert Sampler(SamplingParams(temperature=0, seed=1))(LOGITS, []) == 1


def test_a_64_bit_seed_is_32_bits_the_same_way_every_time() -> None:
    """A seed that fits in 32 bits is llama-server's (its low 32 bits); a wider one folds its
    halves, never into 2^32 - 1, which llama.cpp's samplers take for "a random seed" (the low
    bits of 2^63 - 1 were just that)."""

    def bits(seed: int) -> int:
        return SamplingParams(seed=seed).seed32()

    assert [bits(s) for s in (0, 5, 2**32 - 2, -2)] == [0, 5, 2**32 - 2, 2**32 - 2]
    wide = [2**63 - 1, -(2**63), 2**64 - 1, 2**32 - 1 + 2**32, 7 << 40, 7 << 41]
    assert all(0 <= bits(s) < 2**32 - 1 for s in wide)
    assert bits(2**63 - 1) == bits(2**63 - 1) and bits(7 << 40) != bits(7 << 41)


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    base = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    assert draws(SamplingParams(**{**_fields(base), "seed": 5})) == draws(
        SamplingParams(**{**_fields(base), "seed": 5})
    )
    assert draws(SamplingParams(**{**_fields(base), "seed": 5})) != draws(
        SamplingParams(**{**_fields(base), "seed": 6})
    )


def test_top_k_top_p_and_min_p_restrict_the_candidates() -> None:
    assert set(draws(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0, seed=1))) == {
        1,
        2,
    }
    # softmax: p(3.0) = 0.47, so top_p 0.4 keeps it alone and top_p 0.5 needs the next too.
    assert set(draws(SamplingParams(temperature=1.0, top_k=0, top_p=0.4, min_p=0, seed=1))) == {1}
    assert set(draws(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0, seed=1))) == {
        1,
        2,
    }
    # min_p 0.5: keep tokens with p >= 0.5 * p_max, i.e. logit >= 3.0 + ln 0.5 = 2.31.
    assert set(draws(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=1))) == {
        1,
        2,
    }


def test_penalties_apply_to_the_generated_tokens() -> None:
    params = SamplingParams(temperature=0, repeat_penalty=1.5)
    assert Sampler(params)(LOGITS, [1]) == 2  # 3.0 / 1.5 = 2.0 < 2.9
    presence = SamplingParams(temperature=0, presence_penalty=0.5)
    assert Sampler(presence)(LOGITS, [1, 1]) == 2
    frequency = SamplingParams(temperature=0, frequency_penalty=0.06)
    assert Sampler(frequency)(LOGITS, [1]) == 1 and Sampler(frequency)(LOGITS, [1, 1]) == 2


def _fields(p: SamplingParams) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__slots__}  # type: ignore[attr-defined]


def test_ignore_eos_never_draws_an_end_token() -> None:
    eos = {1}  # the argmax of LOGITS
    greedy = SamplingParams(temperature=0, ignore_eos=True)
    assert Sampler(greedy, eos)(LOGITS, []) == 2
    assert Sampler(SamplingParams(temperature=0), eos)(LOGITS, []) == 1  # only when asked
    hot = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=3, ignore_eos=True)
    sampler = Sampler(hot, eos)
    assert 1 not in {sampler(LOGITS, []) for _ in range(300)}
    assert LOGITS[1] == 3.0  # the caller's logits are left as they were


def test_logit_bias_bans_and_forces_before_anything_else() -> None:
    """The HF and ONNX engines' sampler: `logit_bias` is added to the logits first (a copy:
    the caller's logits are read again when a constraint masks them), greedy and sampled."""
    logits = np.array([5.0, 1.0, 0.0, -1.0], dtype=np.float32)
    ban = Sampler(SamplingParams(temperature=0, logit_bias=((0, -100.0),)))
    assert ban(logits, []) == 1
    force = SamplingParams(temperature=1.0, top_k=2, seed=3, logit_bias=((3, 100.0),))
    assert {Sampler(force)(logits, []) for _ in range(20)} == {3}
    assert logits.tolist() == [5.0, 1.0, 0.0, -1.0]


def test_a_text_key_of_logit_bias_is_refused_by_the_other_engines() -> None:
    """llama-server's text keys (their tokens biased) are a GGUF model's: the HF and ONNX
    engines refuse them naming `logit_bias` rather than sample without the bias."""
    with pytest.raises(BadRequest) as info:
        Sampler(SamplingParams(temperature=0, logit_bias_text=((",", -100.0),)))
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 1.7])
def test_token_logprobs_match_an_exact_log_softmax(temperature: float) -> None:
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(262_144) * 4).astype(np.float32)
    logits[:1000] = -np.inf  # a constraint's mask: impossible tokens
    t = temperature or 1.0
    exact = logits.astype(np.float64) / t
    finite = exact[np.isfinite(exact)]
    lse = finite.max() + np.log(np.exp(finite - finite.max()).sum())
    token = int(np.argmax(logits))
    chosen, top = token_logprobs(logits, temperature, token, 5)
    assert chosen == pytest.approx(exact[token] - lse, abs=1e-5)
    assert [i for i, _ in top] == list(np.argsort(-exact)[:5])
    for i, lp in top:
        assert lp == pytest.approx(exact[i] - lse, abs=1e-5)
    assert token_logprobs(logits, temperature, 0, 0) == (-np.inf, [])
    allowed = np.full_like(logits, -np.inf)
    allowed[[5, 9]] = (1.0, 2.0)  # a constraint allowing two tokens: only they are listed
    chosen, top = token_logprobs(allowed, temperature, 9, 5)
    assert [i for i, _ in top] == [9, 5] and chosen == top[0][1]


def test_logit_bias_is_one_entry_a_token_the_biases_added_up() -> None:
    """1024 text keys of rare characters were ~700k (token, bias) pairs (found from
    outside): one entry a token whatever the keys, and what several keys give one token adds
    up, as in llama-server, which applies every pair in turn."""
    vocab = 300
    texts = tuple((f"key {i}", -1.0) for i in range(1024))
    params = SamplingParams(logit_bias=((7, 2.0), (9, 0.5)), logit_bias_text=texts)
    biased = logit_bias(params, vocab, lambda text: [7, 8, 8, 9] * 200)  # each key's tokens
    assert biased is not None
    ids, values = biased
    assert ids.tolist() == [7, 8, 9]
    assert values.tolist() == [2.0 - 1024 * 200, -1024 * 400, 0.5 - 1024 * 200]
