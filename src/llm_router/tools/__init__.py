"""Tools that make one model format from another: `convert` (GGUF -> HF safetensors -> ONNX,
and HF -> GGUF for llama-architecture models) and `quantize` (GGUF -> GGUF of another type).
Heavy libraries are imported only when a tool runs."""

from __future__ import annotations

from .common import ConversionError, OutputExists
from .convert import convert, converter_version
from .quantize import QuantizeResult, quantize, quantize_types

__all__ = [
    "ConversionError",
    "OutputExists",
    "QuantizeResult",
    "convert",
    "converter_version",
    "quantize",
    "quantize_types",
]
