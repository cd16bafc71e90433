"""Several answers to one prompt, and the cost of log-probabilities.

`n`: four answers to one long prompt (~500 tokens) as one request with `n: 4` against four
separate requests sent at once, total time and time to first token; with `--baseline SRC`
also the same on another checkout (e.g. one before the engine shared a prompt that arrives
several times at once), in the same rounds. Then `logprobs`: 8 streams with `logprobs: 5`
against 8 without, aggregate tok/s. Rounds alternate, medians reported.

    .venv/bin/python bench/choices.py [--model gemma|smol] [--rounds 3] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from common import (
    Proc,
    bundled_models,
    concurrent_timings,
    llama_repack_default,
    ours,
    slot_defaults,
    workdir,
    write_result,
)

FILES = {"gemma": "gemma-3-270m-q4_k_m", "smol": "SmolLM2-135M-Instruct.Q4_1"}
LONG = " ".join(f"Rule {i}: answer briefly and precisely." for i in range(70))  # ~500 tokens


def concurrent(url: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    results, wall = concurrent_timings(url, bodies)
    return {
        "wall_s": wall,
        "ttft_s": statistics.median(r["ttft"] for r in results),
        "tok_s": sum(r["tokens"] for r in results) / wall,
    }


def workload(url: str, model: str, tokens: int, salt: int) -> dict[str, dict[str, float]]:
    """Each round a prompt no slot holds yet (`salt`), so the prefill is paid every time."""
    body = {"model": model, "max_tokens": tokens, "temperature": 0.8, "ignore_eos": True}
    prompt = f"Variant {salt}. {LONG} Now write a story:"
    other = f"Variant {salt + 500}. {LONG} Now write a story:"  # held by no slot either
    out = {
        "n4_one_request": concurrent(url, [{**body, "prompt": prompt, "n": 4, "seed": salt}]),
        "n4_four_requests": concurrent(
            url, [{**body, "prompt": other, "seed": salt + i} for i in range(4)]
        ),
    }
    eight = [{**body, "prompt": f"Story {i}: once upon a time", "seed": salt + i} for i in range(8)]
    out["c8_plain"] = concurrent(url, eight)
    out["c8_logprobs5"] = concurrent(url, [{**b, "logprobs": 5} for b in eight])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(FILES), default="gemma")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="SRC", help="another checkout's src/, same rounds")
    args = parser.parse_args()
    work = workdir()
    config = {
        "models_dir": str(bundled_models(work / "models")),
        "model_defaults": slot_defaults(2, 8, 1024, llama_repack_default()),
        "cache": {"enabled": False},
    }
    servers: dict[str, Proc] = {"llm-router": ours(config, work)}
    if args.baseline:
        servers["llm-router@base"] = ours(config, work, src=args.baseline)
    model = FILES[args.model]
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in servers}
    try:
        for srv in servers.values():
            workload(srv.url, model, 4, 0)  # warm
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                rounds[name].append(workload(servers[name].url, model, args.tokens, 1000 * i + 1))
                print(f"round {i} {name}: {rounds[name][-1]['n4_one_request']}")
    finally:
        for srv in servers.values():
            srv.stop()
    results = {
        name: {
            key: {f: statistics.median(r[key][f] for r in rows) for f in rows[0][key]}
            for key in rows[0]
        }
        for name, rows in rounds.items()
    }
    ours_ = results["llm-router"]
    ratios = {
        "n4_over_four_requests_time": ours_["n4_four_requests"]["wall_s"]
        / ours_["n4_one_request"]["wall_s"],
        "logprobs5_tok_s_over_plain": ours_["c8_logprobs5"]["tok_s"] / ours_["c8_plain"]["tok_s"],
    }
    if "llm-router@base" in results:
        base = results["llm-router@base"]
        ratios["n4_time_base_over_ours"] = (
            base["n4_one_request"]["wall_s"] / ours_["n4_one_request"]["wall_s"]
        )
        ratios["four_requests_time_base_over_ours"] = (
            base["n4_four_requests"]["wall_s"] / ours_["n4_four_requests"]["wall_s"]
        )
    path = write_result(
        f"choices-{args.model}", {"args": vars(args), "results": results, "ratios": ratios}
    )
    for name, rows in results.items():
        for key, row in rows.items():
            print(f"{name:16} {key:18} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
    for key, value in ratios.items():
        print(f"ratio {key:36} x{value:.2f}")
    print("written", path)


if __name__ == "__main__":
    main()
