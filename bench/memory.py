"""Memory of real model workers against `lifecycle.estimate`, through the project's own worker
machinery: for each model and setting a `WorkerPool(spares=False)` starts a worker and loads
the model; its RSS is read right after load, after two short generations ("Hello", 8 tokens)
and after a prompt of a full micro-batch (~600 tokens, or what the context allows) on every
slot at once (embedding models: one short input, then a batch of 32 long ones). The estimate
is the pool's measured base (an empty worker of the engine) plus `estimate_model_bytes`.

    .venv/bin/python bench/memory.py [--repeat 2] [--extra] [--only REGEX]

`--extra` adds the transformers and onnxruntime-genai conversions of SmolLM2 and Gemma that
the test suite keeps in its cache (`$LLM_ROUTER_TEST_CACHE` or ~/.cache/llm-router-tests),
when they are there, and MiniLM written as a GGUF embedding model (tests/bert_gguf.py).
Prints a markdown table (medians over the repeats; MiB)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, bundled_models

from llm_router import defaults
from llm_router.engines import LoadSpec
from llm_router.lifecycle.discovery import ModelSource, source_of
from llm_router.lifecycle.estimate import estimate_model_bytes
from llm_router.types import Finished, GenerationRequest, SamplingParams
from llm_router.worker.client import Worker
from llm_router.worker.pool import WorkerPool

MiB = 2**20
SENTENCE = "The quick brown fox jumps over the lazy dog. "  # ~10 tokens
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("parallel 8", {"parallel": 8}),
    ("context 512 x 1", {"context_size": 512, "parallel": 1}),
    ("context 4096 x 2", {"context_size": 4096, "parallel": 2}),
]
CACHE = Path(os.environ.get("LLM_ROUTER_TEST_CACHE") or Path.home() / ".cache/llm-router-tests")
# The transformers and genai engines allocate KV as tokens come, so the estimate is a ceiling
# (every slot's context full); with 512 tokens a slot, the long prompts reach it.
FULL_512 = ("context 512 x 4", {"context_size": 512})
EXTRA = [  # (cache recipe, settings)
    ("smollm2-hf-f32", [("defaults", {}), FULL_512]),
    ("gemma3-hf-bf16", [FULL_512]),
    ("smollm2-onnx-fp32", [("defaults", {}), FULL_512]),
    ("smollm2-onnx-int4", [("defaults", {}), FULL_512]),
]


def converted() -> list[tuple[Path, str, dict[str, Any]]]:
    """The EXTRA cases whose conversion is in the test cache."""
    found = []
    for recipe, settings in EXTRA:
        for entry in sorted(CACHE.glob(f"{recipe}-*/model"))[:1]:
            found += [(entry, name, opts) for name, opts in settings]
    return found


def bert_gguf(folder: Path) -> list[tuple[Path, str, dict[str, Any]]]:
    """MiniLM as llama.cpp's BERT GGUF, made with the test suite's writer."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bert_gguf import write_bert_gguf

    source = defaults.bundled_minilm()
    if source is None:
        return []
    path = write_bert_gguf(source, folder / "all-MiniLM-L6-v2.gguf")
    return [(path, "defaults", {}), (path, "batch 4096", {"batch_size": 4096})]


@dataclass
class Run:
    base: int
    loaded: int
    short: int
    busy: int  # after the full-batch prompts
    peak: int  # the most seen while they ran (sampled every 20 ms), or after


async def _generate(worker: Worker, prompt: str) -> None:
    async for event in worker.generate(
        GenerationRequest(SamplingParams(max_tokens=8), prompt=prompt)
    ):
        if isinstance(event, Finished):
            return


async def _peak(worker: Worker, work: Any) -> tuple[int, int]:
    """RSS after `work` (awaited) and the most seen while it ran."""
    task = asyncio.ensure_future(work)
    peak = 0
    while not task.done():
        peak = max(peak, worker.rss() or 0)
        await asyncio.wait([task], timeout=0.02)
    await task
    after = worker.rss() or 0
    return after, max(peak, after)


async def measure(pool: WorkerPool, source: ModelSource, options: dict[str, Any]) -> Run:
    info = source.info
    spec = LoadSpec(
        str(source.path),
        options,
        info.architecture if info else None,
        info.finetune if info else None,
    )
    worker = await pool.start(source.engine, spec, timeout=120)
    try:
        base, loaded = pool.base(source.engine) or 0, worker.rss() or 0
        if source.task == "embed":
            await worker.embed(["Hello"])
            short = worker.rss() or 0
            busy, peak = await _peak(
                worker, worker.embed([f"{i} " + SENTENCE * 40 for i in range(32)])
            )
        else:
            for _ in range(2):
                await _generate(worker, "Hello")
            short = worker.rss() or 0
            slots = int(worker.info.get("parallel") or 1)
            context = int(worker.info.get("context_size") or 1024)
            long = SENTENCE * max(1, min(60, (context - 48) // 11))
            batch = asyncio.gather(*(_generate(worker, f"{i} " + long) for i in range(slots)))
            busy, peak = await _peak(worker, batch)
        return Run(base, loaded, short, busy, peak)
    finally:
        await worker.stop()


def _pct(estimate: int, measured: int) -> str:
    return f"{100 * (estimate - measured) / measured:+.0f}%"


async def main(repeat: int, extra: bool, only: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = bundled_models(Path(tmp))
        cases = [
            (p, name, opts)
            for p in sorted(models.iterdir())
            if p.suffix == ".gguf"
            for name, opts in SETTINGS
        ]
        cases += [(p, "defaults", {}) for p in models.iterdir() if p.suffix != ".gguf"]
        if extra:
            cases += converted() + bert_gguf(Path(tmp))
        pool = WorkerPool(spares=False)
        rows = []
        for path, name, options in cases:
            label = path.parent.name.rsplit("-", 1)[0] if path.name == "model" else path.stem
            if only and not re.search(only, f"{label} {name}"):
                continue
            source = source_of(path)
            runs = [await measure(pool, source, options) for _ in range(repeat)]
            med = {
                k: int(statistics.median(getattr(r, k) for r in runs))
                for k in ("base", "loaded", "short", "busy", "peak")
            }
            estimate = med["base"] + estimate_model_bytes(source, options)
            spread = max(r.peak for r in runs) - min(r.peak for r in runs)
            print(
                f"# {label} {name}: "
                + ", ".join(f"{k} {v / MiB:.0f}" for k, v in med.items())
                + f", peak spread {spread / MiB:.1f}"
                f", estimate {estimate / MiB:.0f}",
                flush=True,
            )
            rows.append(
                f"| {label} | {source.engine} | {name} | {med['base'] / MiB:.0f} | "
                f"{estimate / MiB:.0f} | {med['loaded'] / MiB:.0f} | "
                f"{med['short'] / MiB:.0f} | {med['busy'] / MiB:.0f} | {med['peak'] / MiB:.0f} | "
                f"{_pct(estimate, med['short'])} | {_pct(estimate, med['peak'])} |"
            )
        await pool.close()
    print(
        "\n| model | engine | setting | base | estimate | after load | after short requests"
        " | after full-batch prompts | peak | error vs short | error vs peak |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--extra", action="store_true", help="also the test cache's conversions")
    parser.add_argument("--only", help="only cases whose label and setting match this regex")
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.extra, args.only))
