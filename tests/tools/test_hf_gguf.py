"""`convert --to gguf` on the real SmolLM2: the bundled Q4_1 GGUF, dequantized to an HF folder
(the cached `smollm2_hf`), written back as an f16 GGUF by our own writer. The round trip must
read as the original does (metadata, vocabulary) and answer as it does under llama.cpp."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from engine_driver import chat, greedy, run
from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.formats.detect import detect, read_meta
from llm_router.formats.gguf import read_gguf_info
from llm_router.tools import ConversionError, OutputExists, convert, quantize

pytestmark = pytest.mark.real  # real models, conversions or processes

PROMPTS = (
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colours are",
)
TOKENS = 16
# Keys that must hold the same values in the original and the round trip: every hyperparameter
# and the whole tokenizer. Not compared: general.* naming, file_type (Q4_1 vs F16) and
# tokenizer.ggml.pre ("smollm" in the original; transformers' GGUF reader writes a plain
# ByteLevel pre-tokenizer, which is "gpt-2": the same split for this vocabulary, whose digits
# are single tokens anyway, as the tokenization check below shows).
SAME_KEYS = (
    "general.architecture",
    "general.finetune",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)


@pytest.fixture(scope="module")
def round_trip(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "smol-f16.gguf"
    lines: list[str] = []
    assert convert(smollm2_hf, "gguf", out, progress=lines.append) == out
    assert lines and "272 tensors in f16" in lines[0] and lines[-1].startswith("tensor 272/272")
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # nothing staged is left
    return out


def _fields(path: Path) -> dict[str, Any]:
    """SAME_KEYS and the pre-tokenizer, as gguf-py reads them (seconds: it maps every string)."""
    fields = gguf.GGUFReader(path).fields
    return {k: fields[k].contents() for k in (*SAME_KEYS, "tokenizer.ggml.pre") if k in fields}


def test_the_round_trip_reads_as_the_original(round_trip: Path, smollm2_gguf: Path) -> None:
    found = detect(round_trip)
    assert found is not None and (found.format, found.engine) == ("gguf", "llama.cpp")
    meta, original = read_meta(found), read_gguf_info(smollm2_gguf)
    assert (meta.architecture, meta.quantization, meta.task) == ("llama", "F16", "generate")
    assert meta.parameters == original.parameters
    assert meta.context_length == original.context_length == 8192
    assert meta.embedding_length == original.embedding_length
    assert meta.chat_template == original.chat_template is not None
    info = read_gguf_info(round_trip)
    assert (info.bos_token, info.eos_token) == (original.bos_token, original.eos_token)
    assert info.n_tensors == original.n_tensors  # tied embeddings: no output.weight in either
    ours, theirs = _fields(round_trip), _fields(smollm2_gguf)
    assert set(ours) == set(theirs) == {*SAME_KEYS, "tokenizer.ggml.pre"}
    assert [k for k in SAME_KEYS if ours[k] != theirs[k]] == []
    assert (ours["tokenizer.ggml.pre"], theirs["tokenizer.ggml.pre"]) == ("gpt-2", "smollm")


def test_requantized_the_round_trip_is_the_original_bit_for_bit(
    round_trip: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    """Every Q4_1 block of the original holds values d*q + m; dequantized, stored in f16 and
    quantized again by llama.cpp, they give back the same d, m and q: the converter lost and
    misplaced nothing (names, shapes, the Q/K permutation, tied embeddings)."""
    again = quantize(round_trip, tmp_path / "again.gguf", "Q4_1").path
    ours = {t.name: t for t in gguf.GGUFReader(again).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(smollm2_gguf).tensors}
    assert sorted(ours) == sorted(theirs)
    differ = [
        n
        for n, t in theirs.items()
        if (ours[n].tensor_type, list(ours[n].shape)) != (t.tensor_type, list(t.shape))
        or not np.array_equal(ours[n].data, t.data)
    ]
    assert differ == []


@dataclass
class Answers:
    chat: str  # the greedy answer to the chat question
    tokens: list[list[int]]  # the greedy tokens after each of PROMPTS
    sample: list[int]  # how SAMPLE tokenizes


SAMPLE = "Hello world, 12345 tokens!\n\tdef f(x): return x ** 2  # café, naïve <|im_end|>"


@pytest.fixture(scope="module")
def answers(round_trip: Path, smollm2_gguf: Path) -> dict[str, Answers]:
    """What the original and the round trip answer, one request at a time on one thread: two
    threads on two busy cores wait on each other's barriers (80 s here instead of 5)."""
    requests = [
        chat("What is the capital of France?", max_tokens=30),
        *(greedy(p, max_tokens=TOKENS) for p in PROMPTS),
    ]
    made = {}
    for name, path in (("original", smollm2_gguf), ("round trip", round_trip)):
        engine = LlamaCppEngine(
            LoadSpec(str(path), {"threads": 1, "parallel": 1, "context_size": 256}, "llama")
        )
        try:
            results = [run(engine, r) for r in requests]
            assert all(r.error is None and r.finished for r in results)
            made[name] = Answers(
                results[0].text,
                [engine._text.tokenize(r.text, add_bos=False) for r in results[1:]],
                engine._text.tokenize(SAMPLE, add_bos=False),
            )
        finally:
            engine.close()
    return made


