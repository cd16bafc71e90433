"""How much memory a model's worker will hold, estimated before loading it from the model's
header or config (`ModelMeta.memory`, read without loading weights) and its engine options.
The figure is what the model adds to an empty worker of its engine (`base`, measured by the
pool); the manager plans with base + this until a load measures the real figure.

The target is resident memory (RSS, what the manager measures) at its most in steady use: after
prompts of a full micro-batch on every slot. For llama.cpp that is 10-40 MiB above the RSS after
load and short requests; base + estimate came within -1% to +4% of it for the bundled GGUF models
in every setting measured, +3 to +9% of the RSS after short requests
(bench/memory.py; the table is in BENCHMARKS.md).

llama.cpp (GGUF), as engines/llamacpp.py creates its context, following llama-context.cpp,
llama-kv-cache(-iswa).cpp and ggml-cpu's repack.cpp:
- weights: all tensor data (the file is mapped with MAP_POPULATE, so resident at once), plus
  the copy the CPU backend makes of the matrices it repacks (Q4_0, Q4_K, IQ4_NL, Q2_K) unless
  `repack` is off (where the engine turns it off for AMX, this over-counts by that copy);
- KV cache: f16, one stream per slot of n_ctx_seq = pad(context, 256) cells; a windowed layer
  holds pad(min(n_ctx_seq, window + ubatch), 256) cells when llama.cpp's `swa_full` is off,
  but the engine keeps llama.cpp's default (on): full size. Cleared at creation: resident;
- logits for one token per slot (n_vocab x parallel x 4 bytes);
- activations: llama.cpp reserves a compute buffer sized for a micro-batch that returns
  every token's logits (103 MiB for SmolLM2, 515 MiB for Gemma 3 at 512 tokens: what its
  `--fit` counts); the engine asks one token per sequence, so only the layers' activations
  are ever touched: ubatch x (3 n_ff + 2 n_embd + 2 n_head x head_dim) x 4 bytes, plus the
  f16 attention masks;
- the vocabulary's tables on the heap, sampling buffers per slot, and a fixed part:
  calibrated on the two bundled GGUF models;
- an embedding model (an encoder, engines/llamacpp_embed.py) has no KV cache, but every token
  of its batch (2048 at least) is an output with room for logits and an embedding: +9-10%
  against MiniLM as a GGUF.

The other engines allocate as tokens come and free when a request ends, so their estimate is a
ceiling, every slot's context full, reached only by long prompts on every slot at once:
transformers: weights in the loaded dtype (mapped from safetensors, resident only once a
forward touches them), the KV cache, and a runtime and tokenizer overhead; onnxruntime
(embeddings): the graph's data and the arena for a batch of 32 whole inputs;
onnxruntime-genai: the graph's data, each slot's KV buffer and a prompt's logits for every
token (genai returns them all). Calibrated roughly on SmolLM2 (f32, genai f32 and int4), Gemma 3
(bf16) and MiniLM: within -2 to +12% of the peak RSS at 512 tokens a slot."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..formats.hf import DTYPE_BYTES, MemoryFacts, ModelMeta
from .discovery import ModelSource

__all__ = [
    "DEFAULT_BASE",
    "Breakdown",
    "breakdown",
    "default_base",
    "estimate_model_bytes",
    "kv_bytes",
]

MiB = 2**20
# An empty worker when no spare has measured one yet: Python, the router's modules and the
# engine library (measured here: 44 MiB for llama.cpp, 47-53 for onnxruntime, 250 with torch).
DEFAULT_BASE = 96 * MiB
BASES = {
    "llama.cpp": 48 * MiB,
    "onnxruntime": 56 * MiB,
    "onnxruntime-genai": 56 * MiB,
    "transformers": 256 * MiB,
}


def default_base(engine: str) -> int:
    """What an empty worker of `engine` holds, before one has been measured here."""
    return BASES.get(engine, DEFAULT_BASE)


# engines/llamacpp.py's and llamacpp_embed.py's defaults (not imported from there: those
# modules load llama.cpp's library).
LLAMA_CONTEXT, LLAMA_PARALLEL, LLAMA_BATCH = 2048, 4, 512
LLAMA_EMBED_BATCH = 2048
SWA_FULL = True  # llama_context_default_params().swa_full, which the engine leaves as it is
PAD = 256  # llama.cpp pads contexts and windowed caches to this many cells
# Calibrated (bench/memory.py): llama.cpp's vocabulary tables, a token's and a BPE merge's
# share, on the heap; buffers per slot and token of the vocabulary (sampling); the rest.
VOCAB_BYTES, MERGE_BYTES, SLOT_VOCAB_BYTES, LLAMA_FIXED = 200, 110, 8, 8 * MiB
# The other engines' defaults and calibrated overheads: transformers' runtime and tokenizer
# (measured beyond the weights: ~190 MiB with SmolLM2's 3.5 MB tokenizer.json, ~480 MiB with
# Gemma's 33 MB one), onnxruntime's and genai's sessions.
HF_PARALLEL, HF_OVERHEAD, HF_PER_TOKENIZER_BYTE = 4, 140 * MiB, 10
HF_CONTEXT = 2048  # a text model's context unless configured (engines/hf.py), as llama.cpp's
EMBED_BATCH, ONNX_CONTEXT, ONNX_OVERHEAD = 32, 512, 30 * MiB  # batch: both engines'
GENAI_CONTEXT, GENAI_MIN_LENGTH, GENAI_PARALLEL, GENAI_OVERHEAD = 2048, 512, 4, 130 * MiB


@dataclass(frozen=True, slots=True)
class Breakdown:
    """An estimate by part, in bytes."""

    weights: int = 0
    kv: int = 0
    compute: int = 0  # activations and outputs
    other: int = 0  # tokenizer tables, sampling, the runtime's own

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.other


def estimate_model_bytes(source: ModelSource, options: dict[str, Any]) -> int:
    """Bytes the model of `source` adds to an empty worker of its engine, with `options`
    (EngineOptions as a dict, unset keys absent): weights, caches and buffers."""
    return breakdown(source, options).total


def breakdown(source: ModelSource, options: dict[str, Any]) -> Breakdown:
    """`estimate_model_bytes` by part. Without readable metadata (or for an engine this
    module does not know) the files' size, plus a fifth."""
    if source.engine == "fake":
        return Breakdown(other=_fake(source))
    info = source.info
    facts = info.memory if info else None
    estimate = _ENGINES.get(source.engine)
    if info is None or facts is None or estimate is None:
        return Breakdown(weights=int(source.identity.size_bytes * 1.2))
    return estimate(facts, info, options)


