"""The direct side of `bench/formats.py`: one library, called the plain way a user would, in
this fresh process; prints one JSON line (import and load seconds, RSS after load, timed runs).
Imports nothing but the standard library and psutil before the library itself, so its RSS is
the library's and the model's.

    .venv/bin/python bench/formats_direct.py KIND PATH [--threads 2] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import time
from collections.abc import Callable
from typing import Any

import psutil

PROMPT = "Once upon a time, in a small village by the sea, there lived"
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven tired engineers measure "
    "how long each library takes to load and answer small questions"
).split()
TEXTS = [
    " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(4 + (i * 13) % 48)) for i in range(256)
]  # 4-51 words each
EMBED_BATCH = 32  # sentence-transformers' default batch size, and our engines'
GEN_KV = 512  # onnxruntime-genai KV buffer: what our engine asks for (its MIN_MAX_LENGTH)

# kind -> modules imported first, timed apart from the load
IMPORTS = {
    "llama.cpp": ["llama_cpp"],
    "llama-cpp-python": ["llama_cpp"],
    "transformers": ["torch", "transformers"],
    "onnxruntime-genai": ["onnxruntime_genai"],
    "sentence-transformers": ["torch", "sentence_transformers"],
}

Generate = Callable[[str, int, Callable[[], None]], tuple[str, int]]


_QUIET_LOG: Any = None


def _model_params(lc: Any) -> Any:
    """llama.cpp's defaults, less the extra (repacked) buffer types where they would include
    AMX, whose matmul segfaults on this CPU (llama.cpp#20824): what our engine does too."""
    params = lc.llama_model_default_params()
    if b"AMX_INT8 = 1" in lc.llama_print_system_info():
        params.use_extra_bufts = False
    return params


def _llama_low(path: str, threads: int) -> Generate:
    """llama.cpp's C API through llama-cpp-python's bindings: one llama_decode per token,
    a greedy sampler chain in C (what our engine does, minus everything else)."""
    import llama_cpp as lc

    global _QUIET_LOG
    _QUIET_LOG = lc.llama_log_callback(lambda level, text, data: None)  # kept alive: C holds it
    lc.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))  # as our engine: no log lines while loading
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(path.encode(), _model_params(lc))
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048, 512, 512
    cp.n_threads = cp.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cp)
    vocab = lc.llama_model_get_vocab(model)
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
    add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
    piece = (ctypes.c_char * 64)()

    def generate(prompt: str, n: int, on_token: Callable[[], None]) -> tuple[str, int]:
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        data = prompt.encode()
        ids = (lc.llama_token * (len(data) + 8))()
        count = lc.llama_tokenize(vocab, data, len(data), ids, len(ids), add_bos, False)
        batch = lc.llama_batch_get_one(ids, count)
        out = b""
        for _ in range(n):
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token = lc.llama_sampler_sample(sampler, ctx, -1)
            if lc.llama_vocab_is_eog(vocab, token):
                break
            size = lc.llama_token_to_piece(vocab, token, piece, 64, 0, False)
            out += piece.raw[:size]
            on_token()
            one = (lc.llama_token * 1)(token)
            batch = lc.llama_batch_get_one(one, 1)
        return out.decode("utf-8", "replace"), count

    return generate


def _llama_high(path: str, threads: int) -> Generate:
    """llama-cpp-python's high-level `Llama.create_completion(stream=True)`. `Llama` takes no
    `use_extra_bufts`: its default model parameters are replaced by `_model_params`."""
    import llama_cpp.llama_cpp as lc  # the module `Llama` calls
    from llama_cpp import Llama

    params = _model_params(lc)
    lc.llama_model_default_params = lambda: params

    llm = Llama(
        path, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def generate(prompt: str, n: int, on_token: Callable[[], None]) -> tuple[str, int]:
        text = ""
        for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
            choice = chunk["choices"][0]
            if choice["finish_reason"] is None:  # the last chunk only says why it ended
                text += choice["text"]
                on_token()
        return text, len(llm.tokenize(prompt.encode()))

    return generate


def _transformers(path: str, threads: int) -> Generate:
    """`model.generate(do_sample=False, streamer=...)`, the streamer only noting each token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    class Clock(BaseStreamer):  # type: ignore[misc]
        def __init__(self, on_token: Callable[[], None]) -> None:
            self.on_token, self.prompt_seen = on_token, False

        def put(self, value: Any) -> None:
            if self.prompt_seen:
                self.on_token()
            self.prompt_seen = True

        def end(self) -> None:
            pass

    def generate(prompt: str, n: int, on_token: Callable[[], None]) -> tuple[str, int]:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
                streamer=Clock(on_token),
            )
        width = enc["input_ids"].shape[1]
        return tok.decode(out[0, width:], skip_special_tokens=True), width

    return generate


def _genai(path: str, threads: int) -> Generate:
    """onnxruntime-genai's own loop: `generate_next_token` / `get_next_tokens`, its greedy
    search and its tokenizer stream."""
    import onnxruntime_genai as og

    config = og.Config(path)
    config.clear_providers()
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    model = og.Model(config)
    tok = og.Tokenizer(model)

    def generate(prompt: str, n: int, on_token: Callable[[], None]) -> tuple[str, int]:
        ids = tok.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=GEN_KV, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        stream, text, made = tok.create_stream(), "", 0
        while made < n and not gen.is_done():
            gen.generate_next_token()
            if gen.is_done():
                break
            text += stream.decode(int(gen.get_next_tokens()[0]))
            made += 1
            on_token()
        return text, len(ids)

    return generate


GENERATORS: dict[str, Callable[[str, int], Generate]] = {
    "llama.cpp": _llama_low,
    "llama-cpp-python": _llama_high,
    "transformers": _transformers,
    "onnxruntime-genai": _genai,
}


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _timed_generation(generate: Generate, n: int) -> dict[str, Any]:
    stamps: list[float] = []
    start = time.perf_counter()
    text, prompt_tokens = generate(PROMPT, n, lambda: stamps.append(time.perf_counter()))
    return {
        "ttft": stamps[0] - start,
        "total": stamps[-1] - start,
        "tokens": len(stamps),
        "prompt_tokens": prompt_tokens,
        "text": text,
    }


def direct(kind: str, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Import, load, then `args.repeats` timed runs (after one short warm-up)."""
    start = time.perf_counter()
    for module in IMPORTS[kind]:
        importlib.import_module(module)
    result: dict[str, Any] = {"import_s": time.perf_counter() - start}
    start = time.perf_counter()
    if kind == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(args.threads)
        st = SentenceTransformer(path, device="cpu")
    else:
        generate = GENERATORS[kind](path, args.threads)
    result.update(load_s=time.perf_counter() - start, rss_load=_rss(), runs=[])
    if not args.repeats:
        return result
    if kind == "sentence-transformers":
        st.encode(TEXTS[:EMBED_BATCH], batch_size=EMBED_BATCH)
        for _ in range(args.repeats):
            start = time.perf_counter()
            vectors = st.encode(TEXTS, batch_size=EMBED_BATCH)
            result["runs"].append({"seconds": time.perf_counter() - start})
        result["vectors"] = vectors[:4].tolist()
    else:
        generate(PROMPT, 4, lambda: None)
        result["runs"] = [_timed_generation(generate, args.tokens) for _ in range(args.repeats)]
    result["rss_after"] = _rss()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(IMPORTS))
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(direct(args.kind, args.path, args)))


if __name__ == "__main__":
    main()
