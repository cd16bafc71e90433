"""The gateway's cost: the same router on the fast stub with auth off, with an API key that has
no limits, with a key and its limits in memory, and with the limits in a local Redis (and,
with `--litellm`, LiteLLM's proxy with its master key and that Redis); in the same run,
alternated round by round (the machine's noise hits all alike). The limited key's requests-
and tokens-per-minute limits are too high ever to refuse, so every request pays for every
check: the hash lookup, the limiter, the usage record, the per-key counters. Measured: latency p50 at concurrency 1,
requests/s at concurrency 64, and the router's CPU per request (its process tree's user +
system time over the requests it served; the least noisy of the three on a shared machine).

    python bench/overhead.py --auth [--rounds 3] [--seconds 5] [--baseline OTHER/src]

With `--baseline`, the four are measured again on another checkout's code (named `... @base`),
alternated with these in the same run: a before/after of a change in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import overhead
import yaml
from common import Proc, free_port, ours, workdir, write_result
from workers import start_redis, tree_cpu

__all__ = ["compare", "gated_config"]

HIGH = 1_000_000_000


def gated_config(
    config: dict[str, Any], work: Path, name: str, redis_url: str | None, limits: bool = True
) -> tuple[dict[str, Any], str]:
    """`config` with the gateway's state in its own data directory and a key made there (by
    the CLI, as a user would); the key."""
    data = work / f"data-{name}"
    gated = {**config, "data_dir": str(data), "auth": "on"}
    if redis_url:
        gated["redis_url"] = redis_url
    cfg = work / f"keys-{name}.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data)}))
    made = subprocess.run(
        [sys.executable, "-m", "llm_router", "keys", "create", "bench", "--config", str(cfg)]
        + (["--rpm", str(HIGH), "--tpm", str(HIGH)] if limits else []),
        capture_output=True,
        text=True,
        check=True,
    )
    return gated, made.stdout.strip().splitlines()[-1]


def start_litellm(binary: str, stub: str, redis_url: str, work: Path) -> Proc:
    """LiteLLM's proxy on the stub with its master key and its Redis (`router_settings`, for
    its usage-based limits across instances). Its virtual keys need its Prisma database
    client, whose engines Prisma downloads from binaries.prisma.sh at first use: on a machine
    without that, the master key is the key LiteLLM can check."""
    port = free_port()
    host, _, rest = redis_url.removeprefix("redis://").partition(":")
    cfg = work / "litellm-gateway.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "stub",
                        "litellm_params": {
                            "model": "openai/stub",
                            "api_base": stub + "/v1",
                            "api_key": "unused",
                            "rpm": HIGH,
                            "tpm": HIGH,
                        },
                    }
                ],
                "router_settings": {"redis_host": host, "redis_port": int(rest.split("/")[0])},
                "general_settings": {"master_key": "sk-bench"},
            }
        )
    )
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return Proc(
        [binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        "/health/liveliness",
        work / "litellm-gateway.log",
        env,
    )


def measure(
    router: Proc, concurrency: int, headers: dict[str, str], args: argparse.Namespace, work: Path
) -> dict[str, float]:
    before = tree_cpu(router.proc.pid)
    if args.client == "wrk":
        result = overhead.wrk(router.url, concurrency, False, headers, args.seconds, work)
        served = result["rps"] * args.seconds
    else:
        count = args.count // 3 if concurrency == 1 else args.count
        result = asyncio.run(overhead.load(router.url, concurrency, count, False, headers))
        served = result["n"]
    result["router_cpu_us_per_request"] = (tree_cpu(router.proc.pid) - before) / served * 1e6
    return result


def compare(args: argparse.Namespace) -> None:
    work = workdir()
    stub = overhead.start_stub(work)
    redis, redis_url = start_redis(work)
    config = overhead.stub_only(work, stub.url)
    routers: dict[str, tuple[Proc, dict[str, str]]] = {}
    for suffix, src in [("", None)] + ([(" @base", args.baseline)] if args.baseline else []):
        routers["auth off" + suffix] = (ours(config, work, src), {})
        for name, url, limits in (
            ("auth only", None, False),
            ("auth+limits memory", None, True),
            ("auth+limits redis", redis_url, True),
        ):
            dirname = (name + suffix).replace(" ", "-").replace("@", "")
            gated, key = gated_config(config, work, dirname, url, limits)
            routers[name + suffix] = (ours(gated, work, src), {"Authorization": f"Bearer {key}"})
    if args.litellm:
        routers["litellm"] = (
            start_litellm(args.litellm, stub.url, redis_url, work),
            {"Authorization": "Bearer sk-bench"},
        )
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for router, headers in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, headers))  # warm up
        for i in range(args.rounds):
            # every other round in reverse: a fixed order put auth off first in every round,
            # and this machine's speed drifts within a round (bench/paired.py)
            for name in list(routers) if i % 2 == 0 else list(reversed(routers)):
                router, headers = routers[name]
                for c in (1, 64):
                    r = measure(router, c, headers, args, work)
                    assert not r["errors"], f"{name}: {r['errors']} errors"
                    rounds.setdefault(name, {}).setdefault(f"plain_c{c}", []).append(r)
                    print(
                        f"{name:20} plain_c{c:<3} "
                        + " ".join(f"{k}={v:.1f}" for k, v in r.items()),
                        flush=True,
                    )
    finally:
        for router, _ in routers.values():
            router.stop()
        stub.stop()
        redis.terminate()
        redis.wait(10)
    summary = _summary(rounds)
    print(yaml.safe_dump(summary, sort_keys=False))
    print(
        "written",
        write_result("gateway", {"client": args.client, "rounds": rounds, "summary": summary}),
    )


def _summary(rounds: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    def med(name: str, key: str, field: str) -> float:
        return statistics.median(r[field] for r in rounds[name][key])

    out: dict[str, Any] = {}
    for name in rounds:
        base = "auth off @base" if name.endswith(" @base") else "auth off"
        out[name] = {
            "p50_ms_c1": med(name, "plain_c1", "p50_ms"),
            "rps_c64": med(name, "plain_c64", "rps"),
            "router_cpu_us_per_request_c64": med(name, "plain_c64", "router_cpu_us_per_request"),
        }
        if name == "litellm":
            out[name]["our_rps_c64_over_litellm"] = (
                out["auth+limits redis"]["rps_c64"] / out[name]["rps_c64"]
            )
        if name != base:
            out[name]["added_p50_ms_c1"] = out[name]["p50_ms_c1"] - out[base]["p50_ms_c1"]
            out[name]["rps_c64_ratio"] = out[name]["rps_c64"] / out[base]["rps_c64"]
            out[name]["added_cpu_us_per_request"] = (
                out[name]["router_cpu_us_per_request_c64"]
                - out[base]["router_cpu_us_per_request_c64"]
            )
    return out


if __name__ == "__main__":
    raise SystemExit("run it as: python bench/overhead.py --auth")