def kv_bytes(facts: MemoryFacts, cells: int, windowed_cells: int, element: int) -> int:
    """One sequence's KV cache: per layer, cells x KV heads x (key + value length) x
    `element` bytes; layers attending within a window hold `windowed_cells`."""
    windowed = facts.windowed or (False,) * len(facts.kv_heads)
    head = facts.key_length + facts.value_length
    return sum(
        heads * head * element * (windowed_cells if w else cells)
        for heads, w in zip(facts.kv_heads, windowed, strict=False)
    )


def _pad(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


def _activations(f: MemoryFacts, tokens: int) -> int:
    """float32 activations of `tokens` tokens through one layer at its widest (the FFN's
    gate, up and product, the residual stream and attention's queries)."""
    return 4 * tokens * (3 * f.feed_forward + 2 * f.embedding + 2 * f.heads * f.key_length)


def _llama_cpp(f: MemoryFacts, info: ModelMeta, o: dict[str, Any]) -> Breakdown:
    weights = f.weight_bytes + (0 if o.get("repack") is False else f.repack_bytes)
    tables = f.vocab * VOCAB_BYTES + f.merges * MERGE_BYTES + LLAMA_FIXED
    train = info.context_length or 0
    if info.task == "embed":  # an encoder: no KV cache, every input whole in one micro-batch
        context = min(o.get("context_size") or train, train) or LLAMA_EMBED_BATCH
        batch = max(o.get("batch_size") or LLAMA_EMBED_BATCH, context)
        # Every token of a batch is an output, and llama.cpp's output buffer holds logits and
        # an embedding for each (measured: 262 MiB at 2048 tokens for MiniLM's 30,522).
        outputs = batch * (f.vocab + f.embedding) * 4
        return Breakdown(weights, 0, _activations(f, batch) + batch * batch * 2 + outputs, tables)
    context = o.get("context_size") or min(train or LLAMA_CONTEXT, LLAMA_CONTEXT)
    context = min(context, train) if train else context
    parallel = o.get("parallel") or LLAMA_PARALLEL
    n_seq = _pad(_pad(context * parallel) // parallel)  # n_ctx_seq, llama-context.cpp
    ubatch = min(o.get("batch_size") or LLAMA_BATCH, n_seq * parallel)
    window = n_seq if SWA_FULL else _pad(min(n_seq, f.sliding_window + ubatch))
    kv = parallel * kv_bytes(f, n_seq, window, 2)
    masks = ubatch * n_seq * 2 * (2 if any(f.windowed) else 1)
    logits = f.vocab * 4 * parallel
    slots = f.vocab * SLOT_VOCAB_BYTES * parallel
    return Breakdown(weights, kv, _activations(f, ubatch) + masks + logits, tables + slots)


def _transformers(f: MemoryFacts, info: ModelMeta, o: dict[str, Any]) -> Breakdown:
    element = DTYPE_BYTES.get(str(o.get("dtype")), 0)
    weights = (info.parameters or 0) * element or f.weight_bytes
    element = element or f.element_bytes or 4
    train = info.context_length or 0
    asked = o.get("context_size") or (min(train, HF_CONTEXT) if info.task != "embed" else train)
    context = min(asked, train) if train else o.get("context_size") or 0
    runtime = HF_OVERHEAD + f.tokenizer_bytes * HF_PER_TOKENIZER_BYTE
    if info.task == "embed":
        return Breakdown(weights, 0, _activations(f, EMBED_BATCH * (context or 512)), runtime)
    parallel = o.get("parallel") or HF_PARALLEL
    kv = parallel * kv_bytes(f, context, min(context, f.sliding_window), element)
    return Breakdown(weights, kv, _activations(f, context) + f.vocab * 4 * parallel, runtime)


def _onnx(f: MemoryFacts, info: ModelMeta, o: dict[str, Any]) -> Breakdown:
    tokens = o.get("context_size") or info.context_length or ONNX_CONTEXT
    scores = EMBED_BATCH * f.heads * tokens * tokens * 4  # attention probabilities, one layer
    return Breakdown(
        f.weight_bytes, 0, _activations(f, EMBED_BATCH * tokens) + scores, ONNX_OVERHEAD
    )


def _onnx_genai(f: MemoryFacts, info: ModelMeta, o: dict[str, Any]) -> Breakdown:
    train = info.context_length or GENAI_CONTEXT
    context = max(min(o.get("context_size") or min(train, GENAI_CONTEXT), train), GENAI_MIN_LENGTH)
    parallel = o.get("parallel") or GENAI_PARALLEL
    element = f.element_bytes or 4
    kv = parallel * kv_bytes(f, context, min(context, f.sliding_window or context), element)
    logits = f.vocab * 4 * parallel * context  # a prompt's logits come for every token
    return Breakdown(f.weight_bytes, kv, logits, GENAI_OVERHEAD)


_ENGINES: dict[str, Callable[[MemoryFacts, ModelMeta, dict[str, Any]], Breakdown]] = {
    "llama.cpp": _llama_cpp,
    "transformers": _transformers,
    "onnxruntime": _onnx,
    "onnxruntime-genai": _onnx_genai,
}


def _fake(source: ModelSource) -> int:
    """The fake engine's script says what it holds (`ballast_mb`), or what to estimate
    otherwise (`estimate_mb`: an estimate that is off, as a real one can be)."""
    try:
        script = json.loads(source.path.read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(script, dict):
        return 0
    mib = script.get("estimate_mb", script.get("ballast_mb", 0))
    return int(mib) * MiB if isinstance(mib, int | float) else 0
