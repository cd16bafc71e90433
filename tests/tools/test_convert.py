"""`convert` and `quantize` on the bundled SmolLM2: what they refuse, that they never leave a
partial output, and that a quantized file is served. The conversions' outputs themselves are
exercised by the engine tests (tests/engines), on the cached models they make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_driver import chat, run
from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.formats.gguf import read_gguf_info
from llm_router.tools import ConversionError, OutputExists, convert, quantize, quantize_types

pytestmark = pytest.mark.real  # real models, conversions or processes


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def test_quantize_requantizes_and_the_result_is_served(smollm2_gguf: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "smol-q8_0.gguf"
    result = quantize(smollm2_gguf, out, "q8_0", progress=lines.append)
    assert result.path == out and result.type_name == "Q8_0"
    assert result.size_before == smollm2_gguf.stat().st_size
    assert result.size_after == out.stat().st_size > result.size_before  # Q4_1 -> Q8_0 grows
    assert lines and _leftovers(tmp_path) == []
    info = read_gguf_info(out)
    assert (info.quantization, info.parameters) == ("Q8_0", read_gguf_info(smollm2_gguf).parameters)
    engine = LlamaCppEngine(LoadSpec(str(out), {"threads": 2, "parallel": 1}, "llama"))
    try:
        answer = run(engine, chat("What is the capital of France?"))
    finally:
        engine.close()
    assert "Paris" in answer.text


def test_quantize_refuses_to_overwrite_unless_forced(smollm2_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_text("keep me")
    with pytest.raises(OutputExists, match="exists"):
        quantize(smollm2_gguf, out, "Q8_0")
    assert out.read_text() == "keep me"
    quantize(smollm2_gguf, out, "Q8_0", force=True)
    assert read_gguf_info(out).quantization == "Q8_0"


def test_quantize_refusals(smollm2_gguf: Path, tmp_path: Path) -> None:
    assert {"Q4_K_M", "Q5_K_M", "Q8_0", "F16"} <= set(quantize_types())
    with pytest.raises(ConversionError, match="unknown type 'Q9_9'"):
        quantize(smollm2_gguf, tmp_path / "x.gguf", "Q9_9")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ConversionError, match="not a GGUF file"):
        quantize(not_gguf, tmp_path / "y.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf"]


def test_convert_refuses_to_overwrite(smollm2_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExists):
        convert(smollm2_gguf, "hf", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_convert_refuses_what_it_cannot_convert(
    smollm2_hf: Path, smollm2_gguf: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConversionError, match="converts GGUF files; this is hf"):
        convert(smollm2_hf, "hf", tmp_path / "a")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ConversionError, match="not a model"):
        convert(text, "onnx", tmp_path / "b")
    with pytest.raises(ConversionError, match="precision 'int3'"):
        convert(smollm2_hf, "onnx", tmp_path / "c", precision="int3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_failed_build_leaves_nothing_behind(smollm2_hf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in smollm2_hf.iterdir():
        (broken / item.name).symlink_to(item)
    config = json.loads((smollm2_hf / "config.json").read_text())
    (broken / "config.json").unlink()
    (broken / "config.json").write_text(
        json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]})
    )
    lines: list[str] = []
    with pytest.raises(ConversionError, match="builder failed"):
        convert(broken, "onnx", tmp_path / "out", precision="int4", progress=lines.append)
    assert lines
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
