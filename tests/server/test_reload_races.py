"""What a reload must carry over and what it must not break (server/reload.py, reload.py,
lifecycle/reconfigure.py): requests waiting or in flight, loads under way, the memory budget,
pins, a request's own keep-alive, prices in the keys' spend, workers of a broken path, the
breakers shared through Redis, a `--workers` process started after a reload. On the
in-process harness of test_reload.py (fake engine, milliseconds) unless marked `real`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import redis.asyncio as redis
import yaml

from inproc import InProcessPool, InProcessWorker
from llm_router.engines import LoadSpec
from llm_router.routing.breaker import BreakerConfig
from llm_router.routing.shared_breakers import STATE
from server.test_reload import Reloadable, served
from server.test_workers import (
    _add_stub_two,
    _gateway_config,
    _models_seen,
    _pids,
    _routers,
    _Stub,
    _two_routers,
    _wait,
)

GiB = 2**30


@pytest.fixture
def conf(tmp_path: Path) -> Reloadable:
    (tmp_path / "empty").mkdir()
    return Reloadable(tmp_path)


def _available(values: list[int]) -> Any:
    """A psutil.virtual_memory whose `available` is `values[0]` (the test changes it)."""
    return lambda: SimpleNamespace(available=values[0], total=64 * GiB)


async def test_a_reload_that_leaves_memory_budget_alone_keeps_the_budget(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # memory_budget "80%" (the default) is of the RAM available at start. While serving, the
    # loaded models hold part of it: a reload that changes only a route must not shrink the
    # budget by 80% of what the models hold (each reload again), evicting them.
    available = [16 * GiB]
    monkeypatch.setattr(psutil, "virtual_memory", _available(available))
    conf.write({"chat": {}, "other": {}}, memory_budget="80%")
    async with served(conf) as r:
        before = (await r.client.get("/models")).json()["memory_budget_bytes"]
        assert before == int(16 * GiB * 0.8)
        assert (await r.chat("chat")).status_code == 200
        available[0] = 10 * GiB  # the loaded model (and the OS) hold 6 GiB now
        conf.write(
            {"chat": {}, "other": {}},
            memory_budget="80%",
            routes=[{"name": "auto", "targets": ["chat", "other"]}],
        )
        assert (await r.reload())["applied"] == ["routes"]
        after = (await r.client.get("/models")).json()["memory_budget_bytes"]
        assert after == before


async def test_a_pinned_model_whose_options_changed_is_loaded_again(conf: Reloadable) -> None:
    # pin: loaded at start and never unloaded. A reload that changes its engine options
    # unloads it to load it with them; it must come back, not wait for a request.
    conf.write({"chat": {"pin": True, "context_size": 512}, "other": {}})
    async with served(conf) as r:
        await r.wait_status("chat", "loaded")
        conf.write({"chat": {"pin": True, "context_size": 1024}, "other": {}})
        assert (await r.reload())["unloaded"] == ["chat"]
        manager = r.app.state.manager
        for _ in range(200):  # unloaded, then loaded again by itself, with the new options
            worker = manager.resolve("chat").worker
            if worker is not None and worker.info["context_size"] == 1024:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the pinned model did not come back")
        await r.wait_status("chat", "loaded")


async def test_key_spend_follows_the_prices_of_a_reloaded_configuration(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README: a reload applies the models' prices. Budgets and /admin/usage are the
    # gateway's spend, which must use them too (not the prices read at start).
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-master-for-tests")
    master = {"authorization": "Bearer sk-master-for-tests"}
    data = str(conf.folder / "data")
    conf.write({"chat": {}}, data_dir=data)
    async with served(conf) as r:
        made = await r.client.post("/admin/keys", json={"name": "metered"}, headers=master)
        assert made.status_code == 201, made.text
        key = {"authorization": f"Bearer {made.json()['key']}"}
        conf.write({"chat": {"cost": {"input": 1_000_000.0, "output": 1_000_000.0}}}, data_dir=data)
        assert (await r.client.post("/admin/reload", headers=master)).status_code == 200
        body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        served_ = await r.client.post("/v1/chat/completions", json=body, headers=key)
        assert served_.status_code == 200, served_.text
        tokens = served_.json()["usage"]["total_tokens"]
        assert r.app.state.gateway.spent("metered") == pytest.approx(tokens)


class RecordingPool(InProcessPool):
    """The in-process pool, remembering every worker it started."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[InProcessWorker] = []

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        worker = await super().start(engine, spec, **kwargs)
        self.started.append(worker)
        return worker


