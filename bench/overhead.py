"""Router overhead: requests/s and latency p50/p99 at concurrency 1, 16 and 64, streaming and
not, against a fast stub OpenAI server on 127.0.0.1: directly, through llm-router (the stub as
a remote target) and through LiteLLM's proxy, all in one run with the same client. A bare
forwarding proxy (`bare_proxy.py`) is measured too: the floor any extra Python hop pays here.

Twice: against a stub that answers at once (what the router itself can do), and against one
that answers after `--delay-ms` (an upstream that takes a model's time to answer, so that at
high concurrency the upstream, not the router, sets the pace, as with a real model server).

    python bench/overhead.py --litellm /path/to/venv-with-litellm/bin/litellm

LiteLLM goes in its own venv (`pip install 'litellm[proxy]'`); LITELLM_LOCAL_MODEL_COST_MAP
keeps it offline. Each measurement is bounded by a request count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import Proc, free_port, ours, pct, workdir, write_result

HERE = Path(__file__).resolve().parent
BODY = {"model": "stub", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


async def load(
    url: str,
    concurrency: int,
    count: int,
    stream: bool,
    headers: dict[str, str],
    limit_s: float = 60.0,
    model: str = "stub",
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    body = {**BODY, "model": model, "stream": stream}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        remaining = count
        deadline = time.perf_counter() + limit_s

        async def one() -> None:
            nonlocal remaining, errors
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_raw():
                        pass
                    if r.status_code != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "rps": len(latencies) / wall,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "n": len(latencies),
        "errors": errors,
    }


def wrk(
    url: str,
    concurrency: int,
    stream: bool,
    headers: dict[str, str],
    seconds: int,
    work: Path,
    model: str = "stub",
) -> dict[str, float]:
    """The same measurement with wrk (C, one thread): at high concurrency a Python client
    becomes the bottleneck and flattens every server to the same number."""
    script = work / f"post-{stream}-{model}.lua"
    body = {**BODY, "model": model, "stream": stream}
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pcts = {p: _ms(v, unit) for p, v, unit in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pcts["50"],
        "p99_ms": pcts["99"],
        "errors": float(bad.group(1)) if bad else 0.0,
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def start_stub(work: Path, delay_ms: float = 0) -> Proc:
    port = free_port()
    return Proc(
        [sys.executable, str(HERE / "stub_server.py"), str(port), str(delay_ms)],
        f"http://127.0.0.1:{port}",
        "/v1/models",
        work / f"stub-{port}.log",
    )


def stub_only(work: Path, stub_url: str, **more: Any) -> dict[str, Any]:
    """A router configuration that serves the stub upstream as model `stub` and nothing else:
    no local models, spares, directory scans or health checks (what costs only the router)."""
    (work / "empty").mkdir(exist_ok=True)
    return {
        "models_dir": str(work / "empty"),
        "provision_default_models": False,
        "spare_workers": False,
        "watch_interval": 0,
        "models": [
            {
                "id": "stub",
                "provider": "openai",
                "base_url": stub_url + "/v1",
                "health_check_interval": 0,
            }
        ],
        **more,
    }


def start_bare_proxy(upstream: str, work: Path) -> Proc:
    port = free_port()
    return Proc(
        [sys.executable, str(HERE / "bare_proxy.py"), str(port), upstream],
        f"http://127.0.0.1:{port}",
        "/v1/models",
        work / f"bare-{port}.log",
    )


def start_litellm(binary: str, stubs: dict[str, str], work: Path) -> Proc:
    port = free_port()
    cfg = work / "litellm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": name,
                        "litellm_params": {
                            "model": "openai/stub",
                            "api_base": url + "/v1",
                            "api_key": "unused",
                        },
                    }
                    for name, url in stubs.items()
                ]
            }
        )
    )
    os.environ.update(LITELLM_MASTER_KEY="sk-bench", LITELLM_LOCAL_MODEL_COST_MAP="True")
    return Proc(
        [binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        "/health/liveliness",
        work / "litellm.log",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--litellm", help="the litellm command in its own venv")
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        help="wrk when installed; the Python client is itself the bottleneck at c=64",
    )
    parser.add_argument("--seconds", type=int, default=5, help="per measurement, with wrk")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=50,
        help="the slow stub's time to answer (0: no second pass)",
    )
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="another checkout's src/ directory, measured as llm-router@base in the same run",
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="instead: auth + limits off / in memory / in Redis, alternated (gateway_setup.py)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="instead: c=64 through 1 router process and through `serve --workers N` (workers.py)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --workers: alternations")
    parser.add_argument(
        "--observability",
        action="store_true",
        help="instead: JSON request logs and tracing on vs off, c=1 and c=64 (observability.py)",
    )
    parser.add_argument(
        "--paired",
        type=int,
        metavar="PAIRS",
        help="with --auth or --observability: c=64 only, in PAIRS pairs of short turns in the "
        "order A B B A (paired.py: the ratio this machine's drift disturbs least)",
    )
    args = parser.parse_args()
    if args.paired and (args.auth or args.observability):
        import paired

        paired.main(
            argparse.Namespace(
                auth=args.auth,
                observability=args.observability,
                pairs=args.paired,
                seconds=2,
                baseline=args.baseline,
            )
        )
        return
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "python"
        if args.client == "python" and (args.auth or args.observability or args.workers):
            # measured so, every ratio at c=64 reads ~1.0: the client, not the router, is
            # saturated (a run on a machine without wrk "met" every target)
            parser.error(
                "these comparisons need wrk (apt-get install wrk); --client python "
                "runs them anyway, but its c=64 ratios say nothing about the router"
            )
    if args.observability:
        from observability import compare as observe

        observe(args)
        return
    if args.workers:
        from workers import compare

        compare(args)
        return
    if args.auth:
        from gateway_setup import compare as compare_auth

        compare_auth(args)
        return
    work = workdir()
    stubs = {"stub": start_stub(work)}  # model name -> stub
    if args.delay_ms:
        stubs["stub-slow"] = start_stub(work, args.delay_ms)
    config = {
        "models_dir": str(work / "empty"),
        "provision_default_models": False,
        "spare_workers": False,
        "watch_interval": 0,
        "models": [
            {
                "id": name,
                "provider": "openai",
                "base_url": stub.url + "/v1",
                "model": "stub",
                "health_check_interval": 0,
            }
            for name, stub in stubs.items()
        ],
    }
    router = ours(config, work)
    # name -> (process, url for each model, headers)
    targets: dict[str, tuple[Proc | None, dict[str, str], dict[str, str]]] = {
        "direct": (None, {name: stub.url for name, stub in stubs.items()}, {}),
        "llm-router": (router, dict.fromkeys(stubs, router.url), {}),
    }
    if args.baseline:
        base = ours(config, work, src=args.baseline)
        targets["llm-router@base"] = (base, dict.fromkeys(stubs, base.url), {})
    bare = {name: start_bare_proxy(stub.url, work) for name, stub in stubs.items()}
    targets["bare-proxy"] = (None, {name: proxy.url for name, proxy in bare.items()}, {})
    if args.litellm:
        lite = start_litellm(args.litellm, {name: stub.url for name, stub in stubs.items()}, work)
        targets["litellm"] = (
            lite,
            dict.fromkeys(stubs, lite.url),
            {"Authorization": "Bearer sk-bench"},
        )
    results: dict[str, Any] = {}
    try:
        for name, (_, urls, headers) in targets.items():
            for model, url in urls.items():
                asyncio.run(load(url, 4, 100, False, headers, model=model))  # warm up
                suffix = "" if model == "stub" else "_slow"
                for stream in (False, True):
                    for c in (1, 16, 64):
                        count = args.count // 3 if c == 1 else args.count
                        r = (
                            wrk(url, c, stream, headers, args.seconds, work, model)
                            if args.client == "wrk"
                            else asyncio.run(load(url, c, count, stream, headers, model=model))
                        )
                        key = f"{'stream' if stream else 'plain'}_c{c}{suffix}"
                        results.setdefault(name, {})[key] = r
                        print(
                            f"{name:10} {key:16} " + " ".join(f"{k}={v:.1f}" for k, v in r.items()),
                            flush=True,
                        )
    finally:
        for proc, _, _ in targets.values():
            if proc is not None:
                proc.stop()
        for proc in [*bare.values(), *stubs.values()]:
            proc.stop()
    summary = {}
    for key in results["direct"]:
        row = {
            "added_p50_ms": results["llm-router"][key]["p50_ms"] - results["direct"][key]["p50_ms"],
            "added_p99_ms": results["llm-router"][key]["p99_ms"] - results["direct"][key]["p99_ms"],
        }
        row["bare_proxy_added_p50_ms"] = (
            results["bare-proxy"][key]["p50_ms"] - results["direct"][key]["p50_ms"]
        )
        if "litellm" in results:
            row["rps_ours_over_litellm"] = (
                results["llm-router"][key]["rps"] / results["litellm"][key]["rps"]
            )
            row["litellm_added_p50_ms"] = (
                results["litellm"][key]["p50_ms"] - results["direct"][key]["p50_ms"]
            )
        if "llm-router@base" in results:
            row["rps_ours_over_base"] = (
                results["llm-router"][key]["rps"] / results["llm-router@base"][key]["rps"]
            )
            row["base_added_p50_ms"] = (
                results["llm-router@base"][key]["p50_ms"] - results["direct"][key]["p50_ms"]
            )
        summary[key] = row
    print(yaml.safe_dump(summary))
    print(
        "written",
        write_result(
            "overhead",
            {
                "client": args.client,
                "delay_ms": args.delay_ms,
                "baseline": args.baseline,
                "results": results,
                "summary": summary,
            },
        ),
    )


if __name__ == "__main__":
    main()
