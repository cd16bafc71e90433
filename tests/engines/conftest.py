"""Converted real models for the engine tests (made once, cached) and engines on them: see
model_cache.py. (This folder is a package so this conftest does not shadow the top-level
`conftest` module other tests import from.)"""

from model_cache import (  # noqa: F401
    gguf_engine,
    hf_engine,
    minilm,
    minilm_onnx,
    smollm2_hf,
    smollm2_onnx_fp32,
    smollm2_onnx_int4,
)
