"""Reloads and scans that break or fix a model's files or options while it loads, waits for
room or serves: what it shows, that nothing loads a broken file or leaks a worker; pins,
keep-alive caps and percentage budgets across reloads. On the in-process harness of
test_reload.py (fake engine, milliseconds)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from inproc import InProcessPool, InProcessWorker
from llm_router.engines import LoadSpec
from llm_router.errors import ModelLoadFailed
from llm_router.lifecycle.manager import ModelManager
from llm_router.reload import ConfigSource
from server.test_reload import Reloadable, served

GiB = 2**30


@pytest.fixture
def conf(tmp_path: Path) -> Reloadable:
    (tmp_path / "empty").mkdir()
    return Reloadable(tmp_path)


class GatedPool(InProcessPool):
    """Loads wait for `gate`; every load the manager starts is counted, with its path."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.attempts: list[str] = []

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        self.attempts.append(spec.path)
        await self.gate.wait()
        return await super().start(engine, spec, **kwargs)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> GatedPool:
    """The app's pool is a GatedPool whose loads wait (`gate` closed) until the test opens
    it."""
    gated = GatedPool()
    gated.gate.clear()
    monkeypatch.setattr("server.test_reload.InProcessPool", lambda: gated)
    return gated


async def _settle() -> None:
    """Let the tasks the manager spawned run (a cancelled load, an unload, a new load)."""
    for _ in range(20):
        await asyncio.sleep(0.005)


async def _models(r: Reloadable) -> dict[str, Any]:
    return {m["id"]: m for m in (await r.client.get("/models")).json()["data"]}


async def test_a_model_whose_file_goes_while_it_loads_shows_its_error(
    conf: Reloadable, pool: GatedPool
) -> None:
    # The models-directory watch (no reload): `chat` is loading (POST /models/load) when its
    # file is deleted. Its load is cancelled; it must then show the file's error, as a loaded
    # or an unloaded model does, not `unloaded` (which invites another load of nothing).
    conf.write({"chat": {}})
    async with served(conf) as r:
        manager = r.app.state.manager
        manager.request_load("chat")
        await r.wait_status("chat", "loading")
        conf.models["chat"].path.unlink()  # type: ignore[union-attr]
        manager.refresh(force=True)
        await _settle()  # the load is cancelled before its worker starts
        pool.gate.set()
        await _settle()
        chat = (await _models(r))["chat"]
        assert chat["status"]["value"] == "error", chat["status"]
        assert "does not exist" in str(chat["status"]), chat["status"]


async def test_a_pinned_model_whose_path_breaks_while_it_loads_shows_its_error(
    conf: Reloadable, pool: GatedPool
) -> None:
    # The same through a reload: a pinned `chat`, loading, gets a typo in its path. Its load
    # is cancelled and _then_reload's request_load refuses the broken path (suppressed): it
    # stays `unloaded` with no word of the typo.
    conf.write({"chat": {"pin": True}})
    async with served(conf) as r:
        await r.wait_status("chat", "loading")
        conf.write({"chat": {"pin": True, "path": str(conf.folder / "typo.json")}})
        assert (await r.reload())["unloaded"] == ["chat"]
        await _settle()
        pool.gate.set()
        await _settle()
        chat = (await _models(r))["chat"]
        assert chat["status"]["value"] == "error", chat["status"]


async def test_a_request_waiting_for_a_load_whose_file_goes_is_told_so_without_a_new_load(
    conf: Reloadable, pool: GatedPool
) -> None:
    # A request waits for `chat`'s load when the file is deleted (the watch). It must get the
    # file's error; the manager must not start a second load of a path that does not exist.
    conf.write({"chat": {}})
    async with served(conf) as r:
        manager = r.app.state.manager
        waiting = asyncio.create_task(r.chat("chat"))
        await r.wait_status("chat", "loading")
        conf.models["chat"].path.unlink()  # type: ignore[union-attr]
        manager.refresh(force=True)
        await _settle()
        pool.gate.set()
        response = await asyncio.wait_for(waiting, 5)
        assert response.status_code != 200
        assert "does not exist" in response.text, response.text
        assert len(pool.attempts) == 1, f"{len(pool.attempts)} loads of a missing file"


