"""What the directory watcher does to a loaded model whose file changes (manager.refresh), on
the fake engine in this process (tests/inproc.py): fast, and the manager's real decisions."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sim import SimPool, run_virtual

from inproc import InProcessPool
from llm_router.config import ModelConfig, Settings
from llm_router.lifecycle.estimate import DEFAULT_BASE
from llm_router.lifecycle.manager import ModelManager
from llm_router.lifecycle.state import ModelState, Status
from llm_router.types import Finished, GenerationRequest, SamplingParams

pytestmark = pytest.mark.timeout(30)
MiB = 2**20


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[ModelManager]:
    (tmp_path / "m.json").write_text(json.dumps({"reply": "one two", "token_seconds": 0.002}))
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


async def compared(manager: ModelManager) -> None:
    """Until the manager has compared the bytes of the touched files (in a thread)."""
    for _ in range(1000):
        if not manager.registry.touched:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the touched files were never compared")


async def test_a_file_touched_with_the_same_bytes_keeps_its_model_serving(
    manager: ModelManager, tmp_path: Path
) -> None:
    """`touch` (a new mtime, the same bytes: `rsync -t`, a backup tool) unloaded the model,
    cutting its streams, and left a pinned one unloaded (found from outside). Its bytes are
    compared with its worker's first: the same, and it serves on, with its new identity."""
    path = tmp_path / "m.json"
    state = manager.registry["m"]
    await asyncio.wait_for(loaded(state), 10)
    assert state.loaded_content is not None
    await state.loaded_content  # hashed as loaded (a touch before then is taken for a change)
    worker = state.worker
    request = GenerationRequest(SamplingParams(max_tokens=40), prompt="go")
    async with manager.lease("m") as leased:
        events = leased.generate(request)
        await anext(events)  # generating
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        manager.refresh(force=True)
        assert state.status == Status.LOADED
        await compared(manager)
        rest = [event async for event in events]
    assert isinstance(rest[-1], Finished) and rest[-1].finish_reason == "length"
    assert state.status == Status.LOADED and state.worker is worker
    assert state.source.identity.mtime_ns == path.stat().st_mtime_ns
    manager.refresh(force=True)  # the new identity is its own now: nothing to compare
    assert not manager.registry.touched and state.worker is worker


async def test_a_file_rewritten_to_the_same_size_is_a_change(
    manager: ModelManager, tmp_path: Path
) -> None:
    """Same size, new mtime, other bytes (a fine-tune of the same shapes): unloaded, and the
    pinned model loads the new bytes."""
    path = tmp_path / "m.json"
    state = manager.registry["m"]
    await asyncio.wait_for(loaded(state), 10)
    first = state.worker
    stat = path.stat()
    path.write_text(path.read_text().replace("one two", "six ten"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert path.stat().st_size == stat.st_size
    manager.refresh(force=True)
    assert state.status == Status.LOADED and state.worker is first  # compared first
    await compared(manager)
    await asyncio.wait_for(loaded(state), 10)
    assert state.worker is not None and state.worker is not first
    assert state.worker.engine.words == ["six", "ten"]


def test_a_file_replaced_by_a_bigger_model_is_planned_with_its_new_estimate(
    tmp_path: Path,
) -> None:
    """`b`'s file is replaced by a bigger model while `a` and `b` are loaded. Its old worker's
    last memory snapshot (sent as it stops) put the old file's measurement back, and the new
    file's load was planned with it: it loaded beside `a`, which it does not fit with, and
    `a` was evicted only after (found from outside). Planned with the new file's estimate,
    `a` leaves first. On simulated time (sim.py)."""
    a = {"ballast_mb": 100, "token_seconds": 0.01}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(a))
    entries = [ModelConfig(id=m, path=tmp_path / f"{m}.json", engine="fake") for m in ("a", "b")]
    settings = Settings(
        models_dir=tmp_path / "none",
        models=entries,
        watch_interval=0,
        provision_default_models=False,
        spare_workers=False,
        memory_budget=450 * MiB,  # a and b as they were (196 MiB each), not a and b now
    )
    beside: list[str] = []  # the statuses of `a` when `b` starts loading

    async def main() -> int:
        manager = ModelManager(settings, pool=SimPool())

        def seen(event: dict[str, Any]) -> None:
            if event["event"] == "loading" and event["model"] == "b":
                beside.append(manager.registry["a"].status.value)

        manager.events.add_listener(seen)
        await manager.start()
        try:
            for model in ("a", "b"):
                async with manager.lease(model):
                    pass
            bigger = {"ballast_mb": 250, "token_seconds": 0.01, "bigger": True}
            (tmp_path / "b.json").write_text(json.dumps(bigger))
            manager.refresh(force=True)
            b = manager.registry["b"]
            while b.status != Status.UNLOADED:
                await b.changed.wait()
            estimate = manager.snapshot(b).estimate_bytes
            async with manager.lease("b"):
                pass
            return estimate
        finally:
            await manager.close()

    estimate = run_virtual(main)
    assert estimate == DEFAULT_BASE + 250 * MiB
    assert beside == ["loaded", "unloaded"]  # at its first load, then at the new file's
