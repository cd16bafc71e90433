"""Engines, chosen from a lazy name -> class table. A backend library is imported only when its
engine is built, inside a worker process; a missing one is an error naming the extra."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import EngineUnavailable
from .base import Engine, EngineEvent, LoadSpec

__all__ = [
    "ENGINES",
    "Engine",
    "EngineEvent",
    "EngineInfo",
    "LoadSpec",
    "build",
    "check_available",
    "preload",
]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    target: str  # "module:Class"
    requires: str  # the import that must exist
    extra: str  # pip extra that brings it


ENGINES: dict[str, EngineInfo] = {
    # open_gguf: the generative engine, or the embedding one for files that declare pooling.
    "llama.cpp": EngineInfo("llm_router.engines.llamacpp_embed:open_gguf", "llama_cpp", "gguf"),
    "transformers": EngineInfo("llm_router.engines.hf:TransformersEngine", "transformers", "hf"),
    "onnxruntime": EngineInfo(
        "llm_router.engines.onnx_embed:OnnxEmbeddingEngine", "onnxruntime", "onnx"
    ),
    "onnxruntime-genai": EngineInfo(
        "llm_router.engines.onnx_genai:OnnxGenaiEngine", "onnxruntime_genai", "onnx"
    ),
    "fake": EngineInfo("llm_router.engines.fake:FakeEngine", "llm_router", ""),
}


def check_available(name: str) -> EngineInfo:
    """Raise EngineUnavailable (naming the extra) unless engine `name` can be imported."""
    info = ENGINES.get(name)
    if info is None:
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    if importlib.util.find_spec(info.requires) is None:
        raise EngineUnavailable(
            f"the {name} engine needs {info.requires!r}: "
            f"pip install 'llm-runner-router[{info.extra}]'"
        )
    return info


def preload(name: str) -> None:
    """Import engine `name`'s module (and its backend library) without loading a model."""
    importlib.import_module(check_available(name).target.partition(":")[0])


def build(name: str, spec: LoadSpec) -> Engine:
    """Import engine `name` and load `spec` with it (blocks for the whole load)."""
    module_name, _, attr = check_available(name).target.partition(":")
    factory: Callable[[LoadSpec], Engine] = getattr(importlib.import_module(module_name), attr)
    return factory(spec)
