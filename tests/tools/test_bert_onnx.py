"""The torch-free BERT -> ONNX builder that serves the bundled embedding model through
onnxruntime: its graph gives transformers' vectors, and `defaults.place_minilm` uses it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llm_router import defaults
from llm_router.engines.base import LoadSpec
from llm_router.engines.hf import TransformersEngine
from llm_router.engines.onnx_embed import OnnxEmbeddingEngine
from llm_router.formats.detect import describe
from llm_router.tools import ConversionError, OutputExists
from llm_router.tools.bert_onnx import build_bert_onnx, is_bert
from model_cache import minilm_folder

pytestmark = pytest.mark.real  # real models, conversions or processes

TEXTS = [
    "The cat sits on the mat.",
    "A longer sentence, with punctuation; and more words.",
    "short",
    "word " * 400,
]


def test_the_graph_gives_the_vectors_of_transformers(tmp_path: Path) -> None:
    lines: list[str] = []
    out = build_bert_onnx(minilm_folder(), tmp_path / "minilm", progress=lines.append)
    assert lines and (out / "model.onnx").is_file() and (out / "1_Pooling").is_dir()
    found, meta = describe(out) or pytest.fail("not detected")
    assert (found.format, found.engine, found.task) == ("onnx", "onnxruntime", "embed")
    assert (meta.embedding_length, meta.context_length) == (384, 256)
    onnx = OnnxEmbeddingEngine(LoadSpec(str(out), {"threads": 2}))
    torch = TransformersEngine(LoadSpec(str(minilm_folder()), {"threads": 2}))
    try:
        ours, used = onnx.embed(TEXTS)
        theirs, used_torch = torch.embed(TEXTS)
    finally:
        onnx.close()
        torch.close()
    assert used == used_torch
    for a, b in zip(ours, theirs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
        assert math.isclose(sum(x * y for x, y in zip(a, b, strict=True)), 1.0, abs_tol=1e-6)


def test_refuses_what_it_cannot_build(tmp_path: Path, smollm2_hf: Path) -> None:
    assert is_bert(minilm_folder()) and not is_bert(smollm2_hf)
    with pytest.raises(ConversionError, match="not a BERT"):
        build_bert_onnx(smollm2_hf, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExists):
        build_bert_onnx(minilm_folder(), tmp_path / "taken")


def test_provisioning_places_minilm_as_onnx_once(tmp_path: Path) -> None:
    placed = defaults.place_minilm(tmp_path)
    assert placed == tmp_path / defaults.MINILM_ID and (placed / "model.onnx").is_file()
    mtime = (placed / "model.onnx").stat().st_mtime_ns
    assert defaults.place_minilm(tmp_path) == placed
    assert (placed / "model.onnx").stat().st_mtime_ns == mtime  # left as it was
