"""The Ray Serve hop: what `llm-router serve --ray` adds to a request against the
single-process server, same model, same settings, same run, rounds interleaved (the machine's
noise hits both alike).

Ray: a local one-node cluster this script starts on loopback (tests/ray_cluster.py; stopped
by its pids), one model replica (1 CPU, so 1 llama.cpp thread) behind the router's ingress
replica and Serve's HTTP proxy. Single: `llm-router serve` with the same model defaults (1
thread, the same slots and context). Both serve the bundled SmolLM2 with the cache off.

Per round and server, sequentially (concurrency 1): `--short` one-token completions (the
latency of a request whose generation is nearly free: the hop shows whole) and `--streams`
streamed completions of `--tokens` tokens (time to first token, and decode tokens/s).

    python bench/ray_hop.py [--rounds 5] [--short 20] [--streams 5] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import yaml
from common import (
    ROOT,
    Proc,
    bundled_models,
    free_port,
    ours,
    pct,
    stream_timing,
    workdir,
    write_result,
)

sys.path.insert(0, str(ROOT / "tests"))
from ray_cluster import RayCluster

MODEL = "SmolLM2-135M-Instruct.Q4_1"
DEFAULTS = {"threads": 1, "parallel": 2, "context_size": 1024}


def ray_server(cluster: RayCluster, models: Path, work: Path) -> Proc:
    port = free_port()
    cfg = work / "ray.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": port,
                "log_level": "warning",
                "models_dir": str(models),
                "cache": {"enabled": False},
                "model_defaults": DEFAULTS,
                "ray": {"replicas": 1, "num_cpus": 1, "models_per_replica": 1},
            }
        )
    )
    args = [sys.executable, "-m", "llm_router", "serve", "--config", str(cfg)]
    args += ["--ray", cluster.address]
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    return Proc(args, f"http://127.0.0.1:{port}", "/health", work / "ray.log", env)


def short(url: str, count: int) -> list[float]:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    out = []
    with httpx.Client(timeout=120) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.post(url + "/v1/completions", json=body).raise_for_status()
            out.append(time.perf_counter() - start)
    return out


def streams(url: str, count: int, tokens: int) -> list[dict[str, float]]:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": tokens}
    body |= {"temperature": 0, "ignore_eos": True}
    return [stream_timing(url, body) for _ in range(count)]


def summary(latency: list[float], timings: list[dict[str, float]]) -> dict[str, float]:
    ttft = [t["ttft"] for t in timings]
    decode = [(t["tokens"] - 1) / (t["total"] - t["ttft"]) for t in timings if t["tokens"] > 1]
    return {
        "short_p50_ms": statistics.median(latency) * 1e3,
        "short_p90_ms": pct(latency, 0.9) * 1e3,
        "ttft_p50_ms": statistics.median(ttft) * 1e3,
        "decode_tok_s": statistics.median(decode) if decode else 0.0,
        "n_short": len(latency),
        "n_streams": len(timings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--short", type=int, default=20)
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    work = workdir()
    models = bundled_models(work / "models")
    cluster = RayCluster(head_cpus=2, node_cpus=0)
    cluster.start_head()
    servers: dict[str, Proc] = {}
    try:
        servers["single"] = ours(
            {"models_dir": str(models), "cache": {"enabled": False}, "model_defaults": DEFAULTS},
            work,
        )
        servers["ray"] = ray_server(cluster, models, work)
        for srv in servers.values():  # loaded and warm
            short(srv.url, 3)
            streams(srv.url, 1, 8)
        latency: dict[str, list[float]] = {k: [] for k in servers}
        timings: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                latency[name] += short(servers[name].url, args.short)
                timings[name] += streams(servers[name].url, args.streams, args.tokens)
        results = {k: summary(latency[k], timings[k]) for k in servers}
        one, ray = results["single"], results["ray"]
        results["added"] = {
            "short_p50_ms": ray["short_p50_ms"] - one["short_p50_ms"],
            "ttft_p50_ms": ray["ttft_p50_ms"] - one["ttft_p50_ms"],
            "decode_ratio": ray["decode_tok_s"] / one["decode_tok_s"],
        }
        load = os.getloadavg()[0]
        path = write_result(
            "ray_hop", {"args": vars(args), "load_average": load, "results": results}
        )
        for name, values in results.items():
            print(name, {k: round(v, 2) for k, v in values.items()})
        print(f"load average {load:.1f}; written to {path}")
    finally:
        for srv in servers.values():
            srv.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