def test_the_round_trip_answers_as_the_original(answers: dict[str, Answers]) -> None:
    original, ours = answers["original"], answers["round trip"]
    assert ours.chat == original.chat and "Paris" in ours.chat
    assert ours.sample == original.sample  # the same tokenization, special tokens included


def test_the_round_trip_keeps_the_first_greedy_tokens(answers: dict[str, Answers]) -> None:
    """The round trip holds the original's dequantized weights in f16, but the original
    multiplies in Q4_1 (its activations rounded to Q8_1): greedy paths agree until the first
    near-tie between two tokens, then part. Measured here (16 tokens each): 5, 4, 16, 16; an
    f32 round trip parts at the same tokens, so the parting is the quantized compute, not the
    f16 storage. A wrong Q/K permutation, RoPE base or norm epsilon garbles the first token."""
    agree = []
    for a, b in zip(answers["original"].tokens, answers["round trip"].tokens, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        agree.append(n)
    assert min(agree) >= 4, agree
    assert sum(agree) >= len(PROMPTS) * TOKENS // 2, agree


def _variant(hf: Path, folder: Path, **config: object) -> Path:
    """`hf` with its config.json changed (the rest linked)."""
    folder.mkdir()
    for item in hf.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    original = json.loads((hf / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**original, **config}))
    return folder


def test_convert_to_gguf_refusals(smollm2_hf: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    gemma = _variant(
        smollm2_hf,
        tmp_path / "gemma-like",
        architectures=["Gemma3ForCausalLM"],
        model_type="gemma3_text",
    )
    with pytest.raises(
        ConversionError,
        match=r"architecture Gemma3ForCausalLM cannot be "
        r"converted to GGUF yet \(supported: ",
    ):
        convert(gemma, "gguf", tmp_path / "a.gguf")
    llama3 = _variant(
        smollm2_hf, tmp_path / "llama3-rope", rope_parameters={"rope_type": "llama3", "factor": 8.0}
    )
    with pytest.raises(ConversionError, match="RoPE scaling 'llama3' cannot be converted"):
        convert(llama3, "gguf", tmp_path / "a.gguf")
    with pytest.raises(ConversionError, match=r"converts HF folders; this is gguf.*quantize"):
        convert(smollm2_gguf, "gguf", tmp_path / "b.gguf")
    with pytest.raises(ConversionError, match="outtype 'q4_0' is not one of f16, bf16, f32"):
        convert(smollm2_hf, "gguf", tmp_path / "c.gguf", outtype="q4_0")
    (tmp_path / "d.gguf").write_text("keep me")
    with pytest.raises(OutputExists, match="--force"):
        convert(smollm2_hf, "gguf", tmp_path / "d.gguf")
    assert (tmp_path / "d.gguf").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.gguf", "gemma-like", "llama3-rope"]
