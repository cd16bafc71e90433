"""The transformers engine on SmolLM2 converted from the bundled GGUF by `convert`, checked
against llama.cpp on the GGUF itself; and on tiny random models built here for the paths a
real model cannot show cheaply (context limits, pickle-only checkpoints, broken folders).

Greedy agreement with llama.cpp: the HF folder holds the GGUF's Q4_1 weights dequantized
exactly, but llama.cpp quantizes activations to 8 bits for its Q4_1 dot products, so the two
drift apart where the top two logits are nearly tied (measured: a gap under 0.25 logit at
every divergence). Over the prompts below each run agrees on at least its first 4 tokens and
most on all 8; the chat answer is identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine_driver import chat, common_tokens, greedy, run, run_all
from llm_router.engines.base import LoadSpec
from llm_router.engines.hf import TransformersEngine
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.errors import BadRequest, ContextLengthExceeded, ModelLoadFailed
from llm_router.formats.detect import describe
from llm_router.formats.gguf import read_gguf_info
from llm_router.types import GenerationRequest, SamplingParams
from tiny_models import tiny_llama

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "My favourite food is",
]


# -- SmolLM2, converted ---------------------------------------------------------------------------


def test_converted_folder_keeps_the_gguf_metadata(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    found, meta = describe(smollm2_hf) or pytest.fail("not detected")
    gguf = read_gguf_info(smollm2_gguf)
    assert (found.format, found.engine, found.task) == ("hf", "transformers", "generate")
    assert meta.parameters == gguf.parameters  # 134,515,008 either way
    assert (meta.architecture, meta.context_length) == ("llama", gguf.context_length)
    assert meta.quantization == "F32"
    assert meta.chat_template == gguf.chat_template
    assert meta.finetune == gguf.finetune  # kept in config.json: it picks templates too


def test_greedy_chat_answer_equals_llama_cpp(
    hf_engine: TransformersEngine, gguf_engine: LlamaCppEngine
) -> None:
    request = chat("What is the capital of France?")
    ours, theirs = run(hf_engine, request), run(gguf_engine, request)
    assert ours.text == theirs.text == "The capital of France is Paris."
    assert ours.finished == theirs.finished  # same finish reason and exact usage


def test_greedy_first_tokens_agree_with_llama_cpp(
    hf_engine: TransformersEngine, gguf_engine: LlamaCppEngine, smollm2_hf: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_hf), local_files_only=True)
    requests = [greedy(p, 8) for p in PROMPTS]
    ours, theirs = run_all(hf_engine, requests), run_all(gguf_engine, requests)
    agree = [common_tokens(tokenizer, a.text, b.text) for a, b in zip(ours, theirs, strict=True)]
    assert min(agree) >= 4, agree
    assert sum(n >= 8 for n in agree) >= 3, agree
    for a, b in zip(ours, theirs, strict=True):
        assert a.finished is not None and b.finished is not None
        assert a.finished.usage.prompt_tokens == b.finished.usage.prompt_tokens


def test_sequences_decoded_together_equal_each_alone(hf_engine: TransformersEngine) -> None:
    requests = [greedy(p, 6) for p in PROMPTS[:3]]
    together = run_all(hf_engine, requests)
    alone = [run(hf_engine, r) for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.finished and r.finished.finish_reason == "length" for r in together)
    assert all(r.finished and r.finished.usage.completion_tokens == 6 for r in together)


def test_kv_use_is_reported_as_llama_cpps_engine_reports_it(
    hf_engine: TransformersEngine,
) -> None:
    """`info()` (what /metrics' `llm_router_engine_tokens_cached` and `_context_tokens` read)
    counts the tokens the running sequences hold, prompt and answer so far, against the room
    of every slot; nothing once they are done (this engine keeps no cache between requests)."""
    info = hf_engine.info()
    assert info["tokens_cached"] == 0
    assert hf_engine.context_size == 2048  # min(SmolLM2's 8192, 2048), as llama.cpp's engine
    assert info["context_total"] == hf_engine.context_size * hf_engine.parallel
    hf_engine.submit(0, greedy(PROMPTS[0], 6))
    hf_engine.submit(1, greedy(PROMPTS[1], 6))
    held = []
    while hf_engine.busy:
        hf_engine.step()
        held.append(hf_engine.info()["tokens_cached"])
    prompts = sum(
        len(hf_engine.token_ids(p, add_special=True, parse_special=True)) for p in PROMPTS[:2]
    )
    assert max(held) >= prompts + 2  # both prompts and at least a token of each
    assert max(held) <= prompts + 12
    assert held[-1] == 0


def test_seed_reproduces_a_sampled_completion(hf_engine: TransformersEngine) -> None:
    def sampled(seed: int) -> str:
        params = SamplingParams(max_tokens=8, temperature=1.0, seed=seed)
        return run(hf_engine, GenerationRequest(params, prompt="Once upon a time")).text

    first, again, other = sampled(7), sampled(7), sampled(8)
    assert first == again
    assert first != other


def test_stop_string_cuts_as_llama_cpp_does(
    hf_engine: TransformersEngine, gguf_engine: LlamaCppEngine
) -> None:
    request = greedy("The capital of France is", 16, stop=("\n",))
    ours, theirs = run(hf_engine, request), run(gguf_engine, request)
    assert ours.text == theirs.text == " Paris."
    assert ours.finished == theirs.finished
    assert ours.finished is not None and ours.finished.finish_reason == "stop"


def test_embeddings_are_refused_for_a_text_model(hf_engine: TransformersEngine) -> None:
    with pytest.raises(BadRequest, match="not embeddings"):
        hf_engine.embed(["hello"])


# -- tiny random models ---------------------------------------------------------------------------


def test_prompt_over_the_context_is_refused(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf)
    engine = TransformersEngine(LoadSpec(str(folder), {"threads": 1}))
    assert engine.context_size == 32  # max_position_embeddings
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 32"):
        engine.submit(0, greedy("word " * 40))
    result = run(engine, GenerationRequest(SamplingParams(temperature=0), prompt="one two three"))
    assert result.finished is not None and result.finished.finish_reason in ("length", "stop")
    usage = result.finished.usage
    assert usage.prompt_tokens + usage.completion_tokens <= 32
    small = TransformersEngine(LoadSpec(str(folder), {"threads": 1, "context_size": 8}))
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 8"):
        small.submit(0, greedy("one two three four five six seven eight nine"))


def test_safe_pytorch_checkpoint_loads(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf, "bin")
    engine = TransformersEngine(LoadSpec(str(folder), {"threads": 1}))
    assert run(engine, greedy("Hello", 3)).finished is not None


def test_legacy_pytorch_checkpoint_loads_and_is_counted(tmp_path: Path, smollm2_hf: Path) -> None:
    """A checkpoint saved with `_use_new_zipfile_serialization=False` could never load, not
    even with allow_pickle: it was read with mmap, which torch refuses for that format."""
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf, "legacy")
    found, meta = describe(folder) or pytest.fail("not detected")
    _, zipped = describe(tiny_llama(tmp_path / "zip", smollm2_hf, "bin")) or pytest.fail()
    assert found.format == "hf" and meta.parameters == zipped.parameters
    assert meta.parameters is not None and meta.parameters > 49152 * 16
    for options in ({"threads": 1}, {"threads": 1, "allow_pickle": True}):
        engine = TransformersEngine(LoadSpec(str(folder), options))
        result = run(engine, greedy("Hello", 3))
        assert result.finished is not None and result.error is None


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf, "pickle")
    with pytest.raises(ModelLoadFailed, match="needs pickle") as err:
        TransformersEngine(LoadSpec(str(folder), {"threads": 1}))
    assert "argparse.Namespace" in err.value.message and "allow_pickle" in err.value.message
    engine = TransformersEngine(LoadSpec(str(folder), {"threads": 1, "allow_pickle": True}))
    result = run(engine, greedy("Hello", 3))
    assert result.finished is not None and result.error is None


def test_a_config_naming_weights_the_checkpoint_lacks_is_refused(
    tmp_path: Path, smollm2_hf: Path
) -> None:
    """transformers initialises missing weights at random and only logs it: a config.json
    naming more layers than the checkpoint holds was served, answering noise (found from
    outside)."""
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ModelLoadFailed, match=r"lacks \d+ weights .*layers\.1\."):
        TransformersEngine(LoadSpec(str(folder), {"threads": 1}))


def test_broken_folders_fail_to_load_with_the_reason(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = tiny_llama(tmp_path / "tiny", smollm2_hf)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadFailed, match="corrupt safetensors header"):
        TransformersEngine(LoadSpec(str(folder), {}))
    weights.unlink()
    with pytest.raises(ModelLoadFailed, match=r"config\.json but no weights"):
        TransformersEngine(LoadSpec(str(folder), {}))
