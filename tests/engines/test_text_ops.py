"""What llama-server's /tokenize, /detokenize, /apply-template and /props ask of an engine, the
same on every engine serving the same SmolLM2 (llama.cpp, transformers, onnxruntime-genai):
the same tokens, pieces that join to the text, a template prompt whose tokens are the chat's,
and the embedding engines' tokenizer whole (no truncation or padding leaks in or stays)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_router.engines.base import Engine, LoadSpec
from llm_router.errors import BadRequest
from llm_router.types import ChatMessage, GenerationRequest

TEXT = "héllo wörld 🌍 <|im_end|> and\n\ttabs"
CHAT = (ChatMessage("system", "Be brief."), ChatMessage("user", "What is 2+2?"))


@pytest.fixture(scope="module")
def genai_engine(smollm2_onnx_fp32: Path) -> Iterator[Any]:
    from llm_router.engines.onnx_genai import OnnxGenaiEngine

    engine = OnnxGenaiEngine(LoadSpec(str(smollm2_onnx_fp32), {"threads": 2}, "llama", "instruct"))
    yield engine
    engine.close()


@pytest.fixture(params=["gguf_engine", "hf_engine", "genai_engine"])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


def test_every_engine_gives_llama_cpps_tokens(engine: Engine, gguf_engine: Engine) -> None:
    for parse_special in (True, False):
        ids = engine.token_ids(TEXT, add_special=False, parse_special=parse_special)
        assert ids == gguf_engine.token_ids(TEXT, add_special=False, parse_special=parse_special)
        assert b"".join(engine.token_pieces(ids)).decode() == TEXT
    with pytest.raises(BadRequest) as refused:
        engine.token_pieces([0, 10**6])
    assert refused.value.param == "tokens"


def test_the_template_prompt_tokenizes_to_the_chats_prompt(engine: Any) -> None:
    prompt = engine.chat_prompt(CHAT)
    assert prompt.endswith("<|im_start|>assistant\n")
    tokens = engine.token_ids(prompt, add_special=True, parse_special=True)
    assert tokens == engine._prompt_tokens(GenerationRequest(messages=CHAT))
    info = engine.template_info()
    assert info["chat_template"] and info["eos_token"] == "<|im_end|>"


def test_an_embedding_engine_tokenizes_whole_and_keeps_its_batches(minilm_onnx: Path) -> None:
    from llm_router.engines.onnx_embed import OnnxEmbeddingEngine

    engine = OnnxEmbeddingEngine(LoadSpec(str(minilm_onnx), {"threads": 2}))
    try:
        before = engine.embed(["a cat", "a cat on a mat " * 200])
        ids = engine.token_ids("hello " * 1000, add_special=True, parse_special=True)
        assert len(ids) == 1002  # [CLS], 1000 words, [SEP]: not cut at its 256 or 512
        assert engine.embed(["a cat", "a cat on a mat " * 200]) == before
        assert engine.template_info()["chat_template"] == ""
        with pytest.raises(BadRequest):
            engine.chat_prompt(CHAT)
    finally:
        engine.close()
