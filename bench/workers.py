"""Router processes: requests/s at concurrency 64 against the fast stub, through one router
process and through `llm-router serve --workers N`, in the same run, alternated round by
round (the machine's noise hits both alike). Also the router's CPU per request (the process
tree's user+system time over the requests it served). Both routers run the same config: the
stub as a remote target, and `redis_url` set (which `--workers > 1` requires) to a
redis-server this script starts.

    python bench/overhead.py --workers 2 [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import overhead
import psutil
import yaml
from common import Proc, free_port, ours, workdir, write_result


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=(work / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children, so far."""
    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measure(router: Proc, stream: bool, args: argparse.Namespace, work: Path) -> dict[str, float]:
    before = tree_cpu(router.proc.pid)
    if args.client == "wrk":
        result = overhead.wrk(router.url, 64, stream, {}, args.seconds, work)
        served = result["rps"] * args.seconds
    else:
        result = asyncio.run(overhead.load(router.url, 64, args.count, stream, {}))
        served = result["n"]
    result["router_cpu_us_per_request"] = (tree_cpu(router.proc.pid) - before) / served * 1e6
    return result


def compare(args: argparse.Namespace) -> None:
    work = workdir()
    stub = overhead.start_stub(work)
    redis, redis_url = start_redis(work)
    config = overhead.stub_only(work, stub.url, redis_url=redis_url)
    routers = {
        "1 process": ours(config, work),
        f"{args.workers} processes": ours(
            config, work, serve_args=("--workers", str(args.workers))
        ),
    }
    time.sleep(3)  # every process of the second has started (it answers as soon as one has)
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for router in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, {}))  # warm up
        for _ in range(args.rounds):
            for name, router in routers.items():
                for stream in (False, True):
                    key = "stream_c64" if stream else "plain_c64"
                    r = measure(router, stream, args, work)
                    rounds.setdefault(name, {}).setdefault(key, []).append(r)
                    print(
                        f"{name:12} {key:11} " + " ".join(f"{k}={v:.1f}" for k, v in r.items()),
                        flush=True,
                    )
    finally:
        for router in routers.values():
            router.stop()
        stub.stop()
        redis.terminate()
        redis.wait(10)
    one, many = routers
    summary: dict[str, Any] = {}
    for key in ("plain_c64", "stream_c64"):
        rps = {n: [r["rps"] for r in rounds[n][key]] for n in routers}
        cpu = {n: [r["router_cpu_us_per_request"] for r in rounds[n][key]] for n in routers}
        summary[key] = {
            **{f"rps_median[{n}]": statistics.median(v) for n, v in rps.items()},
            **{f"router_cpu_us_median[{n}]": statistics.median(v) for n, v in cpu.items()},
            "ratio_per_round": [b / a for a, b in zip(rps[one], rps[many], strict=True)],
            "ratio_of_medians": statistics.median(rps[many]) / statistics.median(rps[one]),
        }
    print(yaml.safe_dump(summary, sort_keys=False))
    print(
        "written",
        write_result(
            "workers",
            {
                "client": args.client,
                "workers": args.workers,
                "seconds": args.seconds,
                "rounds": rounds,
                "summary": summary,
            },
        ),
    )
