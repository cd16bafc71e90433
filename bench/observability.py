"""What observability costs: the router in front of the fast stub with request logs off and
no tracing, against the same router with JSON request logs, with OpenTelemetry tracing (an
OTLP/HTTP sink on 127.0.0.1 takes the spans), with both, and with both but 1 request in 10
traced (OTEL_TRACES_SAMPLER=parentbased_traceidratio); metrics are always on. In the same run,
alternated round by round so the machine's noise hits both alike. Reported: the p50 added at
c=1 (a sequential client) and the requests/s ratio at c=64.

    python bench/overhead.py --observability [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import overhead
from common import Proc, free_port, ours, workdir, write_result


class _Sink(http.server.BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and answers 200 (what a collector does, minus the storage)."""

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


def _measure(url: str, c: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    if args.client == "wrk":
        return overhead.wrk(url, c, False, {}, args.seconds, work)
    return asyncio.run(overhead.load(url, c, 1500 if c > 1 else 500, False, {}))


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
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for router in routers.values():
            asyncio.run(overhead.load(router.url, 16, 500, False, {}))  # warm up
        for _ in range(args.rounds):
            for name, router in routers.items():
                for c in (1, 64):
                    r = _measure(router.url, c, args, work)
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
    print(summary)
    print("wrote", write_result("observability", {"rounds": rounds, "median": median, **summary}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    compare(parser.parse_args())
