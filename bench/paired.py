"""A paired A/B of requests/s at c=64: two routers on the fast stub, measured in short turns
(`--seconds`, 2 by default) in the order A B B A, A B B A, ..., so that each pair of turns
shares its moment of this machine, whose speed moves by 20-30% from minute to minute
(BENCHMARKS.md): the ratio of the medians of whole rounds minutes apart reads that drift as
a cost or a gain. Reported: the median of the pairs' ratios (B over A), the pairs' quartiles,
and a 95% interval for the median (order statistics, no assumption on the distribution);
and each router's CPU a request. After a turn the script waits until the router's process
tree is idle (its exporter process done exporting), so no turn shares the machine with the
one before.

    python bench/paired.py --observability [--pairs 20] [--seconds 2]   # all off / logs+tracing
    python bench/paired.py --auth [--pairs 20]       # auth off / a key + limits in memory

`--b-src SRC`: B's configuration, run from another checkout's `src/`.
`--baseline SRC`: B is the same configuration as A, run from another checkout's `src/` (an
A/B of a change: A this tree, B the other).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import overhead
import yaml
from common import Proc, ours, workdir, write_result
from gateway_setup import gated_config
from observability import start_sink
from workers import tree_cpu


def _idle(router: Proc, limit: float = 5.0) -> None:
    """Until the router's process tree used under 2% of a core over 0.2 s (at most `limit`)."""
    deadline = time.monotonic() + limit
    last = tree_cpu(router.proc.pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = tree_cpu(router.proc.pid)
        if now - last < 0.004:
            return
        last = now


def _turn(router: Proc, headers: dict[str, str], seconds: int, work: Path) -> tuple[float, float]:
    """Requests/s at c=64 and the tree's CPU a request (us), for one turn."""
    before = tree_cpu(router.proc.pid)
    r = overhead.wrk(router.url, 64, False, headers, seconds, work)
    assert not r["errors"], r
    _idle(router)
    served = r["rps"] * seconds
    return r["rps"], (tree_cpu(router.proc.pid) - before) / served * 1e6


def median_interval(values: list[float]) -> tuple[float, float]:
    """A 95% interval for the median of `values`: the order statistics the binomial(n, 1/2)
    puts 2.5% below and above (n >= 6)."""
    s, n = sorted(values), len(values)
    k = max(0, int(n / 2 - 1.96 * math.sqrt(n) / 2))
    return s[k], s[n - 1 - k]


Side = tuple[str, dict[str, Any], dict[str, str], str | None]  # name, config, headers, src


def sides(args: argparse.Namespace, work: Path) -> tuple[Side, Side, list[Proc]]:
    """A and B of `args` (--auth or --observability, --only, --baseline, --b-src, --set): each
    its name, configuration, request headers and the `src/` it runs from (None: this tree);
    and the stub (and the OTLP sink) they use, started (stop them)."""
    stub = overhead.start_stub(work)
    extra = [stub]
    base = overhead.stub_only(work, stub.url)
    only = getattr(args, "only", None)
    a_headers: dict[str, str] = {}
    if args.auth:
        a_config = base
        b_config, key = gated_config(base, work, "paired", None, True)
        b_headers = {"Authorization": f"Bearer {key}"}
        names = ("auth off", "key + limits, memory")
    else:
        sink = start_sink(work)
        extra.append(sink)
        a_config = {**base, "log_requests": False}
        b_config = {
            **base,
            "log_level": "info",
            "log_format": "json",
            "log_requests": only != "tracing",
        }
        if only != "logs":
            b_config["otel_endpoint"] = sink.url
        b_headers = {}
        names = ("all off", {"logs": "JSON logs", "tracing": "tracing"}.get(only or "", "both"))
    for item in getattr(args, "set", None) or ():
        key, _, value = item.partition("=")
        b_config = {**b_config, key: yaml.safe_load(value)}
    b_src = getattr(args, "b_src", None)
    if b_src:  # B's configuration, from the other checkout
        names = (names[0], f"{names[1]} @{b_src}")
    if args.baseline:  # B: A's configuration, from the other checkout
        b_config, b_headers, b_src = a_config, a_headers, args.baseline
        names = (names[0], f"{names[0]} @base")
    return (names[0], a_config, a_headers, None), (names[1], b_config, b_headers, b_src), extra


def _routers(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], list[Proc]]:
    (name_a, a_config, a_headers, _), (name_b, b_config, b_headers, b_src), extra = sides(
        args, work
    )
    a = (name_a, ours(a_config, work), a_headers)
    b = (name_b, ours(b_config, work, src=b_src), b_headers)
    return {"a": a, "b": b}, extra


def main(args: argparse.Namespace) -> None:
    if not shutil.which("wrk"):
        raise SystemExit("paired.py needs wrk (apt-get install wrk)")
    work = workdir()
    routers, extra = _routers(args, work)
    turns: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    try:
        for _, router, headers in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, headers))  # warm up
            overhead.wrk(router.url, 64, False, headers, 1, work)
            _idle(router)
        for i in range(args.pairs):
            order = ("a", "b") if i % 2 == 0 else ("b", "a")  # A B, B A, A B...
            for side in order:
                _, router, headers = routers[side]
                turns[side].append(_turn(router, headers, args.seconds, work))
            (ra, ca), (rb, cb) = turns["a"][-1], turns["b"][-1]
            print(
                f"pair {i + 1:2}: {ra:8.1f} / {rb:8.1f} requests/s = {rb / ra:.3f}"
                f"   CPU a request {ca:6.1f} / {cb:6.1f} us",
                flush=True,
            )
    finally:
        for _, router, _ in routers.values():
            router.stop()
        for proc in extra:
            proc.stop()
    ratios = [b[0] / a[0] for a, b in zip(turns["a"], turns["b"], strict=True)]
    cpu_added = [b[1] - a[1] for a, b in zip(turns["a"], turns["b"], strict=True)]
    q = statistics.quantiles(ratios, n=4)
    low, high = median_interval(ratios)
    name_a, name_b = routers["a"][0], routers["b"][0]
    summary = {
        "a": name_a,
        "b": name_b,
        "pairs": args.pairs,
        "seconds": args.seconds,
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(q[0], 3), round(q[2], 3)],
        "ratio_median_95": [round(low, 3), round(high, 3)],
        "rps_median": {
            name_a: round(statistics.median(t[0] for t in turns["a"]), 1),
            name_b: round(statistics.median(t[0] for t in turns["b"]), 1),
        },
        "cpu_us_per_request_median": {
            name_a: round(statistics.median(t[1] for t in turns["a"]), 1),
            name_b: round(statistics.median(t[1] for t in turns["b"]), 1),
        },
        "cpu_added_us_median": round(statistics.median(cpu_added), 1),
    }
    print(summary)
    label = "auth" if args.auth else "observability"
    suffix = "-baseline" if args.baseline else ""
    print(
        "wrote",
        write_result(f"paired-{label}{suffix}", {"summary": summary, "turns": turns}),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--observability", action="store_true", help="all off / logs + tracing")
    what.add_argument("--auth", action="store_true", help="auth off / a key + limits in memory")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=2, help="a turn's")
    parser.add_argument("--baseline", metavar="SRC", help="B: A's configuration from SRC")
    parser.add_argument("--b-src", metavar="SRC", help="B's configuration, run from SRC")
    main(parser.parse_args())
