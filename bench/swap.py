"""Swap benchmark: time to first token for a cold model, a warm (loaded) one, and one that
needs an eviction first, with `models_max = 1` and the two bundled models. Ours against
llama.cpp's own llama-server in router mode (`--models-dir --models-max 1`), same files,
same threads, same slots, one run.

    .venv/bin/python bench/swap.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from common import bundled_models, llama_server, ours, stream_timing, workdir, write_result

SMOL = "SmolLM2-135M-Instruct.Q4_1"
GEMMA = "gemma-3-270m-q4_k_m"
BODY = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def measure(url: str, rounds: int, ours: bool = False, gap: float = 0.2) -> dict[str, float]:
    cold = stream_timing(url, {**BODY, "model": SMOL})["ttft"]
    warm, swap, loads = [], [], []
    current = SMOL
    for _ in range(rounds):
        time.sleep(gap)
        warm.append(stream_timing(url, {**BODY, "model": current})["ttft"])
        current = GEMMA if current == SMOL else SMOL
        swap.append(stream_timing(url, {**BODY, "model": current})["ttft"])
        if ours:  # the load itself, as the router measured it (process start excluded by spares)
            entry = {m["id"]: m for m in httpx.get(url + "/models").json()["data"]}[current]
            loads.append((current, entry["load_seconds"]))
        time.sleep(0.2)
    out = {"cold_ttft_s": cold, "warm_ttft_p50_s": statistics.median(warm),
           "swap_ttft_p50_s": statistics.median(swap), "swap_ttft_max_s": max(swap)}  # fmt: skip
    for model, name in ((SMOL, "smollm2"), (GEMMA, "gemma")):
        mine = [seconds for m, seconds in loads if m == model]
        if mine:
            out[f"load_{name}_p50_s"] = statistics.median(mine)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each round")
    args = parser.parse_args()
    work = workdir()
    models = bundled_models(work / "models")
    results = {}
    srv = ours({"models_dir": str(models), "models_max": 1,
                "model_defaults": {"threads": args.threads, "parallel": 4,
                                   "context_size": 2048}}, work)  # fmt: skip
    try:
        results["llm-router"] = measure(srv.url, args.rounds, ours=True, gap=args.gap)
    finally:
        srv.stop()
    peer = llama_server(["--models-dir", str(models), "--models-max", "1", "-t", str(args.threads),
                         "-np", "4", "-c", str(2048 * 4), "--no-webui"], work)  # fmt: skip
    try:
        results["llama-server"] = measure(peer.url, args.rounds, gap=args.gap)
    finally:
        peer.stop()
    ratios = {
        k: results["llm-router"][k] / results["llama-server"][k] for k in results["llama-server"]
    }
    path = write_result(
        "swap", {"rounds": args.rounds, "results": results, "ratio_ours_over_peer": ratios}
    )
    for name, row in results.items():
        print(name, {k: round(v * 1000, 1) for k, v in row.items()}, "(ms)")
    print("ratio ours/llama-server (lower is better):", {k: round(v, 2) for k, v in ratios.items()})
    print("written", path)


if __name__ == "__main__":
    main()
