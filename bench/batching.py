"""Continuous batching: aggregate generated tokens/s and time to first token at 1, 4 and 8
concurrent streams, 8 streams of which half end early (gaps in the busy slots), and a
shared-prefix workload (8 requests with a common ~500-token system prompt), ours against
llama.cpp's own llama-server built from the same vendored source. Same model file, threads,
slots, context and weight layout (repack), both on 127.0.0.1, same client.
Then two models busy at once against one model alone (our thread budget).

Both servers run side by side (an idle one costs nothing) and the workload alternates between
them round after round, the order flipped each round; each cell is the median of its rounds.
So a slow minute on this shared machine falls on both sides instead of on whichever ran then.

    .venv/bin/python bench/batching.py [--model gemma|smol] [--tokens 96] [--rounds 3]
        [--temperature 0.8] [--slots 16 --streams 1,8,16]
"""

from __future__ import annotations

import argparse
import random
import statistics
from typing import Any

from common import (
    Proc,
    bundled_models,
    concurrent_timings,
    llama_repack_default,
    llama_server,
    ours,
    pct,
    peer_flags,
    slot_defaults,
    stream_timing,
    workdir,
    write_result,
)

FILES = {"gemma": "gemma-3-270m-q4_k_m", "smol": "SmolLM2-135M-Instruct.Q4_1"}
SYSTEM = " ".join(f"Rule {i}: answer briefly and precisely." for i in range(70))  # ~500 tokens


def run_concurrent(url: str, bodies: list[dict[str, Any]], path: str) -> dict[str, float]:
    results, wall = concurrent_timings(url, bodies, path)
    ttfts = [r["ttft"] for r in results]
    return {
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": pct(ttfts, 0.5),
        "ttft_p95": pct(ttfts, 0.95),
        "wall_s": wall,
    }


def workload(
    url: str, model: str, tokens: int, temperature: float = 0, streams: tuple[int, ...] = (1, 4, 8)
) -> dict[str, Any]:
    """Greedy, or sampled at `temperature` (llama.cpp's default top-k/top-p/min-p on both
    sides) with a fresh random seed per request, as OpenAI clients send."""
    out: dict[str, Any] = {}
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": tokens,
        "temperature": temperature,
        "ignore_eos": True,
    }
    # A prompt never sent before: a repeated greedy one is answered from our response cache
    # without the engine, whose first step after seconds idle is then the measured 1-stream
    # request's (20-45 ms slower to first token; llama-server's warm-up runs its engine).
    stream_timing(url, {**body, "prompt": f"warm up {random.getrandbits(32)}", "max_tokens": 4})
    for n in streams:
        bodies = [{**body, "prompt": f"Story {i}: once upon a time", **_seed()} for i in range(n)]
        out[f"c{n}"] = run_concurrent(url, bodies, "/v1/completions")
    # 8 streams that end at different times (as real answers do): every other one stops at a
    # quarter of the length, so the busy slots are left with gaps for the rest of the run.
    bodies = [
        {
            **body,
            "prompt": f"Story {i}: once upon a time",
            "max_tokens": tokens if i % 2 == 0 else tokens // 4,
            **_seed(),
        }
        for i in range(8)
    ]
    out["staggered_c8"] = run_concurrent(url, bodies, "/v1/completions")
    chat = [
        {
            **body,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Question {i}: name a colour."},
            ],
        }
        for i in range(8)
    ]
    run_concurrent(url, chat[:1], "/v1/chat/completions")  # the prefix is now cached somewhere
    out["shared_prefix_c8"] = run_concurrent(url, chat, "/v1/chat/completions")
    return out


def _seed() -> dict[str, int]:
    return {"seed": random.getrandbits(31)}


