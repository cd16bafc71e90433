"""The memory estimate: its arithmetic on headers (the bundled SmolLM2's and small ones built
here), checked against the figures llama.cpp itself logs for the same context; and, on real
workers, the estimate against the measured resident memory."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from llm_router.config import ModelConfig
from llm_router.engines import LoadSpec
from llm_router.lifecycle import estimate
from llm_router.lifecycle.discovery import Identity, ModelSource, source_of
from llm_router.lifecycle.estimate import breakdown, estimate_model_bytes
from llm_router.types import GenerationRequest, SamplingParams
from llm_router.worker.pool import WorkerPool

MiB = 2**20


# -- GGUF headers built here ---------------------------------------------------------------------

_BLOCKS = {0: (1, 4), 8: (32, 34), 12: (256, 144)}  # F32, Q8_0, Q4_K: elements, bytes a block


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _value(value: str | int | list[int]) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _s(value)
    if isinstance(value, list):
        return struct.pack("<IIQ", 9, 4, len(value)) + struct.pack(f"<{len(value)}I", *value)
    return struct.pack("<II", 4, value)


def _gguf(
    path: Path, meta: dict[str, str | int | list[int]], tensors: list[tuple[str, list[int], int]]
) -> Path:
    """A GGUF file with `meta` (strings, u32s, u32 arrays) and zero-filled `tensors`."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    out += b"".join(_s(k) + _value(v) for k, v in meta.items())
    offset = 0
    for name, dims, ttype in tensors:
        out += _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)
        elements, nbytes = _BLOCKS[ttype]
        offset += -(-(int(np.prod(dims)) // elements * nbytes) // 32) * 32
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(out + b"\0" * offset)
    return path


def _gemma_like(tmp_path: Path, layers: int = 6, **extra: str | int | list[int]) -> Path:
    meta: dict[str, str | int | list[int]] = {
        "general.architecture": "gemma3",
        "gemma3.block_count": layers,
        "gemma3.context_length": 32768,
        "gemma3.embedding_length": 640,
        "gemma3.feed_forward_length": 2048,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 512,
        "gemma3.vocab_size": 1000,
        **extra,
    }
    return _gguf(tmp_path / "gemma-like.gguf", meta, [("blk.0.attn_norm.weight", [640], 0)])


def test_window_layers_follow_llama_cpp_s_pattern(tmp_path: Path) -> None:
    facts = source_of(_gemma_like(tmp_path, layers=12)).info
    assert facts is not None and facts.memory is not None
    assert facts.memory.windowed == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    given = source_of(_gemma_like(tmp_path, 3, **{"gemma3.attention.sliding_window_pattern": 3}))
    assert given.info and given.info.memory and given.info.memory.windowed == (True, True, False)


def test_kv_cache_of_windowed_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_of(_gemma_like(tmp_path))  # 5 windowed layers, 1 global; 512 bytes a cell
    options = {"context_size": 4096, "parallel": 2}
    cell = 1 * (256 + 256) * 2
    # The engine keeps llama.cpp's default swa_full: windowed layers hold the whole context.
    assert breakdown(source, options).kv == 2 * 6 * 4096 * cell
    # Without it, llama_kv_cache_iswa: pad(min(n_ctx_seq, window + ubatch), 256) cells a stream.
    monkeypatch.setattr(estimate, "SWA_FULL", False)
    assert breakdown(source, options).kv == 2 * (4096 + 5 * 1024) * cell
    assert breakdown(source, {**options, "batch_size": 100}).kv == 2 * (4096 + 5 * 768) * cell


def test_context_is_padded_per_slot_as_llama_cpp_does(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    cell = 6 * (256 + 256) * 2
    # n_ctx = pad(1000 x 3, 256) = 3072; n_ctx_seq = pad(3072 / 3, 256) = 1024.
    assert breakdown(source, {"context_size": 1000, "parallel": 3}).kv == 3 * 1024 * cell
    # The default: min(trained context, 2048) a slot, 4 slots.
    assert breakdown(source, {}).kv == 4 * 2048 * cell


def test_per_layer_kv_heads(tmp_path: Path) -> None:
    kv = {"gemma3.attention.head_count_kv": [0, 2, 2], "gemma3.attention.sliding_window": 0}
    source = source_of(_gemma_like(tmp_path, 3, **kv))
    assert breakdown(source, {"context_size": 512, "parallel": 1}).kv == 512 * 4 * 512 * 2


def test_repacked_matrices_count_twice_unless_repack_is_off(tmp_path: Path) -> None:
    meta: dict[str, str | int | list[int]] = {
        "general.architecture": "llama",
        "llama.block_count": 1,
    }
    tensors = [
        ("token_embd.weight", [256, 16], 12),  # looked up by row: never repacked
        ("blk.0.ffn_up.weight", [256, 16], 12),  # 16 Q4_K blocks: repacked
        ("blk.0.attn_k.weight", [256, 4], 12),  # rows not a multiple of 8
        ("blk.0.ffn_down.weight", [32, 8], 8),  # Q8_0: not repacked on x86
    ]
    source = source_of(_gguf(tmp_path / "repack.gguf", meta, tensors))
    data = 16 * 144 + 16 * 144 + 4 * 144 + 8 * 34
    assert breakdown(source, {}).weights == data + 16 * 144
    assert breakdown(source, {"repack": False}).weights == data


# -- the bundled SmolLM2 header: what llama.cpp logs for the same contexts -------------------------


def test_smollm2_weights_and_kv_cache_as_llama_cpp_logs_them(smollm2_gguf: Path) -> None:
    source = source_of(smollm2_gguf)
    default = breakdown(source, {})
    assert default.weights == 96_576_768  # "CPU_Mapped model buffer size = 92.10 MiB"
    assert default.kv == 180 * MiB  # "KV buffer size = 180.00 MiB" (2048 cells x 4 seqs)
    assert breakdown(source, {"parallel": 8}).kv == 360 * MiB
    assert breakdown(source, {"context_size": 512, "parallel": 1}).kv == 11.25 * MiB
    assert breakdown(source, {"context_size": 4096, "parallel": 2}).kv == 180 * MiB
    # Logits for one token a slot ("output buffer size = 0.75 MiB" at 4 slots).
    one, four = breakdown(source, {"parallel": 1}), default
    assert four.compute - one.compute == 3 * 49_152 * 4
    assert estimate_model_bytes(source, {}) == default.total


# -- other engines and fallbacks -------------------------------------------------------------------


def test_transformers_weights_in_the_loaded_dtype_and_kv_at_its_ceiling(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-hf"
    folder.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "max_position_embeddings": 256,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text("{}")
    save_file({"w": np.zeros((100, 10), np.float32)}, str(folder / "model.safetensors"))
    source = source_of(folder)
    as_saved, bf16 = breakdown(source, {}), breakdown(source, {"dtype": "bfloat16"})
    assert as_saved.weights == (folder / "model.safetensors").stat().st_size
    assert bf16.weights == 1000 * 2
    # 4 slots x 256 tokens x 2 layers x 2 KV heads x (16 + 16) x element bytes
    assert as_saved.kv == 4 * 256 * 2 * 2 * 32 * 4
    assert bf16.kv == as_saved.kv // 2
    # A longer trained context: 2048 tokens a slot unless configured, as the engine takes
    # (SmolLM2's 8192 made a 135M model's estimate 2.6 GiB, found from outside)
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config))
    source = source_of(folder)
    assert breakdown(source, {}).kv == 4 * 2048 * 2 * 2 * 32 * 4
    assert breakdown(source, {"context_size": 4096}).kv == 4 * 4096 * 2 * 2 * 32 * 4


def test_fake_engine_holds_its_ballast(tmp_path: Path) -> None:
    script = tmp_path / "model.fake.json"
    script.write_text(json.dumps({"ballast_mb": 50}))
    source = ModelSource(
        "f", script, "fake", "fake", ModelConfig(id="f"), Identity(10, 0), "config"
    )
    assert estimate_model_bytes(source, {"parallel": 8}) == 50 * MiB


def test_without_metadata_the_files_size_and_a_fifth(tmp_path: Path) -> None:
    source = ModelSource(
        "x",
        tmp_path / "x.gguf",
        "gguf",
        "llama.cpp",
        ModelConfig(id="x"),
        Identity(1000, 0),
        "config",
    )
    assert estimate_model_bytes(source, {}) == 1200


# -- real workers ----------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize(
    ("model", "options"), [("smollm2_gguf", {}), ("gemma_gguf", {"parallel": 8})]
)
async def test_estimate_within_15_percent_of_a_real_worker(
    request: pytest.FixtureRequest, model: str, options: dict[str, Any]
) -> None:
    """Base + estimate against the worker's RSS after load and two short generations (the
    estimate aims a little higher: the steady state after full-batch prompts, see
    BENCHMARKS.md)."""
    path: Path = request.getfixturevalue(model)
    source = source_of(path)
    pool = WorkerPool(spares=False)
    worker = await pool.start("llama.cpp", LoadSpec(str(path), options), timeout=120)
    try:
        for _ in range(2):
            request_ = GenerationRequest(SamplingParams(max_tokens=8), prompt="Hello")
            async for _event in worker.generate(request_):
                pass
        measured, base = worker.rss(), pool.base("llama.cpp")
    finally:
        await worker.stop()
        await pool.close()
    assert measured is not None and base is not None
    estimated = base + estimate_model_bytes(source, options)
    error = (estimated - measured) / measured
    assert abs(error) <= 0.15, f"estimated {estimated / MiB:.0f} MiB, measured {measured / MiB:.0f}"
