"""Swap benchmark, ours against llama.cpp's own llama-server in router mode, same files, same
threads, same slots, one run:

- swaps: time to first token for a cold model, a warm (loaded) one, and one that needs an
  eviction first, with `models_max = 1` and the two bundled models;
- storm: three copies of SmolLM2 (alpha, beta, gamma), `models_max = 2`, and right after start
  six asyncio clients that each loop over the three models for 25 s (an 8-token greedy
  completion, the next as soon as the last ended): requests served per second, the worst
  latency, and requests lost (an error other than a 429/503 with Retry-After, or no answer in
  90 s).

    .venv/bin/python bench/swap.py [--rounds 5] [--storm-seconds 25] [--skip-swaps]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    bundled_models,
    llama_server,
    ours,
    peer_flags,
    stream_timing,
    workdir,
    write_result,
)

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
    out = {
        "cold_ttft_s": cold,
        "warm_ttft_p50_s": statistics.median(warm),
        "swap_ttft_p50_s": statistics.median(swap),
        "swap_ttft_max_s": max(swap),
    }
    for model, name in ((SMOL, "smollm2"), (GEMMA, "gemma")):
        mine = [seconds for m, seconds in loads if m == model]
        if mine:
            out[f"load_{name}_p50_s"] = statistics.median(mine)
    return out


async def storm(url: str, models: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` loops over `models` (each starting at a different one) for `seconds`."""
    served, refused, lost, latencies = 0, 0, 0, []
    stop_at = time.monotonic() + seconds
    started_at = time.monotonic()

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal served, refused, lost
        n = i
        while time.monotonic() < stop_at:
            body = {
                "model": models[n % len(models)],
                "prompt": "Hello",
                "max_tokens": 8,
                "temperature": 0,
            }
            t0 = time.monotonic()
            try:
                r = await http.post(url + "/v1/completions", json=body)
            except httpx.HTTPError:
                lost += 1  # hung past the client's timeout, or the connection broke
            else:
                if r.status_code == 200:
                    served += 1
                elif r.status_code in (429, 503) and "retry-after" in r.headers:
                    refused += 1
                    await asyncio.sleep(float(r.headers["retry-after"]) / 5)
                else:
                    lost += 1
            latencies.append(time.monotonic() - t0)
            n += 1

    async with httpx.AsyncClient(timeout=90) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.monotonic() - started_at
    return {
        "served": served,
        "refused": refused,
        "lost": lost,
        "served_per_s": served / wall,
        "worst_latency_s": max(latencies, default=0.0),
        "p50_latency_s": statistics.median(latencies) if latencies else 0.0,
    }


def storm_models(work: Path, models: Path) -> Path:
    folder = work / "storm"
    folder.mkdir(exist_ok=True)
    smol = models / f"{SMOL}.gguf"
    for name in ("alpha", "beta", "gamma"):
        if not (folder / f"{name}.gguf").exists():
            os.link(smol, folder / f"{name}.gguf")
    return folder


def run_storm(work: Path, models: Path, threads: int, seconds: float) -> dict[str, Any]:
    folder = storm_models(work, models)
    names = ["alpha", "beta", "gamma"]
    out: dict[str, Any] = {}
    srv = ours(
        {
            "models_dir": str(folder),
            "models_max": 2,
            "model_defaults": {"threads": threads, "parallel": 4, "context_size": 2048},
        },
        work,
    )
    try:
        out["llm-router"] = asyncio.run(storm(srv.url, names, 6, seconds))
    finally:
        srv.stop()
    peer = llama_server(
        [
            "--models-dir",
            str(folder),
            "--models-max",
            "2",
            *peer_flags(threads, 4, 2048),
        ],
        work,
    )
    try:
        out["llama-server"] = asyncio.run(storm(peer.url, names, 6, seconds))
    finally:
        peer.stop()
    out["ratio_served_per_s"] = out["llm-router"]["served_per_s"] / max(
        out["llama-server"]["served_per_s"], 1e-9
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each round")
    parser.add_argument("--storm-seconds", type=float, default=25.0)
    parser.add_argument("--skip-swaps", action="store_true", help="only the storm")
    parser.add_argument("--skip-storm", action="store_true", help="only the swaps")
    args = parser.parse_args()
    work = workdir()
    models = bundled_models(work / "models")
    if not args.skip_storm:
        stormed = run_storm(work, models, args.threads, args.storm_seconds)
        write_result("swap-storm", stormed)
        for name in ("llm-router", "llama-server"):
            print(f"storm {name}:", {k: round(v, 3) for k, v in stormed[name].items()})
        print(f"storm ratio served/s ours/llama-server: {stormed['ratio_served_per_s']:.2f}")
    if args.skip_swaps:
        return
    results = {}
    srv = ours(
        {
            "models_dir": str(models),
            "models_max": 1,
            "model_defaults": {"threads": args.threads, "parallel": 4, "context_size": 2048},
        },
        work,
    )
    try:
        results["llm-router"] = measure(srv.url, args.rounds, ours=True, gap=args.gap)
    finally:
        srv.stop()
    peer = llama_server(
        [
            "--models-dir",
            str(models),
            "--models-max",
            "1",
            *peer_flags(args.threads, 4, 2048),
        ],
        work,
    )
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