def median_rows(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        key: {field: statistics.median(r[key][field] for r in rounds) for field in rounds[0][key]}
        for key in rounds[0]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(FILES), default="gemma")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--streams", default="1,4,8", help="concurrent streams per row (at most --slots)"
    )
    parser.add_argument(
        "--temperature", type=float, default=0, help="0: greedy; else sampled, a seed each"
    )
    parser.add_argument("--one-model", action="store_true", help="skip the two-models row")
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="another checkout's src/ directory, run as llm-router@base in the same rounds",
    )
    args = parser.parse_args()
    streams = tuple(int(n) for n in args.streams.split(","))
    work = workdir()
    models = bundled_models(work / "models")
    model = FILES[args.model]
    repack = llama_repack_default()
    config = {
        "models_dir": str(models),
        "model_defaults": slot_defaults(args.threads, args.slots, args.ctx, repack),
    }
    srv: Proc = ours(config, work)
    base = ours(config, work, src=args.baseline) if args.baseline else None
    peer_args = [
        "-m",
        str(models / f"{model}.gguf"),
        "--jinja",
        *peer_flags(args.threads, args.slots, args.ctx, repack=repack),
    ]
    peer: Proc | None = None
    rounds: dict[str, list[dict[str, Any]]] = {"llm-router": [], "llama-server": []}
    try:
        peer = llama_server(peer_args, work)
        servers = {"llm-router": srv.url, "llama-server": peer.url}
        if base is not None:
            servers["llm-router@base"] = base.url
            rounds["llm-router@base"] = []
        for url in servers.values():
            workload(url, model, 8)  # warm: model loaded, caches touched
        for i in range(args.rounds):
            order = list(servers) if i % 2 == 0 else list(reversed(servers))
            for name in order:
                rounds[name].append(
                    workload(servers[name], model, args.tokens, args.temperature, streams)
                )
                top = f"c{max(streams)}"
                print(f"round {i} {name}: {top} {rounds[name][-1][top]['tok_s']:.1f} tok/s")
        peer.stop()
        peer = None
        two = two_models(srv.url, args.tokens) if not args.one_model else {}
    finally:
        srv.stop()
        for proc in (peer, base):
            if proc is not None:
                proc.stop()
    results = {name: median_rows(rows) for name, rows in rounds.items()}
    results["llm-router"]["two_models_c4_each"] = two
    ratios = {
        key: {
            "tok_s": results["llm-router"][key]["tok_s"] / results["llama-server"][key]["tok_s"],
            "ttft_p50": results["llm-router"][key]["ttft_p50"]
            / results["llama-server"][key]["ttft_p50"],
        }
        for key in results["llama-server"]
    }
    if base is not None:
        for key in results["llm-router@base"]:
            ratios[key]["tok_s_ours_over_base"] = (
                results["llm-router"][key]["tok_s"] / results["llm-router@base"][key]["tok_s"]
            )
    path = write_result(
        f"batching-{args.model}"
        + (f"-t{args.temperature:g}" if args.temperature else "")
        + (f"-s{args.slots}" if args.slots != 8 else ""),
        {
            "args": vars(args),
            "repack": repack,
            "results": results,
            "rounds": rounds,
            "ratio_ours_over_peer": ratios,
        },
    )
    for name, rows in results.items():
        for key, row in rows.items():
            print(f"{name:13} {key:20} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()))
    for key, r in ratios.items():
        base_ratio = f"  over base x{r['tok_s_ours_over_base']:.2f}" if base is not None else ""
        print(f"ratio {key:20} tok/s x{r['tok_s']:.2f}  ttft_p50 x{r['ttft_p50']:.2f}{base_ratio}")
    print("written", path)


def two_models(url: str, tokens: int) -> dict[str, float]:
    """Four streams on each bundled model at once vs four on one alone (aggregate tok/s)."""

    def bodies(model: str) -> list[dict[str, Any]]:
        return [
            {
                "model": model,
                "max_tokens": tokens,
                "temperature": 0,
                "ignore_eos": True,
                "prompt": f"Story {i}: once upon a time",
            }
            for i in range(4)
        ]

    stream_timing(url, {**bodies(FILES["smol"])[0], "max_tokens": 2})  # load both
    stream_timing(url, {**bodies(FILES["gemma"])[0], "max_tokens": 2})
    alone = run_concurrent(url, bodies(FILES["gemma"]) + bodies(FILES["gemma"]), "/v1/completions")
    both = run_concurrent(url, bodies(FILES["gemma"]) + bodies(FILES["smol"]), "/v1/completions")
    return {
        "tok_s": both["tok_s"],
        "one_model_tok_s": alone["tok_s"],
        "ratio_two_over_one": both["tok_s"] / alone["tok_s"],
        "ttft_p50": both["ttft_p50"],
        "ttft_p95": both["ttft_p95"],
    }


if __name__ == "__main__":
    main()