async def test_a_model_waiting_for_room_whose_file_goes_is_not_loaded_later(
    conf: Reloadable, pool: GatedPool
) -> None:
    # models_max 1: `chat` is busy, `other` waits for room (admission queue). `other`'s file is
    # deleted (the watch): it shows its error, and the waiting request fails. Once `chat` is
    # idle, the manager must not evict it to start a load of the file that is gone.
    # (Not new in 1fad797: registry.refresh applies the error to a `waiting` model in place.)
    pool.gate.set()
    conf.write({"chat": {}, "other": {}}, models_max=1, drain_after=3600)
    async with served(conf) as r:
        manager = r.app.state.manager
        async with manager.lease("chat"):
            waiting = asyncio.create_task(r.chat("other"))
            await r.wait_status("other", "waiting")
            conf.models["other"].path.unlink()  # type: ignore[union-attr]
            manager.refresh(force=True)
            response = await asyncio.wait_for(waiting, 5)
            assert response.status_code != 200
        await _settle()
        models = await _models(r)
        assert models["other"]["status"]["value"] == "error", models["other"]["status"]
        assert models["chat"]["status"]["value"] == "loaded", "evicted for a load of nothing"
        assert len(pool.attempts) == 1, f"{len(pool.attempts)} loads, one of a missing file"


class PickyPool(InProcessPool):
    """An engine that refuses a 512-token context (as a real one refuses options it cannot
    honour: a context over the model's, GPU layers with no GPU...)."""

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        if spec.options.get("context_size") == 512:
            raise ModelLoadFailed("context_size 512 refused")
        return await super().start(engine, spec, **kwargs)


