"""Embeddings from the bundled all-MiniLM-L6-v2 in three engines: transformers on its
sentence-transformers folder, onnxruntime + tokenizers (no torch) on the ONNX export `convert`
makes of it, and llama.cpp on a GGUF written from it (tests/bert_gguf.py). The first two follow
the folder's pooling config (mean, then normalize); llama.cpp the GGUF's pooling type."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bert_gguf import write_bert_gguf
from engine_driver import greedy
from llm_router.engines.base import LoadSpec
from llm_router.engines.hf import TransformersEngine
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.engines.llamacpp_embed import LlamaCppEmbeddingEngine, open_gguf
from llm_router.engines.onnx_embed import OnnxEmbeddingEngine
from llm_router.errors import BadRequest, ModelLoadFailed
from llm_router.formats.detect import describe

pytestmark = pytest.mark.real  # real models, conversions or processes

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
    "How do I bake sourdough bread?",
]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def torch_embedder(minilm: Path) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(LoadSpec(str(minilm), {"threads": 2}))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def onnx_embedder(minilm_onnx: Path) -> Iterator[OnnxEmbeddingEngine]:
    engine = OnnxEmbeddingEngine(LoadSpec(str(minilm_onnx), {"threads": 2}))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def gguf_embedder(
    minilm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaCppEmbeddingEngine]:
    path = write_bert_gguf(minilm, tmp_path_factory.mktemp("gguf") / "minilm.gguf")
    engine = open_gguf(LoadSpec(str(path), {"threads": 2}))
    assert isinstance(engine, LlamaCppEmbeddingEngine)
    yield engine
    engine.close()


ENGINES = ["torch_embedder", "onnx_embedder", "gguf_embedder"]


def test_the_export_is_detected_as_an_onnx_embedding_model(minilm_onnx: Path) -> None:
    found, meta = describe(minilm_onnx) or pytest.fail("not detected")
    assert (found.format, found.engine, found.task) == ("onnx", "onnxruntime", "embed")
    assert meta.parameters is not None and meta.parameters > 22_000_000
    assert meta.embedding_length == 384


def test_two_engines_agree(
    torch_embedder: TransformersEngine, onnx_embedder: OnnxEmbeddingEngine
) -> None:
    ours, used = torch_embedder.embed(SENTENCES)
    theirs, used_onnx = onnx_embedder.embed(SENTENCES)
    assert used == used_onnx > len(SENTENCES)  # [CLS] and [SEP] included, padding not
    assert all(len(v) == 384 for v in [*ours, *theirs])
    assert all(abs(math.hypot(*v) - 1) < 1e-4 for v in [*ours, *theirs])
    assert min(_cos(a, b) for a, b in zip(ours, theirs, strict=True)) > 0.99


@pytest.mark.parametrize("engine_name", ENGINES)
def test_similar_sentences_score_higher(engine_name: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(engine_name)
    v, _ = engine.embed(SENTENCES)
    cats, revenue, unrelated = _cos(v[0], v[1]), _cos(v[2], v[3]), _cos(v[0], v[2])
    assert cats > 0.6 and revenue > 0.6
    assert max(unrelated, _cos(v[1], v[4]), _cos(v[3], v[4])) < min(cats, revenue) - 0.3


@pytest.mark.parametrize("engine_name", ENGINES)
def test_token_arrays_equal_their_text(engine_name: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(engine_name)
    folder = request.getfixturevalue("minilm")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads everything to 128 tokens
    ids = tokenizer.encode(SENTENCES[0]).ids
    (from_text,), n_text = engine.embed(SENTENCES[:1])
    (from_ids,), n_ids = engine.embed([ids])
    assert n_text == n_ids == len(ids)
    assert _cos(from_text, from_ids) > 0.9999


@pytest.mark.parametrize("engine_name", ENGINES)
def test_the_count_before_embedding_is_the_one_embedding_reports(
    engine_name: str, request: pytest.FixtureRequest
) -> None:
    """What a tokens-per-minute limit charges before the inputs run (Engine.embedding_tokens)
    is the usage their embedding then reports: texts, a text past the model's length (cut
    where embedding cuts it) and token arrays, short and past the length."""
    engine = request.getfixturevalue(engine_name)
    texts = [*SENTENCES, "word " * 1000, "a b c d e f g h i j k l m n o p"]
    arrays = [[101, 2023, 102], [2773] * 1000]
    for inputs in (texts, arrays, texts[:1]):
        assert engine.embedding_tokens(inputs) == engine.embed(inputs)[1] > 0


@pytest.mark.parametrize("engine_name", ENGINES)
def test_generation_is_refused(engine_name: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(engine_name)
    with pytest.raises(BadRequest, match="only makes embeddings"):
        engine.submit(0, greedy("hello"))
    assert not engine.busy and engine.step() == []


def test_llama_cpp_agrees_with_transformers(
    torch_embedder: TransformersEngine, gguf_embedder: LlamaCppEmbeddingEngine
) -> None:
    ours, used = gguf_embedder.embed(SENTENCES)
    theirs, used_torch = torch_embedder.embed(SENTENCES)
    assert used == used_torch  # llama.cpp's WordPiece gives the same tokens, [CLS]/[SEP] too
    assert all(len(v) == 384 and abs(math.hypot(*v) - 1) < 1e-4 for v in ours)
    assert min(_cos(a, b) for a, b in zip(ours, theirs, strict=True)) > 0.999


def test_a_generative_gguf_makes_no_embeddings(smollm2_gguf: Path) -> None:
    engine = open_gguf(LoadSpec(str(smollm2_gguf), {"threads": 1, "parallel": 1}))
    try:
        assert isinstance(engine, LlamaCppEngine)
        with pytest.raises(BadRequest, match="does not make embeddings"):
            engine.embed(["hello"])
        with pytest.raises(BadRequest, match="does not make embeddings"):
            engine.embedding_tokens(["hello"])
    finally:
        engine.close()


def test_long_input_is_cut_at_max_seq_length(onnx_embedder: OnnxEmbeddingEngine) -> None:
    _, used = onnx_embedder.embed(["word " * 1000])
    assert used == 256  # sentence_bert_config.json, as sentence-transformers cuts


def test_a_text_file_named_onnx_is_no_model(tmp_path: Path, minilm: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((minilm / "tokenizer.json").read_bytes())
    (tmp_path / "model.onnx").write_text("not a model\n")
    with pytest.raises(ModelLoadFailed, match="not an ONNX model"):
        OnnxEmbeddingEngine(LoadSpec(str(tmp_path), {}))


def test_a_context_size_past_the_models_positions_is_capped(minilm_onnx: Path) -> None:
    """A server-wide `model_defaults.context_size` meant for chat models (2048) must not make
    a 512-position encoder fail on long inputs: they are cut at its limit instead."""
    engine = OnnxEmbeddingEngine(LoadSpec(str(minilm_onnx), {"threads": 2, "context_size": 2048}))
    try:
        vectors, used = engine.embed(["word " * 1000])
        assert used == 512 and len(vectors[0]) == 384
    finally:
        engine.close()
