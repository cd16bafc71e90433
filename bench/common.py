"""Shared by the benchmarks: start servers on 127.0.0.1 (ours and llama.cpp's), time requests.

Every server a benchmark starts is its own child process, stopped by PID when it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundled_models(target: Path) -> Path:
    """A models directory with the two bundled GGUF files (hard links / assembled)."""
    from llm_router import defaults

    defaults.provision(target)
    return target


class Proc:
    def __init__(
        self,
        args: list[str],
        url: str,
        health: str,
        log: Path,
        env: dict[str, str] | None = None,
        start_s: float = 120,
    ) -> None:
        self.url = url
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{args[0]} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ours(
    config: dict[str, Any], workdir: Path, src: str | None = None, serve_args: tuple[str, ...] = ()
) -> Proc:
    """Our server on a free port. `src`: another checkout's `src/` directory, to run that
    version instead of this one (an A/B in one run; its workers import it too). `serve_args`:
    more flags for `llm-router serve` (e.g. `--workers 2`)."""
    port = free_port()
    cfg = workdir / f"ours-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump({"host": "127.0.0.1", "port": port, "log_level": "warning", **config})
    )
    args = [sys.executable, "-m", "llm_router", "serve", "--config", str(cfg), *serve_args]
    env = {"PYTHONPATH": str(Path(src).resolve())} if src else None
    return Proc(args, f"http://127.0.0.1:{port}", "/health", workdir / f"ours-{port}.log", env)


def llama_repack_default() -> bool:
    """Our engine's default weight layout on this machine (off where llama.cpp would use its
    AMX kernels, which crash: llama.cpp#20824); the peer gets the same (`--no-repack`)."""
    import llama_cpp

    from llm_router.engines.llamacpp import model_params

    llama_cpp.llama_backend_init()
    return bool(model_params(None).use_extra_bufts)


def peer_flags(threads: int, slots: int, ctx: int, *, repack: bool = True) -> list[str]:
    """llama-server's flags for our `model_defaults` (`slot_defaults`): the same threads,
    slots and context per slot (`-c` is all slots together there), the same weight layout."""
    flags = ["-t", str(threads), "-np", str(slots), "-c", str(ctx * slots), "--no-webui"]
    return flags if repack else [*flags, "--no-repack"]


def slot_defaults(threads: int, slots: int, ctx: int, repack: bool) -> dict[str, Any]:
    """Our `model_defaults` matching `peer_flags`."""
    return {"threads": threads, "parallel": slots, "context_size": ctx, "repack": repack}


def llama_server_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "bench" / "build_llama_server.sh"), sys.executable],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def llama_server(args: list[str], workdir: Path) -> Proc:
    port = free_port()
    cmd = [str(llama_server_binary()), "--host", "127.0.0.1", "--port", str(port), *args]
    return Proc(cmd, f"http://127.0.0.1:{port}", "/health", workdir / f"llama-{port}.log")


def stream_timing(
    url: str,
    body: dict[str, Any],
    path: str = "/v1/completions",
    client: httpx.Client | None = None,
) -> dict[str, float]:
    """Send one streaming request; seconds to first token, total, and tokens received.
    `client`: one made before the clock starts (concurrent streams each get their own, see
    `concurrent_timings`); without it a client is made inside the measurement."""
    start = time.perf_counter()
    first = None
    tokens = chunks = 0
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with (client or httpx).stream("POST", url + path, json=payload, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            delta = choices[0] if choices else {}
            if delta.get("text") or (delta.get("delta") or {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
    total = time.perf_counter() - start
    # tokens from usage: a server may put several tokens in one chunk when the client lags
    return {
        "ttft": first if first is not None else total,
        "total": total,
        "tokens": tokens or chunks,
    }


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm-router-bench-"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def write_result(name: str, data: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": {"cores": os.cpu_count()}, **data}, indent=1))
    return path


def concurrent_timings(
    url: str, bodies: list[dict[str, Any]], path: str = "/v1/completions"
) -> tuple[list[dict[str, float]], float]:
    """`stream_timing` of every body at once, one thread and one HTTP client each, and the
    wall time from the first request sent to the last stream ended. The clients are made
    before the clock starts: making one (an SSL context, ~20 ms of CPU) for each of 16
    streams inside the measurement was ~300 ms of the client's CPU on this 2-core machine
    while the servers answered the first requests, and it showed in their time to first
    token more than either server did (BENCHMARKS.md, issue 20's 16-stream TTFT)."""
    clients = [httpx.Client(timeout=300) for _ in bodies]
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            start = time.perf_counter()
            pairs = zip(clients, bodies, strict=True)
            results = list(pool.map(lambda cb: stream_timing(url, cb[1], path, cb[0]), pairs))
            wall = time.perf_counter() - start
    finally:
        for c in clients:
            c.close()
    return results, wall
