"""What the directory watcher does to a loaded model whose file changes (manager.refresh), on
the fake engine in this process (tests/inproc.py): fast, and the manager's real decisions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from inproc import InProcessPool
from llm_router.config import ModelConfig, Settings
from llm_router.lifecycle.manager import ModelManager
from llm_router.lifecycle.state import ModelState, Status

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ModelManager]:
    (tmp_path / "m.json").write_text(json.dumps({"reply": "one two"}))
    entry = ModelConfig(id="m", path=tmp_path / "m.json", engine="fake", pin=True)
    options: dict[str, Any] = {
        "models_dir": tmp_path,
        "models": [entry],
        "watch_interval": 0,
        "provision_default_models": False,
        "spare_workers": False,
    }
    manager = ModelManager(Settings(**options), pool=InProcessPool())
    await manager.start()
    try:
        yield manager
    finally:
        await asyncio.wait_for(manager.close(), 10)


async def loaded(state: ModelState) -> None:
    while state.status != Status.LOADED:
        await state.changed.wait()


async def test_a_pinned_model_whose_file_changed_loads_the_new_one_at_once(
    manager: ModelManager, tmp_path: Path
) -> None:
    """The watcher unloaded a pinned model whose file changed and left it unloaded until a
    request came (a reload that changes it loads it again at once; found from outside)."""
    state = manager.registry["m"]
    await asyncio.wait_for(loaded(state), 10)
    first = state.worker
    (tmp_path / "m.json").write_text(json.dumps({"reply": "three four five"}))
    manager.refresh(force=True)
    while state.worker is first:  # its old worker stops
        await state.changed.wait()
    assert state.status in (Status.LOADING, Status.LOADED)  # not left unloaded
    await asyncio.wait_for(loaded(state), 10)
    assert state.worker is not first and state.load_reason == "preload"
    assert state.worker is not None and state.worker.engine.words == ["three", "four", "five"]
