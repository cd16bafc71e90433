"""Where the time of a decode step goes, in-process (no server): the llama.cpp engine on Gemma 3
270M with `--streams` sequences of `--tokens` tokens, greedy (the engine's argmax), sampled
the engine's way (llama.cpp's chain run on the top-k's candidates, TopKFirstSampler), sampled
through the whole chain over the whole vocabulary (what llama_sampler_sample does, and
llama-server), and sampled in numpy with the same semantics (engines/sampling.Sampler, the
transformers and onnxruntime engines' path). Per step: `llama_decode`, the samplers, and the
rest (batch filling, detokenizing, events). Same prompts, same process, modes interleaved,
medians of `--rounds`.

    .venv/bin/python bench/sampling.py [--tokens 64] [--streams 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import llama_cpp as lc
import numpy as np
from common import bundled_models, llama_repack_default, workdir, write_result

from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.engines.llamacpp_sampler import ChainSampler, build_chain
from llm_router.engines.sampling import Sampler
from llm_router.types import GenerationRequest, SamplingParams

MODES = {  # mode -> temperature
    "greedy": 0.0,
    "sampled": 0.8,
    "sampled-whole-chain": 0.8,
    "sampled-numpy": 0.8,
}


class NumpySampler:
    """engines/sampling.Sampler over llama.cpp's logits in place, as a llama.cpp engine
    sampler (`sample(ctx, index)`)."""

    def __init__(self, p: SamplingParams, n_vocab: int) -> None:
        self._n_vocab = n_vocab
        self._sampler = Sampler(p)
        self._history: list[int] = []

    def sample(self, ctx: Any, index: int) -> int:
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        token = self._sampler(logits, self._history)
        self._history.append(token)
        return token

    def prime(self, tokens: list[int]) -> None:
        pass  # the bench's requests are unpenalized

    def free(self) -> None:
        pass


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Any) -> Any:
        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def run(engine: LlamaCppEngine, mode: str, tokens: int, streams: int) -> dict[str, float]:
    decode, sample = Timer(), Timer()
    real_decode = lc.llama_decode  # the engine calls it through the module: patched there
    make = engine._make_sampler
    n_vocab = lc.llama_vocab_n_tokens(engine._vocab)

    def make_timed(p: SamplingParams) -> Any:
        if mode == "sampled-numpy":
            sampler: Any = NumpySampler(p, n_vocab)
        elif mode == "sampled-whole-chain":
            banned = engine._eog_tokens() if p.ignore_eos else []
            sampler = ChainSampler(build_chain(p, n_vocab, banned, n_ctx=engine.context_size))
        else:
            sampler = make(p)
        sampler.sample = sample.wrap(sampler.sample)  # type: ignore[method-assign]
        return sampler

    engine._make_sampler = make_timed  # type: ignore[method-assign]
    setattr(lc, "llama_decode", decode.wrap(real_decode))  # noqa: B010
    try:
        for i in range(streams):
            params = SamplingParams(
                max_tokens=tokens, ignore_eos=True, seed=i, temperature=MODES[mode]
            )
            engine.submit(i, GenerationRequest(params, prompt=f"Story {i}: once upon a time"))
        steps = 0
        started = time.perf_counter()
        while engine.busy:
            engine.step()
            steps += 1
        wall = time.perf_counter() - started
    finally:
        setattr(lc, "llama_decode", real_decode)  # noqa: B010
        engine._make_sampler = make  # type: ignore[method-assign]
    return {
        "tok_s": streams * tokens / wall,
        "ms_per_step": wall / steps * 1000,
        "decode_ms": decode.seconds / steps * 1000,
        "sample_ms": sample.seconds / steps * 1000,
        "rest_ms": (wall - decode.seconds - sample.seconds) / steps * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = bundled_models(workdir() / "models")
    spec = LoadSpec(
        str(models / "gemma-3-270m-q4_k_m.gguf"),
        {
            "parallel": max(8, args.streams),
            "context_size": 1024,
            "threads": 2,
            "repack": llama_repack_default(),
        },
    )
    engine = LlamaCppEngine(spec)
    run(engine, "greedy", 8, args.streams)  # warm
    rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for i in range(args.rounds):
        for mode in MODES if i % 2 == 0 else reversed(MODES):
            rounds[mode].append(run(engine, mode, args.tokens, args.streams))
    engine.close()
    results = {
        mode: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for mode, rows in rounds.items()
    }
    for mode, row in results.items():
        print(f"{mode:14} " + " ".join(f"{k}={v:.2f}" for k, v in row.items()))
    greedy = results["greedy"]["tok_s"]
    for mode in MODES:
        print(f"{mode:20} {results[mode]['tok_s'] / greedy:.3f}x greedy's tok/s")
    print("written", write_result("sampling", {"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
