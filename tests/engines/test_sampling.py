"""The numpy sampler shared by the transformers and onnxruntime-genai engines."""

from __future__ import annotations

import numpy as np

from llm_router.engines.sampling import Sampler
from llm_router.types import SamplingParams

LOGITS = np.array([1.0, 3.0, 2.9, -1.0, 0.5], dtype=np.float32)


def draws(params: SamplingParams, n: int = 200) -> list[int]:
    sampler = Sampler(params)
    return [sampler(LOGITS, []) for _ in range(n)]


def test_greedy_is_argmax_and_ignores_the_seed() -> None:
    assert Sampler(SamplingParams(temperature=0, seed=1))(LOGITS, []) == 1


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
