"""Structured output: what a JSON schema costs. Generated tokens/s of 1 and 8 concurrent streams
on Gemma 3 270M, each constrained by a JSON schema (`json_schema` on /v1/completions, which both
servers accept), against the same requests unconstrained on our server, and against llama.cpp's
llama-server (its GBNF grammar from the same schema) on the same GGUF, threads, slots and
context. Both servers run side by side and the rounds alternate between them (medians of
`--rounds`). The schema asks for a long array of records, so every stream is still inside the
JSON when `--tokens` ends it: tok/s compares like with like.

Then the time to compile a schema (p50, p99) over the test suite's 54 schemas, in-process on
each bundled model's vocabulary: llguidance's compile and validation, as the first request with
a new schema pays it (later ones hit the model's cache).

    .venv/bin/python bench/structured.py [--tokens 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

from batching import median_rows, run_concurrent
from common import (
    ROOT,
    Proc,
    bundled_models,
    llama_repack_default,
    llama_server,
    ours,
    pct,
    peer_flags,
    slot_defaults,
    workdir,
    write_result,
)

MODEL = "gemma-3-270m-q4_k_m"
RECORDS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "city": {"type": "string", "maxLength": 12},
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    },
    "minItems": 40,
}


def workload(url: str, tokens: int, constrained: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": tokens, "temperature": 0}
    if constrained:
        body["json_schema"] = RECORDS
    else:
        body["ignore_eos"] = True
    out = {}
    for n in (1, 8):
        bodies = [
            {**body, "prompt": f"List {i}: people and where they live, as JSON:"} for i in range(n)
        ]
        out[f"c{n}"] = run_concurrent(url, bodies, "/v1/completions")
    return out


def compile_times() -> dict[str, dict[str, float]]:
    import llama_cpp as lc

    sys.path.insert(0, str(ROOT / "tests"))
    from json_schemas import SCHEMAS  # type: ignore[import-not-found]
    from llm_router import defaults
    from llm_router.engines.constraints import Grammars
    from llm_router.engines.llamacpp_load import lltokenizer
    from llm_router.types import Constraint

    lc.llama_backend_init()
    models = bundled_models(workdir() / "models")
    out = {}
    for name in (defaults.SMOLLM2_FILE, defaults.GEMMA_FILE):
        params = lc.llama_model_default_params()
        params.vocab_only = True
        model = lc.llama_model_load_from_file(str(models / name).encode(), params)
        vocab = lc.llama_model_get_vocab(model)
        n = lc.llama_vocab_n_tokens(vocab)
        eog = [t for t in range(n) if lc.llama_vocab_is_eog(vocab, t)]
        started = time.perf_counter()
        grammars = Grammars(functools.partial(lltokenizer, vocab, eog))
        _ = grammars.tokenizer
        tokenizer_s = time.perf_counter() - started
        times = []
        for schema in SCHEMAS:
            started = time.perf_counter()
            grammars.matcher(Constraint("json", json.dumps(schema), strict=True))
            times.append(time.perf_counter() - started)
        out[name] = {
            "tokenizer_s": tokenizer_s,
            "compile_p50_ms": pct(times, 0.5) * 1000,
            "compile_p99_ms": pct(times, 0.99) * 1000,
            "schemas": len(times),
        }
        lc.llama_model_free(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=1024, help="context per slot")
    args = parser.parse_args()
    work = workdir()
    models = bundled_models(work / "models")
    repack = llama_repack_default()
    srv: Proc = ours(
        {
            "models_dir": str(models),
            "model_defaults": slot_defaults(args.threads, args.slots, args.ctx, repack),
        },
        work,
    )
    peer_args = [
        "-m",
        str(models / f"{MODEL}.gguf"),
        *peer_flags(args.threads, args.slots, args.ctx, repack=repack),
    ]
    peer: Proc | None = None
    rounds: dict[str, list[dict[str, Any]]] = {
        "ours-schema": [],
        "ours-free": [],
        "llama-schema": [],
    }
    try:
        peer = llama_server(peer_args, work)
        runs = {
            "ours-schema": (srv.url, True),
            "ours-free": (srv.url, False),
            "llama-schema": (peer.url, True),
        }
        for url, constrained in runs.values():
            workload(url, 8, constrained)  # warm: loaded, tokenizer view and grammar built
        for i in range(args.rounds):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in order:
                url, constrained = runs[name]
                rounds[name].append(workload(url, args.tokens, constrained))
                print(
                    f"round {i} {name}: c8 {rounds[name][-1]['c8']['tok_s']:.1f} tok/s", flush=True
                )
    finally:
        srv.stop()
        if peer is not None:
            peer.stop()
    results = {name: median_rows(rows) for name, rows in rounds.items()}
    ratios = {
        key: {
            "schema_over_free": results["ours-schema"][key]["tok_s"]
            / results["ours-free"][key]["tok_s"],
            "ours_over_llama_server": results["ours-schema"][key]["tok_s"]
            / results["llama-schema"][key]["tok_s"],
        }
        for key in results["ours-schema"]
    }
    compile = compile_times()
    path = write_result(
        "structured",
        {
            "args": vars(args),
            "results": results,
            "rounds": rounds,
            "ratios": ratios,
            "compile": compile,
        },
    )
    for name, rows in results.items():
        for key, row in rows.items():
            print(f"{name:13} {key:4} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
    for key, r in ratios.items():
        print(
            f"ratio {key}: schema/free x{r['schema_over_free']:.2f}  "
            f"ours/llama-server x{r['ours_over_llama_server']:.2f}"
        )
    print(json.dumps(compile, indent=1))
    print("written", path)


if __name__ == "__main__":
    main()
