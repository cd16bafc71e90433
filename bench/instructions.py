"""Instructions a request, counted by Valgrind's callgrind: the router's cost without this
machine's noise. Requests/s on these VMs moves 20-30% from minute to minute (BENCHMARKS.md), so a
change of a few percent takes ~40 paired turns to see (paired.py); the instructions the router
process executes for the same 1,000 requests came out within 0.1% of each other from run to run
(the same hash seed in each, so the same dictionary layouts). They are not time: a cache miss
costs more than an add, and the kernel's work (the sockets) is not counted, so a share of
instructions is not a share of requests/s. This is for comparing two configurations, or two
trees of the same code, to the last few thousand instructions.

Each router runs under `valgrind --tool=callgrind`, not instrumented while it starts; once it
serves, it is warmed up, then counted for `--requests` plain chat requests to the fast stub
from a client at concurrency `--concurrency` (the client is this process, not counted).
Reported: instructions a request in the router process (all its threads; its exporter process
is not run under Valgrind) and the ratio B/A.

    python bench/instructions.py --observability        # all off / JSON logs + tracing
    python bench/instructions.py --observability --only logs|tracing
    python bench/instructions.py --auth                 # auth off / a key + limits
    ... --baseline SRC      # B: A's configuration, run from another checkout's src/
    ... --b-src SRC         # B's configuration, run from another checkout's src/
    ... --set KEY=VALUE     # B's configuration with one setting changed
    ... --diff 30           # the C functions whose own instructions grew most from A to B

Needs `valgrind` (apt-get install valgrind). A run takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import overhead
import yaml
from common import Proc, free_port, workdir, write_result
from paired import sides

SLOWDOWN = 35  # how much slower the router serves under callgrind (1,000 requests: ~14 s)


def _stretched(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the gateway's timers (keys re-read every second, usage written every 2 s)
    `SLOWDOWN` times longer, as Valgrind makes the router that much slower: at their own
    intervals they ran ~35 times as often a request as at full speed, and their cost (~30-55k
    instructions a request, varying with how many fell in the count) hid what the request path
    costs. What this leaves out: the usage write's cost a row (a write of the count's rows
    falls in it only now and then)."""
    gateway = {**config.get("gateway", {})}
    for name, default in (("refresh_interval", 1.0), ("flush_interval", 2.0)):
        gateway[name] = gateway.get(name, default) * SLOWDOWN
    return {**config, "gateway": gateway}


def _start(config: dict[str, Any], work: Path, name: str, src: str | None) -> tuple[Proc, Path]:
    port = free_port()
    config = _stretched(config)
    cfg = work / f"cg-{name}-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump({"host": "127.0.0.1", "port": port, "log_level": "warning", **config})
    )
    out = work / f"callgrind-{name}-{port}.out"
    args = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",  # start-up runs at full speed, and is not counted
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "llm_router",
        "serve",
        "--config",
        str(cfg),
    ]
    # the same hashes, so the same dictionary layouts and probes, in every run
    env = {"PYTHONHASHSEED": "0"}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    proc = Proc(
        args,
        f"http://127.0.0.1:{port}",
        "/health",
        work / f"cg-{name}-{port}.log",
        env,
        start_s=600,
    )
    return proc, out


def _control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True)


def _functions(out: Path) -> list[tuple[int, str]]:
    """Each function's own instructions in a callgrind output file, most first. Their sum is
    the total: the file's own `totals:` line wraps around when instrumentation was switched on
    while the process ran (seen with Valgrind 3.19)."""
    done = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stdout.splitlines():
        found = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)", line)
        if found and "PROGRAM TOTALS" not in line:
            rows.append((int(found.group(1).replace(",", "")), found.group(2)))
    return rows


def _measure(
    proc: Proc, out: Path, headers: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    pid = proc.proc.pid
    c = args.concurrency
    asyncio.run(overhead.load(proc.url, c, 100, False, headers, limit_s=600))  # warm up
    time.sleep(1)
    _control(pid, "-i", "on")
    _control(pid, "-z")
    began = time.monotonic()
    r = asyncio.run(overhead.load(proc.url, c, args.requests, False, headers, limit_s=1200))
    print(f"  {args.requests} requests in {time.monotonic() - began:.1f} s", flush=True)
    time.sleep(1)  # what the requests left to do: the log line's write, the export thread
    _control(pid, "-i", "off")
    _control(pid, "-d")
    time.sleep(1)
    dumps = sorted(out.parent.glob(out.name + "*"), key=os.path.getmtime)
    dump = dumps[-1]
    assert not r.get("errors"), r
    rows = _functions(dump)
    return {"per_request": sum(n for n, _ in rows) / args.requests, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--observability", action="store_true", help="all off / logs + tracing")
    which.add_argument("--auth", action="store_true", help="auth off / a key + limits in memory")
    parser.add_argument(
        "--only",
        choices=("logs", "tracing"),
        help="with --observability: B has JSON request logs alone, or tracing alone",
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline", metavar="SRC", help="B: A's configuration from SRC")
    parser.add_argument("--b-src", metavar="SRC", help="B's configuration, run from SRC")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="B's configuration with KEY set (repeatable): what one setting costs",
    )
    parser.add_argument("--top", type=int, default=0, metavar="N", help="each side's N costliest")
    parser.add_argument(
        "--diff", type=int, default=0, metavar="N", help="the N functions B adds most to"
    )
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("instructions.py needs valgrind (apt-get install valgrind)")
    for src in (args.b_src, args.baseline):
        if src and not (Path(src) / "llm_router").is_dir():
            parser.error(f"{src} has no llm_router package (give a checkout's src/)")
    work = workdir()
    side_a, side_b, extra = sides(args, work)
    names = (side_a[0], side_b[0])
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, config, headers, src in (side_a, side_b):
            proc, out = _start(config, work, re.sub(r"[^\w.-]+", "_", name), src)
            try:
                results[name] = _measure(proc, out, headers, args)
            finally:
                proc.stop()
            print(f"{name}: {results[name]['per_request']:,.0f} instructions a request", flush=True)
            if args.top:
                for n, where in results[name]["rows"][: args.top]:
                    print(f"{n / args.requests:12,.0f}  {where[-110:]}")
    finally:
        for p in extra:
            p.stop()
    a, b = (results[n]["per_request"] for n in names)
    if args.diff:
        counts = [{w: n / args.requests for n, w in results[name]["rows"]} for name in names]
        grown = sorted(
            ((counts[1].get(w, 0) - counts[0].get(w, 0), w) for w in counts[0].keys() | counts[1]),
            reverse=True,
        )
        for n, where in grown[: args.diff]:
            print(f"{n:+12,.0f}  {where[-110:]}")
    print(f"{names[1]} / {names[0]}: {b / a:.3f} (+{b - a:,.0f} instructions a request)")
    write_result(
        "instructions",
        {
            "a": names[0],
            "b": names[1],
            "requests": args.requests,
            "concurrency": args.concurrency,
            "per_request": {n: round(r["per_request"]) for n, r in results.items()},
            "ratio": round(b / a, 4),
        },
    )


if __name__ == "__main__":
    main()