async def test_a_pinned_model_whose_failed_options_a_reload_fixes_loads_at_once(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pinned model loads at start and stays loaded. Its options make the load fail; the
    # user fixes them and reloads. The reload clears the sticky error (the options changed)
    # but does not load it: a pinned model sits in `error` until a request comes.
    monkeypatch.setattr("server.test_reload.InProcessPool", PickyPool)
    conf.write({"chat": {"pin": True, "context_size": 512}})
    async with served(conf) as r:
        await r.wait_status("chat", "error")
        conf.write({"chat": {"pin": True, "context_size": 1024}})
        await r.reload()
        await r.wait_status("chat", "loaded")


async def _keep_alive_until(r: Reloadable, model: str) -> float | None:
    value: float | None = (await _models(r))[model]["keep_alive_until"]
    return value


async def test_a_pin_turned_off_by_a_reload_starts_the_idle_timer(conf: Reloadable) -> None:
    # Checked correct: the keep-alive rule includes `pin`, so an idle model unpinned by a
    # reload gets its unload timer (and one pinned again loses it).
    conf.write({"chat": {"pin": True}}, keep_alive="5m")
    async with served(conf) as r:
        await r.wait_status("chat", "loaded")
        assert await _keep_alive_until(r, "chat") is None
        conf.write({"chat": {}}, keep_alive="5m")
        await r.reload()
        until = await _keep_alive_until(r, "chat")
        assert until is not None and until < time.time() + 6 * 60
        conf.write({"chat": {"pin": True}}, keep_alive="5m")
        await r.reload()
        assert await _keep_alive_until(r, "chat") is None


async def test_a_lower_keep_alive_max_caps_what_a_request_asked_for(conf: Reloadable) -> None:
    # A request's keep_alive is capped by keep_alive_max, a live setting. The operator lowers
    # the cap to 5 minutes (to get memory back): the model a request asked to keep for an
    # hour must not stay loaded for that hour. 1fad797 keeps idle timers unless the "idle
    # rule" changed, and the rule leaves keep_alive_max out.
    conf.write({"chat": {}}, keep_alive="1m", keep_alive_max="2h")
    async with served(conf) as r:
        assert (await r.chat("chat", keep_alive="1h")).status_code == 200
        until = await _keep_alive_until(r, "chat")
        assert until is not None and until > time.time() + 30 * 60
        conf.write({"chat": {}}, keep_alive="1m", keep_alive_max="5m")
        assert (await r.reload())["applied"] == ["keep_alive_max"]
        until = await _keep_alive_until(r, "chat")
        assert until is not None and until <= time.time() + 5 * 60 + 5, (
            f"unloads in {(until or 0) - time.time():.0f} s, over the 300 s cap"
        )


async def test_closing_right_after_a_reload_stops_the_removed_models_worker(
    conf: Reloadable,
) -> None:
    # A reload removes the loaded `chat` and the server shuts down at once (before the
    # unload task has run once). close() cancels that task before it starts, so _stop's new
    # `except CancelledError: await worker.stop()` never runs, and close() stops only the
    # workers of models still in the registry: `chat`'s worker is left running.
    conf.write({"chat": {}, "other": {}})
    source = ConfigSource(conf.path)
    settings = source.load()
    manager = ModelManager(settings, pool=InProcessPool())
    await manager.start()
    try:
        async with manager.lease("chat") as worker:
            pass
        conf.write({"other": {}})
        assert manager.reconfigure(source.load()) == ["chat"]
    finally:
        await manager.close()
    assert worker.stopping, "the removed model's worker outlived close()"


class MappedPool(InProcessPool):
    """Workers that measure 4 GiB: a model whose weights llama.cpp maps from its file (the
    default `load_mode`). Mapped file pages count in the worker's RSS and, being page cache
    the kernel can reclaim, in psutil's `available` too: mapping and touching 256 MiB of a
    file here raised RSS by 256 MiB and lowered `available` by 0."""

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        worker = await super().start(engine, spec, **kwargs)
        worker.rss = lambda: 4 * GiB  # type: ignore[method-assign]
        return worker


async def test_a_percentage_budget_set_by_a_reload_does_not_count_mapped_weights_twice(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 GiB available (the mapped weights of the loaded model still in it). A reload sets
    # memory_budget 50%: 8 GiB, as a start with the same machine would give. reconfigure
    # takes 50% of available + memory_used(), i.e. of 16 + 4 GiB: a 10 GiB budget that
    # the machine does not have.
    monkeypatch.setattr(
        psutil,
        "virtual_memory",
        lambda: SimpleNamespace(available=16 * GiB, total=32 * GiB),
    )
    monkeypatch.setattr("server.test_reload.InProcessPool", MappedPool)
    conf.write({"chat": {}}, memory_budget="80%")
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200
        conf.write({"chat": {}}, memory_budget="50%")
        assert (await r.reload())["applied"] == ["memory_budget"]
        budget = (await r.client.get("/models")).json()["memory_budget_bytes"]
        assert budget == 8 * GiB, f"{budget / GiB:g} GiB"


async def test_a_request_waiting_for_a_load_the_reload_removes_gets_a_404(
    conf: Reloadable, pool: GatedPool
) -> None:
    # Checked correct: the load is cancelled, the waiting request is told the model is gone
    # (ModelNotFound from _acquire's new `holds` check), nothing loads it again.
    conf.write({"chat": {"aliases": ["c"]}, "other": {}})
    async with served(conf) as r:
        waiting = asyncio.create_task(r.chat("c"))
        await r.wait_status("chat", "loading")
        conf.write({"other": {}})
        assert (await r.reload())["unloaded"] == ["chat"]
        response = await asyncio.wait_for(waiting, 5)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "model_not_found"
        pool.gate.set()
        await _settle()
        assert pool.attempts == [str(conf.models["chat"].path)]
        assert await r.names() == {"other"}