async def test_a_loaded_model_whose_path_breaks_and_is_fixed_leaves_no_worker_behind(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A typo in a loaded model's `path`, reloaded, then fixed and reloaded: the worker started
    # from the old path must be stopped, not left running (holding its memory, counted
    # nowhere) while the next request starts another one.
    pool = RecordingPool()
    monkeypatch.setattr("server.test_reload.InProcessPool", lambda: pool)
    conf.write({"chat": {}})
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200
        good = conf.models["chat"].path
        conf.write({"chat": {"path": str(conf.folder / "typo.json")}})
        await r.reload()
        await r.wait_status("chat", "error")  # once its worker is stopped
        conf.write({"chat": {"path": str(good)}})
        await r.reload()
        assert (await r.chat("chat")).status_code == 200
        assert len(pool.started) == 2
        first, second = pool.started
        assert r.app.state.manager.resolve("chat").worker is second
        assert first.stopping, "the worker of the old path is still running"


async def test_requests_queued_for_a_removed_model_do_not_load_it_again(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `chat` (one slot) is busy and a request waits for it; a reload removes `chat`. Once the
    # busy request ends, the waiting one must not load the removed model again, outside the
    # registry (not listed, not counted against the limits, not stopped at shutdown).
    pool = RecordingPool()
    monkeypatch.setattr("server.test_reload.InProcessPool", lambda: pool)
    conf.write({"chat": {"parallel": 1}, "other": {}})
    async with served(conf) as r:
        manager = r.app.state.manager
        async with manager.lease("chat"):
            waiting = asyncio.create_task(r.chat("chat"))
            for _ in range(100):
                if manager.resolve("chat").waiters:
                    break
                await asyncio.sleep(0.01)
            assert manager.resolve("chat").waiters
            conf.write({"other": {}})
            assert (await r.reload())["unloaded"] == ["chat"]
        response = await asyncio.wait_for(waiting, 5)
        assert await r.names() == {"other"}
    started = len(pool.started)
    left = [w for w in pool.started if not w.stopping]
    assert started == 1 and not left, (
        f"the removed model was loaded again for the waiting request (answered "
        f"{response.status_code}); {len(left)} worker(s) still running after shutdown"
    )


class GatedPool(RecordingPool):
    """A pool whose loads wait for `gate`: a model stays `loading` until the test opens it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        await self.gate.wait()
        return await super().start(engine, spec, **kwargs)


async def test_a_model_loading_when_its_options_change_serves_with_the_new_ones(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = GatedPool()
    monkeypatch.setattr("server.test_reload.InProcessPool", lambda: pool)
    conf.write({"chat": {"context_size": 512}})
    async with served(conf) as r:
        waiting = asyncio.create_task(r.chat("chat"))
        await r.wait_status("chat", "loading")
        conf.write({"chat": {"context_size": 1024}})
        assert (await r.reload())["unloaded"] == ["chat"]
        pool.gate.set()
        assert (await asyncio.wait_for(waiting, 5)).status_code == 200
        (worker,) = pool.started
        assert worker.info["context_size"] == 1024


async def test_a_lower_models_max_evicts_a_busy_model_once_it_is_idle(conf: Reloadable) -> None:
    conf.write({"chat": {}, "other": {}}, models_max=2)
    async with served(conf) as r:
        manager = r.app.state.manager
        async with manager.lease("chat"), manager.lease("other"):
            conf.write({"chat": {}, "other": {}}, models_max=1)
            await r.reload()
            await asyncio.sleep(0.05)
            assert [await r.status("chat"), await r.status("other")] == ["loaded", "loaded"]
        # `other`, released first (while `chat` was still busy), went once idle
        await r.wait_status("other", "unloaded")
        assert await r.status("chat") == "loaded"
        assert (await r.chat("chat")).status_code == 200


async def test_a_model_a_lower_budget_leaves_too_big_refuses_new_requests_at_once(
    conf: Reloadable,
) -> None:
    """A reload lowers memory_budget below a busy model's size (~340 MiB in a 300 MiB budget,
    as found from outside): it drains, its running request finishes, and a new request gets
    the 507 a model bigger than the budget gets, at once; it waited out queue_timeout for a
    503 server_busy with Retry-After, though no retry could help."""
    big = {"chat": {"pin": False}}
    conf.models["chat"].path.write_text('{"reply": "hi", "estimate_mb": 320}')  # no rss here
    conf.write(big, memory_budget="900MiB", queue_timeout=2)
    async with served(conf) as r:
        manager = r.app.state.manager
        async with manager.lease("chat") as worker:  # a request running
            conf.write(big, memory_budget="300MiB", queue_timeout=2)
            await r.reload()
            response = await r.chat("chat")
            assert response.status_code == 507, response.text
            assert response.json()["error"]["code"] == "insufficient_memory"
            assert "retry-after" not in response.headers
            assert await r.status("chat") == "loaded" and not worker.exited.is_set()
        await r.wait_status("chat", "unloaded")  # its drain is over once it is idle
        assert (await r.chat("chat")).status_code == 507


@pytest.fixture
def stub() -> Iterator[_Stub]:
    """The stub upstream of test_workers.py."""
    s = _Stub()
    yield s
    s.stop()


@pytest.mark.real
def test_a_router_process_restarted_after_a_reload_serves_the_reloaded_configuration(
    tmp_path: Path, redis_url: str, stub: _Stub
) -> None:
    """`serve --workers 2`: after a reload, a router process that dies is replaced by one
    that reads the configuration again (the others' settings), not the one of the start."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url)
    both = {frozenset({"stub", "stub-two"})}
    with _two_routers(config, tmp_path) as (proc, url):
        _add_stub_two(tmp_path, config)
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _models_seen(url, 16) == both)
        victim = min(_routers(proc.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # its replacement answers too
            with_new: set[int] = set()
            try:
                routers = _routers(proc.pid) - {victim}
                with_new = set(_pids(url, 8)) if len(routers) == 2 else set()
            except psutil.Error:
                pass  # the victim, a zombie for a moment
            if len(with_new) == 2 and with_new == routers:
                break
            assert time.monotonic() < deadline, "no replacement answered"
            time.sleep(0.1)
        assert _models_seen(url, 24) == both


async def test_a_reload_keeps_the_keep_alive_a_request_asked_for(conf: Reloadable) -> None:
    # A request's own keep_alive (up to keep_alive_max) keeps its model loaded that long; a
    # reload that changes nothing about keep-alive (here: a new route) must not cut it back
    # to the configured default.
    conf.write({"chat": {}}, keep_alive="5m", keep_alive_max="2h")
    async with served(conf) as r:

        async def until() -> float:
            models = (await r.client.get("/models")).json()["data"]
            value: float = next(m for m in models if m["id"] == "chat")["keep_alive_until"]
            return value

        assert (await r.chat("chat", keep_alive="1h")).status_code == 200
        asked = await until()
        assert asked > time.time() + 30 * 60
        conf.write(
            {"chat": {}},
            keep_alive="5m",
            keep_alive_max="2h",
            routes=[{"name": "auto", "targets": ["chat"]}],
        )
        assert (await r.reload())["applied"] == ["routes"]
        assert await until() > time.time() + 30 * 60, "the requested hour became 5 minutes"


@pytest.mark.real  # a Redis server
async def test_failures_at_a_dropped_address_do_not_open_the_new_one_in_other_routers(
    conf: Reloadable, redis_url: str
) -> None:
    # A remote target moved to another address (say, off a failing server): requests still
    # in flight to the old address fail and open the old target's breaker. That breaker is
    # no longer this router's; it must not tell the other routers (Redis, BreakerSync) that
    # the target of that name is failing, as they would then skip its new address.
    name = f"far-{uuid.uuid4().hex[:8]}"
    remote = {"id": name, "provider": "openai", "model": "m", "health_check_interval": 0}
    conf.write({"chat": {}}, redis_url=redis_url)
    text = yaml.safe_load(conf.path.read_text())
    text["models"].append({**remote, "base_url": "http://127.0.0.1:9/v1"})
    conf.path.write_text(yaml.safe_dump(text))
    async with served(conf) as r:
        dispatcher = r.app.state.dispatcher
        old = dispatcher.target(name)
        text["models"][-1]["base_url"] = "http://127.0.0.1:10/v1"
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        assert dispatcher.target(name) is not old
        for _ in range(BreakerConfig().failure_threshold):
            old.breaker.record_failure()
        assert str(old.breaker.state) == "open"
        store = redis.Redis.from_url(redis_url)
        try:
            for _ in range(50):  # what the next router to start (or catch up) would adopt
                shared = await store.get(STATE + name)
                if shared is not None:
                    break
                await asyncio.sleep(0.01)
        finally:
            await store.aclose()
        assert shared is None, "the old address's breaker opened the target everywhere"
        assert str(dispatcher.target(name).breaker.state) == "closed"


async def test_an_alias_that_moves_and_an_id_that_turns_remote_are_served_by_their_new_owner(
    conf: Reloadable,
) -> None:
    conf.write({"chat": {"aliases": ["c"]}, "other": {}})
    async with served(conf) as r:
        assert (await r.chat("c")).headers["x-llm-router-model"] == "chat"
        assert (await r.chat("other")).status_code == 200
        conf.write({"chat": {}, "other": {"aliases": ["c"]}})
        assert (await r.reload())["unloaded"] == []
        assert (await r.chat("c")).headers["x-llm-router-model"] == "other"

        conf.write({"chat": {"aliases": ["c"]}})
        text = yaml.safe_load(conf.path.read_text())
        remote = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
        text["models"].append({"id": "other", **remote})
        conf.path.write_text(yaml.safe_dump(text))
        assert (await r.reload())["unloaded"] == ["other"]  # a local model no more
        assert (await r.chat("c")).headers["x-llm-router-model"] == "chat"
        assert type(r.app.state.dispatcher.target("other")).__name__ == "RemoteTarget"
        assert await r.names() == {"chat", "other"}


class MeasuredPool(RecordingPool):
    """Workers whose measured memory grows with their context (1 MiB a token), as a real
    engine's KV cache does."""

    async def start(  # type: ignore[override]
        self, engine: str, spec: LoadSpec, **kwargs: Any
    ) -> InProcessWorker:
        worker = await super().start(engine, spec, **kwargs)
        size = int(spec.options.get("context_size") or 2048) * 2**20
        worker.rss = lambda: size  # type: ignore[method-assign]
        return worker


async def test_a_model_reloaded_with_smaller_options_is_not_refused_by_its_old_size(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loaded with a 4096-token context it measured 4 GiB. The user makes it fit a smaller
    # budget: context 512 and memory_budget 2 GiB. It is unloaded to load with the new
    # options; that load must not be refused for the size it had with the old ones.
    pool = MeasuredPool()
    monkeypatch.setattr("server.test_reload.InProcessPool", lambda: pool)
    conf.write({"chat": {"context_size": 4096}}, memory_budget="6GiB")
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200
        conf.write({"chat": {"context_size": 512}}, memory_budget="2GiB")
        assert (await r.reload())["unloaded"] == ["chat"]
        await r.wait_status("chat", "unloaded")
        response = await r.chat("chat")
        assert response.status_code == 200, response.text
        assert r.app.state.manager.resolve("chat").worker.info["context_size"] == 512


async def test_a_removed_model_still_serving_counts_against_the_limits_until_it_is_gone(
    conf: Reloadable,
) -> None:
    """`models_max: 1`: a reload removes `chat` while a request holds it. Its worker serves
    on until that request ends, so `other` waits for it instead of loading beside it."""
    conf.write({"chat": {}, "other": {}}, models_max=1)
    async with served(conf) as r:
        manager = r.app.state.manager
        async with manager.lease("chat"):
            conf.write({"other": {}}, models_max=1)
            assert (await r.reload())["unloaded"] == ["chat"]
            other = asyncio.create_task(r.chat("other"))
            await r.wait_status("other", "waiting")
            await asyncio.sleep(0.05)
            assert await r.status("other") == "waiting"
        assert (await asyncio.wait_for(other, 5)).status_code == 200
        assert manager.registry.leaving == set()  # chat's worker is gone, no longer counted
