"""The response cache through the HTTP server on the real bundled SmolLM2: latency of a hit, a
miss (the model computes) and a semantic hit (all-MiniLM-L6-v2 embeds the request first), as
plain and streamed requests, and the hit ratio of a replayed workload with repeats. The peer
in the same run is the same server with the cache off (every request computed).

    python bench/cache.py [--requests 200] [--distinct 40]

One server per configuration, each on 127.0.0.1 and a free port, stopped by PID at the end."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import httpx
from common import bundled_models, ours, pct, workdir, write_result

from llm_router import defaults

SMOL = defaults.SMOLLM2_FILE.removesuffix(".gguf")


def _body(question: str, stream: bool = False) -> dict[str, Any]:
    return {
        "model": SMOL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 16,
        "stream": stream,
    }


def _timed(client: httpx.Client, body: dict[str, Any], **headers: str) -> tuple[float, str]:
    """Seconds until the whole answer is read, and the x-llm-router-cache header."""
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        for _ in r.iter_raw():
            pass
        r.raise_for_status()
    return time.perf_counter() - start, r.headers.get("x-llm-router-cache", "")


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 0.5) * 1000, "p99_ms": pct(values, 0.99) * 1000, "n": len(values)}


def measure(url: str, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        _timed(client, _body("warm up"))
        for stream in (False, True):
            kind = "stream" if stream else "plain"
            question = f"Name a color ({kind})."
            _timed(client, _body(question, stream))  # stored
            hits = [_timed(client, _body(question, stream)) for _ in range(rounds)]
            misses = [
                _timed(client, _body(question, stream), **{"cache-control": "no-cache"})
                for _ in range(max(3, rounds // 20))
            ]
            out[f"hit_{kind}"] = _stats([t for t, h in hits])
            out[f"miss_{kind}"] = _stats([t for t, h in misses])
            out[f"hit_{kind}_headers"] = sorted({h for _, h in hits})
    return out


def semantic(url: str, rounds: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120) as client:
        _timed(client, _body("What is the capital of France?"))
        times = []
        headers = set()
        for _ in range(rounds):
            # a semantic hit stores nothing under the paraphrase's own key, so the same
            # paraphrase again is again an exact miss and a semantic hit
            t, h = _timed(client, _body("What's the capital city of France?"))
            times.append(t)
            headers.add(h)
    return {"semantic_hit": _stats(times), "headers": sorted(headers)}


def replay(url: str, requests: int, distinct: int, seed: int = 7) -> dict[str, float]:
    """A workload where a few questions come back often (Zipf-like weights)."""
    rng = random.Random(seed)
    questions = [f"Give me one word about topic number {i}." for i in range(distinct)]
    weights = [1 / (i + 1) for i in range(distinct)]
    hits = 0
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        for q in rng.choices(questions, weights, k=requests):
            _, header = _timed(client, _body(q))
            hits += header == "hit"
    return {
        "requests": requests,
        "distinct": distinct,
        "hit_ratio": hits / requests,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200, help="hits measured per kind")
    parser.add_argument("--requests", type=int, default=200, help="replayed workload size")
    parser.add_argument("--distinct", type=int, default=40, help="distinct questions in it")
    args = parser.parse_args()
    work = workdir()
    models = bundled_models(work / "models")
    base = {"models_dir": str(models), "watch_interval": 0, "log_requests": False}
    results: dict[str, Any] = {}
    configs: dict[str, dict[str, Any]] = {
        "cache-on": {"cache": {"enabled": True}},
        "cache-off": {"cache": {"enabled": False}},
        "semantic": {
            "cache": {"semantic": {"model": defaults.MINILM_ID, "threshold": 0.1}},
        },
    }
    if defaults.place_minilm(models) is None:
        configs.pop("semantic")
    for name, extra in configs.items():
        server = ours({**base, **extra}, work)
        try:
            if name == "semantic":
                results[name] = semantic(server.url, max(20, args.rounds // 5))
            else:
                results[name] = measure(server.url, args.rounds)
                results[name]["replay"] = replay(server.url, args.requests, args.distinct)
        finally:
            server.stop()
        print(name, results[name], flush=True)
    on, off = results["cache-on"], results["cache-off"]
    results["summary"] = {
        "hit_p50_ms": on["hit_plain"]["p50_ms"],
        "hit_stream_p50_ms": on["hit_stream"]["p50_ms"],
        "computed_p50_ms": off["hit_plain"]["p50_ms"],
        "computed_over_hit_p50": off["hit_plain"]["p50_ms"] / on["hit_plain"]["p50_ms"],
        "replay_hit_ratio": on["replay"]["hit_ratio"],
        "replay_speedup": off["replay"]["seconds"] / on["replay"]["seconds"],
    }
    if "semantic" in results:
        results["summary"]["semantic_hit_p50_ms"] = results["semantic"]["semantic_hit"]["p50_ms"]
    print(results["summary"])
    path: Path = write_result("cache", results)
    print("wrote", path)


if __name__ == "__main__":
    main()
