"""How much memory a model's worker will hold once loaded, estimated before loading it: from
the model's metadata and engine options; the manager adds the measured memory of an empty
worker of its engine (the pool's `base`). The manager plans admissions with it until the first
load measures the real figure."""

from __future__ import annotations

import json
from typing import Any

from ..discovery import ModelSource

__all__ = ["DEFAULT_BASE", "estimate_model_bytes"]

MiB = 2**20
# An empty worker when no spare has measured one yet: Python, the router's modules and the
# engine library (measured here: ~60-100 MiB depending on the engine).
DEFAULT_BASE = 96 * MiB


def estimate_model_bytes(source: ModelSource, options: dict[str, Any]) -> int:
    """Bytes the model of `source` adds to an empty worker of its engine, with `options`
    (EngineOptions as a dict): weights, caches and buffers."""
    if source.engine == "fake":
        return _fake(source)
    return int(source.identity.size_bytes * 1.2)


def _fake(source: ModelSource) -> int:
    """The fake engine's script says what it holds (`ballast_mb`)."""
    try:
        script = json.loads(source.path.read_text())
    except (OSError, ValueError):
        return 0
    return int(script.get("ballast_mb", 0)) * MiB if isinstance(script, dict) else 0
