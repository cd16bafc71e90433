"""The router's CPU a request, measured directly: all off against JSON request logs + tracing
(as `overhead.py --observability` runs them, the fast stub as the remote target, an OTLP sink
taking the spans), each router in turn taking a fixed number of requests from `--clients`
Python clients; the router process's CPU time before and after, and its exporter process's.
Reported: the minimum and the median over the rounds. Requests/s on this 2-core machine moves
by 0.1-0.2 between rounds with whatever else runs; the minimum of a process's own CPU time a
request moves much less, so an A/B of a change to the request path reads best here.

    python bench/router_cpu.py [--rounds 6] [--requests 4000] [--baseline SRC]

`--baseline SRC`: another checkout's `src/` too, the same two configurations, alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import overhead
import psutil
from common import Proc, ours, workdir, write_result
from observability import start_sink
from workers import tree_cpu


def _configs(base: dict[str, Any], sink_url: str) -> dict[str, dict[str, Any]]:
    return {
        "all off": {**base, "log_requests": False},
        "logs+tracing": {
            **base,
            "log_level": "info",
            "log_format": "json",
            "log_requests": True,
            "otel_endpoint": sink_url,
        },
    }


def _cpu(router: Proc, args: argparse.Namespace) -> tuple[float, float]:
    """Microseconds of CPU a request: the router's own, and its exporter process's."""
    main = psutil.Process(router.proc.pid)
    own_before, tree_before = sum(main.cpu_times()[:2]), tree_cpu(router.proc.pid)
    served = asyncio.run(overhead.load(router.url, args.clients, args.requests, False, {}))["n"]
    time.sleep(args.settle)  # the exporter process exports what it was sent
    own = sum(main.cpu_times()[:2]) - own_before
    exporter = tree_cpu(router.proc.pid) - tree_before - own
    return own / served * 1e6, exporter / served * 1e6


def main(args: argparse.Namespace) -> None:
    work = workdir()
    stub, sink = overhead.start_stub(work), start_sink(work)
    configs = _configs(overhead.stub_only(work, stub.url), sink.url)
    routers = {name: ours(config, work) for name, config in configs.items()}
    if args.baseline:
        for name, config in configs.items():
            routers[f"{name}@base"] = ours(config, work, src=args.baseline)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in routers}
    try:
        for router in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, {}))  # warm up
        for i in range(args.rounds):
            for name, router in routers.items():
                runs[name].append(_cpu(router, args))
            print(i, {name: round(r[-1][0]) for name, r in runs.items()}, flush=True)
    finally:
        for proc in [*routers.values(), stub, sink]:
            proc.stop()
    summary: dict[str, Any] = {}
    for name, rounds in runs.items():
        own = [r[0] for r in rounds]
        summary[name] = {
            "router_us_min": min(own),
            "router_us_median": statistics.median(own),
            "exporter_us_median": statistics.median(r[1] for r in rounds),
        }
        print(f"{name:18} " + " ".join(f"{k}={v:.1f}" for k, v in summary[name].items()))
    print("wrote", write_result("router_cpu", {"runs": runs, "summary": summary}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000, help="a router's, each round")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--settle", type=float, default=0.5, help="seconds after each run")
    parser.add_argument("--baseline", metavar="SRC", help="another checkout's src/, beside")
    main(parser.parse_args())
