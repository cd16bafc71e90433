"""`llm-router quantize`: a GGUF file to another quantization type through llama.cpp's own
quantizer (`llama_model_quantize`), requantizing already-quantized files (quality is that of
the source: Q4 -> Q8 does not bring back what Q4 lost). Blocks for the whole run (~1 s for a
135M model)."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidModelFile
from ..formats.gguf import read_gguf_info
from .common import ConversionError, Progress, staged_output

__all__ = ["QuantizeResult", "quantize", "quantize_types"]

_PREFIX = "LLAMA_FTYPE_MOSTLY_"


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    path: Path
    type_name: str
    size_before: int
    size_after: int
    seconds: float


def _llama_cpp() -> object:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConversionError(
            f"quantize needs llama-cpp-python: pip install 'llm-runner-router[gguf]' ({exc})"
        ) from exc
    return llama_cpp


def quantize_types() -> dict[str, int]:
    """Type name (Q4_K_M, Q8_0, F16...) -> llama_ftype, as this llama.cpp build knows them."""
    lc = _llama_cpp()
    found = {n.removeprefix(_PREFIX): getattr(lc, n) for n in dir(lc) if n.startswith(_PREFIX)}
    found["F32"] = getattr(lc, "LLAMA_FTYPE_ALL_F32", 0)
    return found


def quantize(
    src: Path,
    out: Path,
    type_name: str,
    *,
    force: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Write `src` (GGUF) quantized as `type_name` to `out`. Raises OutputExists when `out`
    exists and not `force`; ConversionError for an unknown type, a source that is not GGUF,
    or a failure of the quantizer (whose partial output is removed)."""
    types = quantize_types()
    ftype = types.get(type_name.upper())
    if ftype is None:
        raise ConversionError(f"unknown type {type_name!r}; known: {', '.join(sorted(types))}")
    try:
        read_gguf_info(src)
    except InvalidModelFile as exc:
        raise ConversionError(exc.message) from exc
    lc: object = _llama_cpp()
    params = lc.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    )
    started, before = time.perf_counter(), src.stat().st_size  # before: OUT may be SRC
    if progress:
        progress(f"quantizing {src.name} to {type_name.upper()}")
    from ..engines.llamacpp_load import last_error, quiet_log

    quiet_log()  # its errors only: a line a tensor buried the summary
    with staged_output(out, force=force, folder=False) as stage:
        rc = lc.llama_model_quantize(  # type: ignore[attr-defined]
            str(src).encode(), str(stage).encode(), ctypes.byref(params)
        )
        if rc != 0 or not stage.is_file():
            why = last_error()
            raise ConversionError(
                f"llama_model_quantize failed with code {rc} for {src}"
                + (f": {why}" if why else "")
            )
        try:
            read_gguf_info(stage)
        except InvalidModelFile as exc:
            raise ConversionError(f"the quantized file is unreadable: {exc.message}") from exc
    return QuantizeResult(
        out,
        type_name.upper(),
        before,
        out.stat().st_size,
        time.perf_counter() - started,
    )
