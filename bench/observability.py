"""What observability costs: the router in front of the fast stub with request logs off and
no tracing, against the same router with JSON request logs, with OpenTelemetry tracing (an
OTLP/HTTP sink on 127.0.0.1 takes the spans), with both, and with both but 1 request in 10
traced (OTEL_TRACES_SAMPLER=parentbased_traceidratio); metrics are always on. In the same run,
alternated round by round so the machine's noise hits both alike. Reported: the p50 added at
c=1 (a sequential client) and the requests/s ratio at c=64.

    python bench/overhead.py --observability [--rounds 3] [--seconds 5] [--baseline SRC]

`--baseline SRC`: another checkout's `src/` too (all off, and logs+tracing), in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import overhead
import psutil
from common import Proc, free_port, ours, workdir, write_result
from workers import tree_cpu


class _Sink(http.server.BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and answers 200 (what a collector does, minus the storage),
    keeping the connection open as a collector does: with the handler's default HTTP/1.0 each
    export opened a new connection (`create_connection` was ~5% of the exporter process's
    samples in py-spy)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_sink(work: Path) -> Proc:
    port = free_port()
    code = (
        "import http.server, sys; sys.path.insert(0, sys.argv[2]); import observability; "
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
        "observability._Sink).serve_forever()"
    )
    here = str(Path(__file__).resolve().parent)
    return Proc(
        [sys.executable, "-c", code, str(port), here],
        f"http://127.0.0.1:{port}",
        "/",
        work / f"sink-{port}.log",
    )


def _measure(router: Proc, c: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One measurement, then `--settle` seconds for the router's exporter process to export
    what it was sent (so that the next router measured does not share the machine with it).
    The CPU per request, over both: the router process's own, and its exporter process's."""
    main = psutil.Process(router.proc.pid)
    before, tree_before = sum(main.cpu_times()[:2]), tree_cpu(router.proc.pid)
    if args.client == "wrk":
        r = overhead.wrk(router.url, c, False, {}, args.seconds, work)
        served = r["rps"] * args.seconds
    else:
        r = asyncio.run(overhead.load(router.url, c, 1500 if c > 1 else 500, False, {}))
        served = r["n"]
    time.sleep(getattr(args, "settle", 3.0))  # overhead.py --observability: 3 s
    own = sum(main.cpu_times()[:2]) - before
    r["router_cpu_us_per_request"] = own / served * 1e6
    r["exporter_cpu_us_per_request"] = (
        (tree_cpu(router.proc.pid) - tree_before - own) / served * 1e6
    )
    return r


def compare(args: argparse.Namespace) -> None:
    work = workdir()
    stub = overhead.start_stub(work)
    sink = start_sink(work)
    base = overhead.stub_only(work, stub.url)
    routers = {
        "all off": ours({**base, "log_requests": False}, work),
        "json logs": ours(
            {**base, "log_level": "info", "log_format": "json", "log_requests": True}, work
        ),
        "tracing": ours({**base, "log_requests": False, "otel_endpoint": sink.url}, work),
        "logs+tracing": ours(
            {
                **base,
                "log_level": "info",
                "log_format": "json",
                "log_requests": True,
                "otel_endpoint": sink.url,
            },
            work,
        ),
    }
    # the standard sampler variables, read by the SDK: 1 request in 10 traced
    os.environ.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    try:
        routers["logs+tracing 10%"] = ours(
            {
                **base,
                "log_level": "info",
                "log_format": "json",
                "log_requests": True,
                "otel_endpoint": sink.url,
            },
            work,
        )
    finally:
        del os.environ["OTEL_TRACES_SAMPLER"], os.environ["OTEL_TRACES_SAMPLER_ARG"]
    if getattr(args, "baseline", None):  # another checkout's src/, the same configurations
        configs = {
            "all off": {**base, "log_requests": False},
            "logs+tracing": {
                **base,
                "log_level": "info",
                "log_format": "json",
                "log_requests": True,
                "otel_endpoint": sink.url,
            },
        }
        for name, config in configs.items():
            routers[f"{name}@base"] = ours(config, work, src=args.baseline)
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for router in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, {}))  # warm up
        for i in range(args.rounds):
            # every other round in reverse: a fixed order put all off first in every round,
            # and this machine's speed drifts within a round (bench/paired.py)
            for name in list(routers) if i % 2 == 0 else list(reversed(routers)):
                router = routers[name]
                for c in (1, 64):
                    r = _measure(router, c, args, work)
                    rounds.setdefault(name, {}).setdefault(f"plain_c{c}", []).append(r)
                    print(
                        f"{name:13} c={c:<3} " + " ".join(f"{k}={v:.2f}" for k, v in r.items()),
                        flush=True,
                    )
    finally:
        for proc in [*routers.values(), stub, sink]:
            proc.stop()
    median = {
        name: {
            key: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for key, runs in by_key.items()
        }
        for name, by_key in rounds.items()
    }
    off, on = median["all off"], median["logs+tracing"]
    summary: dict[str, Any] = {
        "added_p50_ms_c1": on["plain_c1"]["p50_ms"] - off["plain_c1"]["p50_ms"],
        "rps_ratio_c64": on["plain_c64"]["rps"] / off["plain_c64"]["rps"],
        "off_rps_c64": off["plain_c64"]["rps"],
        "on_rps_c64": on["plain_c64"]["rps"],
    }
    for name in ("json logs", "tracing", "logs+tracing 10%"):
        part = median[name]
        summary[name] = {
            "added_p50_ms_c1": part["plain_c1"]["p50_ms"] - off["plain_c1"]["p50_ms"],
            "rps_ratio_c64": part["plain_c64"]["rps"] / off["plain_c64"]["rps"],
        }
    if "all off@base" in median:
        base_off, base_on = median["all off@base"], median["logs+tracing@base"]
        summary["logs+tracing@base"] = {
            "added_p50_ms_c1": base_on["plain_c1"]["p50_ms"] - base_off["plain_c1"]["p50_ms"],
            "rps_ratio_c64": base_on["plain_c64"]["rps"] / base_off["plain_c64"]["rps"],
        }
    # the ratio of each round (the rounds alternate, so each shares its moment's noise)
    summary["rps_ratio_c64_per_round"] = [
        round(a["rps"] / b["rps"], 3)
        for a, b in zip(
            rounds["logs+tracing"]["plain_c64"], rounds["all off"]["plain_c64"], strict=True
        )
    ]
    print(summary)
    print("wrote", write_result("observability", {"rounds": rounds, "median": median, **summary}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--baseline", metavar="SRC", help="another checkout's src/, beside")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after each run")
    parser.add_argument(
        "--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    compare(parser.parse_args())
