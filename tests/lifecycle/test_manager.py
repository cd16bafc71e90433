"""The lifecycle manager's effects, with real worker processes running the fake engine.

Each test builds its own manager over JSON "model" files in tmp_path, and the fixture closes it
and checks that no worker process outlives it. Waits are bounded by `asyncio.wait_for`; the only
timing assertions are generous upper bounds that catch hangs."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from llm_router.config import ModelConfig, Settings
from llm_router.errors import (
    EngineError,
    InsufficientMemory,
    LoadInterrupted,
    ModelLoadFailed,
    ModelNotLoaded,
    QueueFull,
    RateLimited,
    ServerBusy,
    WorkerDied,
)
from llm_router.lifecycle.manager import ModelManager
from llm_router.lifecycle.registry import RESIDENT
from llm_router.lifecycle.state import EventBus, ModelState, Status
from llm_router.lifecycle.stops import RESTART_AFTER
from llm_router.logs import JsonFormatter
from llm_router.types import Finished, GenerationRequest, SamplingParams, TextDelta
from llm_router.worker import spawn
from llm_router.worker.pool import WorkerPool

pytestmark = [pytest.mark.timeout(60), pytest.mark.real]  # real worker processes (the fake engine)

MiB = 2**20
T = TypeVar("T")
REPLY = "w1 w2 w3 w4 w5"


async def bounded(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def fake_model(
    tmp_path: Path, model_id: str, *, config: dict[str, Any] | None = None, **behaviour: Any
) -> ModelConfig:
    """A `models:` entry for a fake-engine model whose file holds `behaviour`."""
    path = tmp_path / f"{model_id}.json"
    path.write_text(json.dumps({"token_seconds": 0.01, "reply": REPLY, **behaviour}))
    return ModelConfig(id=model_id, path=path, engine="fake", **(config or {}))


class Events:
    """Every event the manager publishes, collected as they come."""

    def __init__(self, manager: ModelManager) -> None:
        self._queue = manager.events.subscribe()
        self._seen: list[dict[str, Any]] = []

    def all(self, event: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        while not self._queue.empty():
            self._seen.append(self._queue.get_nowait())
        return [
            e
            for e in self._seen
            if (event is None or e["event"] == event) and (model is None or e["model"] == model)
        ]

    def count(self, event: str, model: str | None = None) -> int:
        return len(self.all(event, model))


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.managers: list[ModelManager] = []
        self.pids: set[int] = set()

    async def manager(self, models: list[ModelConfig], **settings: Any) -> ModelManager:
        options: dict[str, Any] = {
            "models_dir": self.tmp_path,
            "models": models,
            "watch_interval": 0,
            "provision_default_models": False,
            "memory_budget": "2GiB",
            **settings,
        }
        manager = ModelManager(Settings(**options))
        self.managers.append(manager)
        await manager.start()
        return manager

    async def generate(
        self,
        manager: ModelManager,
        model: str,
        max_tokens: int = 3,
        *,
        started: asyncio.Event | None = None,
        **lease: Any,
    ) -> tuple[str, Finished, int]:
        """One request through a lease: the text, how it finished and the worker's pid."""
        request = GenerationRequest(SamplingParams(max_tokens=max_tokens), prompt="say it")
        text = ""
        finished: Finished | None = None
        async with manager.lease(model, **lease) as worker:
            self.pids.add(worker.pid)
            async for event in worker.generate(request):
                if isinstance(event, TextDelta):
                    text += event.text
                    if started is not None:
                        started.set()
                else:
                    finished = event
        assert finished is not None
        return text, finished, worker.pid

    def record(self, state: ModelState) -> None:
        if state.worker is not None:
            self.pids.add(state.worker.pid)


def _worker_children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children():  # ours only, not a shared server's workers
        try:
            if "llm_router.worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited (or became a zombie) while we looked
            continue
    return found


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        for manager in h.managers:
            for state in manager.states():
                h.record(state)
            await bounded(manager.close())
        gc.collect()  # an unclosed worker channel warns here, in the test that leaked it
    assert [pid for pid in h.pids if psutil.pid_exists(pid)] == []
    assert _worker_children() == []


async def until(predicate: Any, seconds: float = 5.0) -> None:
    """Poll `predicate()` until true; fails after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def expected(n: int) -> str:
    words = REPLY.split()
    return " ".join(words[i % len(words)] for i in range(n))


# -- loading -----------------------------------------------------------------------------------


async def test_concurrent_requests_share_one_load(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", load_seconds=0.3, parallel=4)])
    events = Events(manager)
    results = await bounded(asyncio.gather(*(harness.generate(manager, "a") for _ in range(10))))
    assert [text for text, _, _ in results] == [expected(3)] * 10
    assert {finished.finish_reason for _, finished, _ in results} == {"length"}
    assert len({pid for _, _, pid in results}) == 1
    assert events.count("loading", "a") == 1
    assert events.count("loaded", "a") == 1
    assert manager.resolve("a").status == Status.LOADED


async def test_load_nobody_waits_for_still_completes(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", load_seconds=0.5)])
    task = asyncio.create_task(harness.generate(manager, "a"))
    state = manager.resolve("a")
    await bounded(until(lambda: state.status == Status.LOADING))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.waiting == 0
    await bounded(until(lambda: state.status == Status.LOADED))
    harness.record(state)


async def test_autoload_off_is_model_not_loaded(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a")], autoload=False)
    events = Events(manager)
    with pytest.raises(ModelNotLoaded, match="autoload is off"):
        await bounded(harness.generate(manager, "a"))
    with pytest.raises(ModelNotLoaded):
        await bounded(harness.generate(manager, "a", autoload=False))
    assert events.count("loading") == 0
    assert manager.waiting == 0
    # An explicit load makes it servable without autoload.
    manager.request_load("a")
    await bounded(until(lambda: manager.resolve("a").status == Status.LOADED))
    text, _, _ = await bounded(harness.generate(manager, "a"))
    assert text == expected(3)


async def test_failed_load_is_sticky_until_loaded_explicitly(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = fake_model(tmp_path, "a", fail_load=True)
    manager = await harness.manager([cfg])
    events = Events(manager)
    state = manager.resolve("a")
    caplog.set_level(logging.WARNING, logger="llm_router")
    with pytest.raises(ModelLoadFailed, match="told to fail") as raised:
        await bounded(harness.generate(manager, "a"))
    assert state.status == Status.ERROR
    assert state.error is not None and "told to fail" in state.error
    # Clients read the file's name, not where it is; the operator's log has the whole path.
    assert cfg.path is not None and cfg.path.name in state.error
    assert str(cfg.path.parent) not in state.error + raised.value.message
    assert any(str(cfg.path) in r.getMessage() for r in caplog.records)
    assert events.count("error", "a") == 1
    # Later requests fail at once from the recorded error: no second load is attempted.
    for _ in range(3):
        with pytest.raises(ModelLoadFailed, match="told to fail"):
            await bounded(harness.generate(manager, "a"), 2.0)
    assert events.count("loading", "a") == 1
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    # An explicit load retries: still failing, then (file fixed) loaded.
    manager.request_load("a")
    assert state.status == Status.LOADING  # nothing else is loaded: it starts at once
    await bounded(until(lambda: state.status == Status.ERROR))
    assert events.count("loading", "a") == 2
    assert cfg.path is not None
    cfg.path.write_text(json.dumps({"reply": REPLY}))
    manager.request_load("a")
    await bounded(until(lambda: state.status == Status.LOADED))
    text, _, _ = await bounded(harness.generate(manager, "a"))
    assert text == expected(3)
    assert events.count("loading", "a") == 3


async def test_model_bigger_than_budget_is_refused(harness: Harness, tmp_path: Path) -> None:
    """A model whose estimate is over the whole budget is refused before anything loads,
    with both figures in the message."""
    big = fake_model(tmp_path, "a", ballast_mb=300)
    manager = await harness.manager([big], memory_budget="200MiB")
    events = Events(manager)
    with pytest.raises(InsufficientMemory) as caught:
        await bounded(harness.generate(manager, "a"), 2.0)
    need = re.search(r"needs about (\d+) MiB", caught.value.message)
    assert need is not None and int(need.group(1)) >= 300
    assert "budget is 200 MiB" in caught.value.message
    assert events.count("loading") == 0 and events.count("waiting") == 0
    assert manager.waiting == 0


# -- eviction ----------------------------------------------------------------------------------


async def test_busy_model_is_not_evicted(harness: Harness, tmp_path: Path) -> None:
    """llama.cpp #21678: a request for another model must not evict one that is serving; it
    waits until the first request finishes, then evicts it."""
    models = [fake_model(tmp_path, "a"), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=1, drain_after=0)
    events = Events(manager)
    first = await hold(harness, manager, "a")
    second = asyncio.create_task(harness.generate(manager, "b"))
    a, b = manager.resolve("a"), manager.resolve("b")
    await bounded(until(lambda: b.status == Status.WAITING))
    await asyncio.sleep(0.2)
    # b waits for room holding nothing; a, busy, is drained (not cut off) at once, as
    # drain_after is 0 here.
    assert (a.status, b.status) == (Status.LOADED, Status.WAITING)
    assert a.draining
    assert events.count("unloading", "a") == 0
    text_a, _ = await first.finish()  # the first request is served to its end
    assert text_a == expected(3)
    text_b, _, _ = await bounded(second)
    assert text_b == expected(3)
    evicted = events.all("unloaded", "a")
    assert [e["reason"] for e in evicted] == ["evicted to make room for 'b'"]
    assert (a.status, b.status) == (Status.UNLOADED, Status.LOADED)


async def test_a_lowered_models_max_holds_under_steady_traffic(
    harness: Harness, tmp_path: Path
) -> None:
    """A reload to `models_max: 1` evicted only idle models: two models that always had a
    request in flight both stayed loaded, serving new requests, for as long as the traffic
    went on (found from outside). The least recently used busy one drains: it finishes what
    it has, takes nothing new, and goes once idle; its next request loads it back in turn."""
    models = [fake_model(tmp_path, "a"), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=2)
    events = Events(manager)
    first_a = await hold(harness, manager, "a")
    first_b = await hold(harness, manager, "b")
    a, b = manager.resolve("a"), manager.resolve("b")
    manager.reconfigure(manager.settings.model_copy(update={"models_max": 1}))
    assert a.draining and not b.draining  # a was used first: least recently
    later_a = asyncio.create_task(harness.generate(manager, "a"))
    later_b = await hold(harness, manager, "b")  # b still serves new requests
    await asyncio.sleep(0.2)
    assert not later_a.done()  # a takes nothing new
    await first_a.finish()  # a idle: evicted (and waits to load again, for later_a)
    await bounded(until(lambda: events.count("unloaded", "a") == 1))
    assert a.status == Status.WAITING
    reasons = [e["reason"] for e in events.all("unloaded", "a")]
    assert reasons == ["evicted: over the limits (a model went idle or away)"]
    await first_b.finish()
    await later_b.finish()
    text, _, _ = await bounded(later_a)  # then b gives way in turn
    assert text == expected(3)
    assert sum(s.status in RESIDENT for s in manager.states()) == 1


async def test_memory_budget_one_big_or_two_small(harness: Harness, tmp_path: Path) -> None:
    """llama.cpp PR #25326's 100 GB + 29 GB case, scaled down: the budget holds the big model
    alone or both small ones. Alternating requests evict and no request fails."""
    models = [
        fake_model(tmp_path, "big", ballast_mb=300),
        fake_model(tmp_path, "s1", ballast_mb=100),
        fake_model(tmp_path, "s2", ballast_mb=100),
    ]
    budget = 384 * MiB
    manager = await harness.manager(models, memory_budget=budget, models_max=0)
    events = Events(manager)
    loaded_after = []
    for model in ["big", "s1", "s2", "big", "s1", "s2", "big"]:
        text, _, _ = await bounded(harness.generate(manager, model), 15.0)
        assert text == expected(3)
        loaded = {s.id for s in manager.states() if s.status == Status.LOADED}
        loaded_after.append(loaded)
        used = sum(s.memory_bytes or 0 for s in manager.states() if s.status == Status.LOADED)
        assert used <= budget, f"{used / MiB:.0f} MiB loaded in a {budget / MiB:.0f} MiB budget"
    big, small = (manager.resolve(m).measured_bytes or 0 for m in ("big", "s1"))
    assert big <= budget < big + small and 2 * small <= budget, "sizes do not fit the premise"
    assert loaded_after == [{"big"}, {"s1"}, {"s1", "s2"}, {"big"}, {"s1"}, {"s1", "s2"}, {"big"}]
    assert events.count("unloaded", "big") == 2
    assert events.count("unloaded", "s1") == 2
    assert events.count("unloaded", "s2") == 2
    assert all(e["reason"].startswith("evicted") for e in events.all("unloaded"))


async def test_pinned_model_survives_pressure(harness: Harness, tmp_path: Path) -> None:
    """With room for one model and that one pinned, another model can never come in: its
    request and an explicit load of it are refused at once, saying why (they waited out the
    queue timeout for room that only a configuration change can make, an explicit load for
    ever), and the pinned model keeps serving."""
    models = [fake_model(tmp_path, "a", config={"pin": True}), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=1, queue_timeout=30.0)
    events = Events(manager)
    a = manager.resolve("a")
    await bounded(until(lambda: a.status == Status.LOADED))  # pinned: loaded at start
    pid = a.worker.pid if a.worker else 0
    with pytest.raises(InsufficientMemory, match=r"beside the pinned models \(a\)"):
        await bounded(harness.generate(manager, "b"), 5.0)
    with pytest.raises(InsufficientMemory, match="models_max"):
        manager.request_load("b")
    text, _, served_by = await bounded(harness.generate(manager, "a"))
    assert (text, served_by) == (expected(3), pid)
    assert a.status == Status.LOADED and a.worker is not None and a.worker.pid == pid
    assert events.count("unloading", "a") == 0
    assert manager.waiting == 0 and manager.resolve("b").status == Status.UNLOADED


async def test_a_load_that_cannot_fit_beside_a_pin_is_refused_with_other_models_loaded(
    harness: Harness, tmp_path: Path
) -> None:
    """Found from outside: with an unpinned model loaded beside the pinned one, a model that
    fits the budget beside the pin by its file but not by its estimate queued, waited until
    the other model's keep-alive ran out, and held every load queued behind it (503s saying
    to retry). It is refused at once, saying the memory budget is what is short."""
    models = [
        fake_model(tmp_path, "a", ballast_mb=100, config={"pin": True}),
        fake_model(tmp_path, "b", ballast_mb=100),
        fake_model(tmp_path, "c", ballast_mb=300),
    ]
    manager = await harness.manager(
        models, memory_budget=384 * MiB, models_max=0, queue_timeout=30.0
    )
    a = manager.resolve("a")
    await bounded(until(lambda: a.status == Status.LOADED))  # pinned: loaded at start
    await bounded(harness.generate(manager, "b"))  # loaded beside it, then idle
    with pytest.raises(InsufficientMemory, match=r"pinned models \(a\).*memory_budget"):
        await bounded(harness.generate(manager, "c"), 5.0)
    with pytest.raises(InsufficientMemory, match="memory_budget"):
        manager.request_load("c")
    text, _, _ = await bounded(harness.generate(manager, "b"))
    assert text == expected(3) and manager.waiting == 0
    assert manager.resolve("c").status == Status.UNLOADED


async def test_a_pin_still_loading_does_not_refuse_by_its_estimate(
    harness: Harness, tmp_path: Path
) -> None:
    """Found from outside at a cold start: a pinned model still loading counts at its
    estimate (all-MiniLM: 461 MiB estimated, 191 measured), so a model that fits beside what
    it really holds was refused with a 507 saying only a configuration change would help, and
    loaded a second later. It waits for the pin's load, then loads."""
    models = [
        fake_model(
            tmp_path, "a", load_seconds=1.5, ballast_mb=20, estimate_mb=300, config={"pin": True}
        ),
        fake_model(tmp_path, "c", ballast_mb=150),
    ]
    manager = await harness.manager(
        models, memory_budget=400 * MiB, models_max=0, queue_timeout=30.0
    )
    a = manager.resolve("a")
    await bounded(until(lambda: a.status == Status.LOADING))  # pinned: loading from start
    text, _, _ = await bounded(harness.generate(manager, "c"), 30.0)
    assert text == expected(3)
    assert a.status == Status.LOADED and manager.resolve("c").status == Status.LOADED


async def test_a_load_queued_while_the_pinned_model_was_away_is_refused_once_it_is_back(
    harness: Harness, tmp_path: Path
) -> None:
    """With room for one model and that one pinned: while the pinned model's worker is dead,
    another model fits and queues. Once the pinned one is back, the queued load is dropped
    and its request refused at once (it waited out the queue timeout, then a 503 saying to
    retry), and an explicit load of it no longer waits for good."""
    models = [
        fake_model(tmp_path, "a", config={"pin": True}),
        fake_model(tmp_path, "b"),
        fake_model(tmp_path, "c"),
    ]
    manager = await harness.manager(models, models_max=1, queue_timeout=30.0)
    events = Events(manager)
    a, c = manager.resolve("a"), manager.resolve("c")
    await bounded(until(lambda: a.status == Status.LOADED))  # pinned: loaded at start
    assert a.worker is not None
    os.kill(a.worker.pid, signal.SIGKILL)
    await bounded(until(lambda: a.status != Status.LOADED))
    held = await hold(harness, manager, "b")  # in the pinned model's place, busy
    back = asyncio.create_task(harness.generate(manager, "a"))
    await bounded(until(lambda: a.status == Status.WAITING))
    manager.request_load("c")  # fits while the pinned model is away: it queues behind a
    refused = asyncio.create_task(harness.generate(manager, "c"))
    await bounded(until(lambda: bool(c.waiters)))
    assert c.status == Status.WAITING
    await held.finish()  # b goes for a; then c can never come in
    with pytest.raises(InsufficientMemory, match=r"beside the pinned models \(a\)"):
        await bounded(refused, 5.0)
    text, _, _ = await bounded(back)
    assert text == expected(3) and a.status == Status.LOADED
    assert c.status == Status.UNLOADED and not c.wanted and manager.waiting == 0
    assert events.count("loading", "c") == 0
    with pytest.raises(InsufficientMemory, match="models_max"):
        manager.request_load("c")
    assert not c.load_requested  # a refused explicit load leaves nothing behind


async def test_an_unload_in_the_same_turn_as_the_load_it_cancels(
    harness: Harness, tmp_path: Path
) -> None:
    """An unload asked before the load's task first ran (the same turn of the event loop):
    the model goes back to `unloaded`, where it stayed `loading` for ever, and the next
    request loads it."""
    manager = await harness.manager([fake_model(tmp_path, "a")])
    events = Events(manager)
    a = manager.request_load("a")
    assert a.status == Status.LOADING
    await manager.unload("a")  # inline: the load's task has not run yet
    assert a.status == Status.UNLOADED and a.load_task is None
    assert [e["reason"] for e in events.all("unloaded", "a")] == ["load cancelled"]
    text, _, _ = await bounded(harness.generate(manager, "a"))
    assert text == expected(3) and a.status == Status.LOADED


async def test_explicit_load_waits_for_room(harness: Harness, tmp_path: Path) -> None:
    """A load asked for explicitly has no waiter, yet keeps waiting for a busy model to go
    idle and then evicts it."""
    models = [fake_model(tmp_path, "a"), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=1)
    a, b = manager.resolve("a"), manager.resolve("b")
    held = await hold(harness, manager, "a")
    manager.request_load("b")
    await asyncio.sleep(0.2)
    assert (a.status, b.status) == (Status.LOADED, Status.WAITING)
    await held.finish()
    await bounded(until(lambda: b.status == Status.LOADED))
    harness.record(b)
    assert a.status == Status.UNLOADED


async def test_close_while_loading_leaves_no_worker(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", load_seconds=3.0)])
    manager.request_load("a")
    await bounded(until(lambda: len(_worker_children()) == 1))
    harness.pids.update(p.pid for p in _worker_children())
    await asyncio.sleep(0.3)  # well inside the 3 s load, past the spawn itself
    await bounded(manager.close(), 2.0)
    assert _worker_children() == []


# -- idle unload -------------------------------------------------------------------------------


async def test_idle_unload_after_keep_alive(harness: Harness, tmp_path: Path) -> None:
    models = [fake_model(tmp_path, "a", config={"keep_alive": "1s"})]
    manager = await harness.manager(models)
    events = Events(manager)
    _, _, pid = await bounded(harness.generate(manager, "a"))
    state = manager.resolve("a")
    assert state.status == Status.LOADED
    await bounded(until(lambda: state.status == Status.UNLOADED, 6.0), 7.0)
    assert [e["reason"] for e in events.all("unloaded", "a")] == ["idle (keep_alive)"]
    assert not psutil.pid_exists(pid)


async def test_an_evicted_models_keep_alive_ends_with_it(harness: Harness, tmp_path: Path) -> None:
    """Evicted before its keep-alive ran out, a model waits for room again past the old
    deadline: that timer is gone with the eviction, so it neither withdraws the waiting load
    (back of the queue) nor cancels a running one (found in a cold-start storm)."""
    models = [
        fake_model(tmp_path, "a", config={"keep_alive": "1s"}),
        fake_model(tmp_path, "b", token_seconds=0.05),
    ]
    manager = await harness.manager(models, models_max=1)
    events = Events(manager)
    a = manager.resolve("a")
    await bounded(harness.generate(manager, "a"))
    await bounded(harness.generate(manager, "b"))  # evicts a, 1 s before its keep-alive ends
    assert a.status == Status.UNLOADED and a.unload_handle is None
    started = asyncio.Event()
    busy = asyncio.create_task(harness.generate(manager, "b", 60, started=started))  # ~3 s
    await bounded(started.wait())
    waiting = asyncio.create_task(harness.generate(manager, "a"))
    await bounded(until(lambda: a.status == Status.WAITING))
    await asyncio.sleep(1.5)  # past a's old deadline
    assert a.status == Status.WAITING
    assert len(events.all("unloaded", "a")) == 1, events.all("unloaded", "a")  # the eviction
    await bounded(busy)
    text, _, _ = await bounded(waiting)
    assert text == expected(3)
    assert len(events.all("unloaded", "a")) == 1  # the eviction, nothing after it
    assert events.count("loading", "a") == 2


async def test_a_load_killed_from_outside_is_not_held_against_the_model(
    harness: Harness, tmp_path: Path
) -> None:
    """A worker killed while it loads (the OOM killer, a person) or a load past
    worker_start_timeout says so, and the next request loads the model again; a load that
    fails by itself stays failed (test_failed_load_is_sticky_until_loaded_explicitly)."""
    manager = await harness.manager(
        [fake_model(tmp_path, "a", load_seconds=1.0)], spare_workers=False
    )
    events = Events(manager)
    state = manager.resolve("a")
    first = asyncio.create_task(harness.generate(manager, "a"))
    await bounded(until(lambda: state.status == Status.LOADING and bool(_worker_children())))
    await asyncio.sleep(0.5)  # most likely in the engine's load by now (it takes 1 s)
    for child in _worker_children():
        child.kill()
    # (code 255: asyncio lost the killed process's exit status, seen once under load)
    with pytest.raises(LoadInterrupted, match=r"(SIGKILL|code 255).*; the next request loads it"):
        await bounded(first)
    assert state.status == Status.ERROR and not state.sticky
    text, _, _ = await bounded(harness.generate(manager, "a"))
    assert text == expected(3) and events.count("loading", "a") == 2

    slow = await harness.manager(
        [fake_model(tmp_path, "s", load_seconds=3.0)],
        spare_workers=False,
        worker_start_timeout=0.3,
    )
    with pytest.raises(LoadInterrupted, match=r"within worker_start_timeout \(0.3 s\)"):
        await bounded(harness.generate(slow, "s"))
    with pytest.raises(LoadInterrupted):  # tried again, not refused from the last error
        await bounded(harness.generate(slow, "s"))


async def test_keep_alive_zero_unloads_after_the_request(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a")])
    state = manager.resolve("a")
    await bounded(harness.generate(manager, "a", keep_alive=0))
    await bounded(until(lambda: state.status == Status.UNLOADED, 3.0))
    # The next request loads it again.
    await bounded(harness.generate(manager, "a", keep_alive=math.inf))
    await asyncio.sleep(0.3)
    assert state.status == Status.LOADED


async def test_a_requests_keep_alive_is_its_own_and_capped(
    harness: Harness, tmp_path: Path
) -> None:
    """A request's keep_alive applies after that request only, not to the requests after it,
    and never beyond `keep_alive_max`."""
    manager = await harness.manager(
        [fake_model(tmp_path, "a")], keep_alive="300ms", keep_alive_max="2s"
    )
    state = manager.resolve("a")
    await bounded(harness.generate(manager, "a", keep_alive=math.inf))  # capped at 2 s
    await asyncio.sleep(0.5)
    assert state.status == Status.LOADED
    await bounded(until(lambda: state.status == Status.UNLOADED, 5.0))
    await bounded(harness.generate(manager, "a"))  # no keep_alive: the server's 300 ms again
    await bounded(until(lambda: state.status == Status.UNLOADED, 3.0))


@pytest.mark.parametrize("latest", [3600.0, 0.0])
async def test_the_latest_requests_keep_alive_applies(
    harness: Harness, tmp_path: Path, latest: float
) -> None:
    """As in Ollama, the keep_alive of the request that came last applies once the model is
    idle, whichever request ends last: a short request asking for an hour, done while a stream
    that asked for 0 went on, was forgotten and the model unloaded at the stream's end (found
    from outside); and the other way round."""
    manager = await harness.manager([fake_model(tmp_path, "a")], keep_alive="5m")
    state = manager.resolve("a")
    first = Hold(harness, manager, "a", keep_alive=3600.0 - latest)  # 0 or an hour
    await bounded(first.acquired.wait())
    await bounded(harness.generate(manager, "a", keep_alive=latest))  # comes later, ends first
    assert state.status == Status.LOADED  # the stream goes on
    await bounded(first.finish())
    if latest:
        await asyncio.sleep(0.5)
        timer = state.unload_handle
        assert state.status == Status.LOADED and timer is not None
        assert timer.when - asyncio.get_running_loop().time() > 3000  # the hour, not 5 min
    else:
        await bounded(until(lambda: state.status == Status.UNLOADED, 5.0))


# -- queues ------------------------------------------------------------------------------------


class Hold:
    """A request that holds one slot of a model until released (so tests depend on events,
    not on how long a generation takes); after release it generates on the same worker."""

    def __init__(
        self,
        harness: Harness,
        manager: ModelManager,
        model: str,
        keep_alive: float | None = None,
    ) -> None:
        self.acquired = asyncio.Event()
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._run(harness, manager, model, keep_alive))

    async def _run(
        self, harness: Harness, manager: ModelManager, model: str, keep_alive: float | None
    ) -> tuple[str, int]:
        async with manager.lease(model, keep_alive=keep_alive) as worker:
            harness.pids.add(worker.pid)
            self.acquired.set()
            await self.release.wait()
            text = ""
            async for event in worker.generate(GenerationRequest(SamplingParams(max_tokens=3))):
                text += event.text if isinstance(event, TextDelta) else ""
            return text, worker.pid

    async def finish(self) -> tuple[str, int]:
        self.release.set()
        return await bounded(self.task)


async def hold(harness: Harness, manager: ModelManager, model: str = "a") -> Hold:
    held = Hold(harness, manager, model)
    await bounded(held.acquired.wait())
    return held


async def test_fifo_per_model(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", parallel=1)])
    held = await hold(harness, manager)
    order: list[int] = []

    async def request(n: int) -> None:
        async with manager.lease("a") as worker:
            order.append(n)
            async for _ in worker.generate(GenerationRequest(SamplingParams(max_tokens=2))):
                pass

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(request(n)))
        await bounded(until(lambda n=n: manager.waiting == n + 1))
    await held.finish()
    await bounded(asyncio.gather(*tasks))
    assert order == list(range(6))


async def test_disconnect_while_queued_keeps_the_running_model(
    harness: Harness, tmp_path: Path
) -> None:
    """llama.cpp test_router.py: a client that gives up while queued frees its place; the
    request being served completes and the model stays loaded."""
    manager = await harness.manager([fake_model(tmp_path, "a", parallel=1)])
    events = Events(manager)
    held = await hold(harness, manager)
    queued = asyncio.create_task(harness.generate(manager, "a"))
    await bounded(until(lambda: manager.waiting == 1))
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    state = manager.resolve("a")
    assert manager.waiting == 0 and not state.waiters
    text, pid = await held.finish()
    assert text == expected(3)
    assert state.status == Status.LOADED
    _, _, pid_next = await bounded(harness.generate(manager, "a"))
    assert pid_next == pid
    assert events.count("loading", "a") == 1


async def test_per_model_queue_limit(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", parallel=1)], queue_per_model=2)
    held = await hold(harness, manager)
    waiters = [asyncio.create_task(harness.generate(manager, "a")) for _ in range(2)]
    await bounded(until(lambda: manager.waiting == 2))
    with pytest.raises(QueueFull) as caught:
        await bounded(harness.generate(manager, "a"), 1.0)
    assert type(caught.value) is QueueFull
    assert caught.value.retry_after > 0
    await held.finish()
    await bounded(asyncio.gather(*waiters))


async def test_total_queue_limit(harness: Harness, tmp_path: Path) -> None:
    models = [fake_model(tmp_path, "a", parallel=1), fake_model(tmp_path, "b", parallel=1)]
    manager = await harness.manager(models, queue_total=2, queue_per_model=10)
    holds = [await hold(harness, manager, m) for m in ("a", "b")]
    waiters = [asyncio.create_task(harness.generate(manager, m)) for m in ("a", "b")]
    await bounded(until(lambda: manager.waiting == 2))
    with pytest.raises(ServerBusy) as caught:
        await bounded(harness.generate(manager, "a"), 1.0)
    assert caught.value.retry_after > 0
    for held in holds:
        await held.finish()
    await bounded(asyncio.gather(*waiters))


async def test_queue_timeout(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", parallel=1)], queue_timeout=0.5)
    held = await hold(harness, manager)
    with pytest.raises(ServerBusy, match="waited") as caught:
        await bounded(harness.generate(manager, "a"), 5.0)
    assert caught.value.retry_after > 0
    assert manager.waiting == 0
    text, _ = await held.finish()
    assert text == expected(3)


# -- unload and crashes ------------------------------------------------------------------------


async def test_request_during_unload_waits_and_reloads(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a")])
    events = Events(manager)
    state = manager.resolve("a")
    held = await hold(harness, manager)
    unloading = asyncio.create_task(manager.unload("a"))
    await bounded(until(lambda: state.status == Status.UNLOADING))
    late = asyncio.create_task(harness.generate(manager, "a"))
    await asyncio.sleep(0.2)
    assert not late.done()
    assert state.status == Status.UNLOADING
    text, old_pid = await held.finish()  # served by the unloading worker, to its end
    assert text == expected(3)
    await bounded(unloading)
    text, _, new_pid = await bounded(late)
    assert text == expected(3)
    assert new_pid != old_pid
    assert not psutil.pid_exists(old_pid)
    assert events.count("loading", "a") == 2


async def test_killed_worker_fails_its_request_and_reloads(
    harness: Harness, tmp_path: Path
) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a", token_seconds=0.05)])
    events = Events(manager)
    state = manager.resolve("a")
    started = asyncio.Event()
    running = asyncio.create_task(harness.generate(manager, "a", 200, started=started))
    await bounded(started.wait())
    assert state.worker is not None
    pid = state.worker.pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="SIGKILL"):
        await bounded(running, 3.0)
    assert state.status == Status.ERROR
    assert state.error is not None and "SIGKILL" in state.error
    assert [e["error"] for e in events.all("error", "a")] == [state.error]
    _, _, new_pid = await bounded(harness.generate(manager, "a"))
    assert new_pid != pid
    assert state.status == Status.LOADED
    assert events.count("loading", "a") == 2


async def test_a_pinned_models_dead_worker_is_replaced_at_once(
    harness: Harness, tmp_path: Path
) -> None:
    """Pinned: meant to stay loaded. When its worker dies after serving a while, it loads
    again by itself (it waited for the next request, which paid the load); one that dies
    soon after loading is left to the next request, so a crashing model does not loop."""
    manager = await harness.manager([fake_model(tmp_path, "a", config={"pin": True})])
    events = Events(manager)
    a = manager.resolve("a")
    await bounded(until(lambda: a.status == Status.LOADED))  # pinned: loaded at start
    assert a.worker is not None
    first = a.worker.pid
    os.kill(first, signal.SIGKILL)  # within RESTART_AFTER of its load
    await bounded(until(lambda: a.status == Status.ERROR))
    await asyncio.sleep(0.3)
    assert a.status == Status.ERROR and "the next request loads it again" in (a.error or "")
    _, _, second = await bounded(harness.generate(manager, "a"))
    assert second != first
    a.up_since -= RESTART_AFTER  # as if it had served that long
    os.kill(second, signal.SIGKILL)
    await bounded(until(lambda: a.worker is not None and a.worker.pid != second))
    await bounded(until(lambda: a.status == Status.LOADED))
    assert a.worker is not None and a.worker.pid != first
    assert [e["reason"] for e in events.all("loading", "a")] == ["request", "restart"]
    assert "pinned: it loads again" in events.all("error", "a")[-1]["error"]
    harness.pids.add(a.worker.pid)


async def test_a_pinned_model_dying_while_it_is_unloaded_stays_unloaded(
    harness: Harness, tmp_path: Path
) -> None:
    """An unload of a pinned model (forced over HTTP, or a reload's change) waits for the
    request in flight; the worker dies meanwhile. It was going away on purpose: it is not
    loaded again by itself (the restart undid the unload)."""
    manager = await harness.manager([fake_model(tmp_path, "a", config={"pin": True})])
    events = Events(manager)
    a = manager.resolve("a")
    await bounded(until(lambda: a.status == Status.LOADED))  # pinned: loaded at start
    a.up_since -= RESTART_AFTER  # as if it had served that long
    held = await hold(harness, manager, "a")
    unloading = asyncio.create_task(manager.unload("a"))
    await bounded(until(lambda: a.status == Status.UNLOADING))
    assert a.worker is not None
    os.kill(a.worker.pid, signal.SIGKILL)
    with pytest.raises(EngineError):  # its request had the worker die under it
        await held.finish()
    await bounded(unloading)
    await asyncio.sleep(0.3)
    assert a.status == Status.UNLOADED and a.worker is None
    assert events.count("loading", "a") == 0


# -- CPU threads and spare workers ---------------------------------------------------------------


async def test_busy_models_share_the_thread_budget(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager(
        [fake_model(tmp_path, "a"), fake_model(tmp_path, "b")], thread_budget=4
    )
    a = await hold(harness, manager, "a")
    state_a = manager.resolve("a")
    await until(lambda: state_a.worker is not None and state_a.worker.info["threads"] == 4)
    b = await hold(harness, manager, "b")
    state_b = manager.resolve("b")
    await until(lambda: state_b.worker is not None and state_b.worker.info["threads"] == 2)
    await until(lambda: state_a.worker is not None and state_a.worker.info["threads"] == 2)
    await b.finish()
    c = await hold(harness, manager, "a")  # a alone again gets every core back
    await until(lambda: state_a.worker is not None and state_a.worker.info["threads"] == 4)
    await a.finish()
    await c.finish()


async def test_cold_load_uses_the_spare_worker(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.manager([fake_model(tmp_path, "a"), fake_model(tmp_path, "b")])
    await until(lambda: len(_worker_children()) == 1)  # the spare, started ahead of need
    spare_pid = _worker_children()[0].pid
    harness.pids.add(spare_pid)
    _, _, pid = await bounded(harness.generate(manager, "a"))
    assert pid == spare_pid
    await until(lambda: len(_worker_children()) == 2)  # a new spare replaces it
    _, _, pid_b = await bounded(harness.generate(manager, "b"))
    assert pid_b not in (pid, spare_pid)
    for child in _worker_children():
        harness.pids.add(child.pid)


async def test_a_dropped_spare_counts_until_its_process_has_exited() -> None:
    """The pool's `drop` (a load that needs a spare's memory): the spare's memory counts until
    its process has exited (it stopped counting at once, the process living on: found from
    outside), then `on_change` says so; the engine asked to keep its own keeps it, and
    `refill` starts one again."""
    pool = WorkerPool(spares=True)
    changes: list[int] = []
    pool.on_change = lambda: changes.append(pool.memory())
    try:
        pool.refill("fake")
        await bounded(until(lambda: pool.base("fake") is not None, 20))
        (spare,) = _worker_children()
        measured = pool.memory()
        assert measured > 0 and changes == [measured]
        assert pool.drop(excluding="fake") == [] and pool.memory() == measured
        assert pool.drop() == ["fake"] and pool.memory() == pool.stopping() == measured
        await bounded(until(lambda: pool.memory() == 0))
        assert not spare.is_running() or spare.status() == "zombie"
        assert changes == [measured, 0]
        pool.refill("fake")
        await bounded(until(lambda: len(_worker_children()) == 1, 20))
        assert pool.memory() > 0
    finally:
        await pool.close()
    assert _worker_children() == []


async def test_a_spare_still_starting_counts_and_is_killed_when_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare still importing its engine's library (a transformers spare: 10-16 s) counts
    at its engine's guess, not as 0 until one has been measured; dropped, it is killed, not
    waited for until it has started, and counts until it has exited. Its start is made slow
    by a sitecustomize that sleeps."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    pool = WorkerPool(spares=True)
    pool.guess = lambda engine: 7 * MiB
    try:
        pool.refill("fake")
        await bounded(until(lambda: len(_worker_children()) == 1))
        assert pool.base("fake") is None and pool.memory() == 7 * MiB
        assert pool.drop() == ["fake"] and pool.stopping() == 7 * MiB
        await bounded(until(lambda: pool.memory() == 0), 10.0)  # not the 60 s of its start
        assert _worker_children() == []
    finally:
        await pool.close()


# -- logs --------------------------------------------------------------------------------------


async def test_lifecycle_is_logged(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Loads, waits for room, evictions with their reason, unloads and failed loads each leave
    one INFO/WARNING line naming the model, with sizes and durations."""
    caplog.set_level("INFO", logger="llm_router.lifecycle")
    models = [
        fake_model(tmp_path, "a"),
        fake_model(tmp_path, "b"),
        fake_model(tmp_path, "bad", fail_load=True),
    ]
    manager = await harness.manager(models, models_max=1)
    held = await hold(harness, manager, "a")
    waiting = asyncio.create_task(harness.generate(manager, "b"))
    await bounded(until(lambda: manager.resolve("b").status == Status.WAITING))
    await held.finish()
    await bounded(waiting)
    with pytest.raises(ModelLoadFailed):
        await bounded(harness.generate(manager, "bad"))
    lines = [r.getMessage() for r in caplog.records]

    def logged(pattern: str) -> bool:
        return any(re.search(pattern, line) for line in lines)

    assert logged(r"model a loaded in \d+\.\d+ s: \d+ MiB measured, \d+ MiB estimated"), lines
    # models_max is what b waits for, not memory (it was said in memory terms)
    assert logged(r"model b waits for room to load \(position 1; models_max reached: 1 of 1 "), (
        lines
    )
    assert not logged(r"model b waits .* MiB needed"), lines
    assert logged(r"model a unloading \(evicted to make room for 'b'\)"), lines
    assert logged(r"model a unloaded in \d+\.\d+ s \(evicted to make room for 'b'\): \d+ MiB"), (
        lines
    )
    assert logged(r"model bad failed to load after \d+\.\d+ s: .*told to fail"), lines
    # in a JSON log, each line's facts are keys of their own beside its message
    json_lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    by_event = {(x.get("event"), x.get("model")): x for x in json_lines}
    loaded = by_event["loaded", "a"]
    assert loaded["duration_s"] >= 0 and loaded["bytes"] > 0 and loaded["engine"] == "fake"
    assert loaded["message"].startswith("model a loaded in ")
    waiting = by_event["waiting", "b"]
    assert waiting["reason"] == "models_max" and waiting["models_max"] == 1
    assert by_event["unloading", "a"]["reason"] == "evicted to make room for 'b'"
    unloaded = by_event["unloaded", "a"]
    assert unloaded["reason"] == "evicted to make room for 'b'" and unloaded["duration_s"] >= 0
    assert "told to fail" in by_event["load_failed", "bad"]["error"]


async def test_a_worker_whose_channel_breaks_is_killed(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose reply line is past the channel's limit can never be read again: it is
    killed, its request fails, the model goes to `error` and the next request loads it again
    (rather than staying `loaded` behind a dead channel)."""
    monkeypatch.setattr(spawn, "STREAM_LIMIT", 256 * 1024)
    model = fake_model(tmp_path, "a", reply="short " + "x" * (512 * 1024))
    manager = await harness.manager([model], spare_workers=False)
    state = manager.resolve("a")
    with pytest.raises(WorkerDied):
        await bounded(harness.generate(manager, "a", 5))
    await bounded(until(lambda: state.status == Status.ERROR))
    assert [pid for pid in harness.pids if psutil.pid_exists(pid)] == []
    text, _, _ = await bounded(harness.generate(manager, "a", 1))
    assert text == "short"


def test_event_subscribers_are_bounded() -> None:
    bus = EventBus(max_subscribers=2)
    bus.subscribe(), bus.subscribe()
    with pytest.raises(ServerBusy) as caught:
        bus.subscribe()
    assert caught.value.retry_after > 0


def test_one_holder_has_at_most_its_share_of_event_subscriptions() -> None:
    """Half of them, or fewer by the key's max_concurrent; the others' are theirs to take,
    and one closed is one more for its holder. No holder (the master key, auth off): the
    total alone bounds it."""
    bus = EventBus(max_subscribers=6)
    reader = [bus.subscribe("reader"), bus.subscribe("reader"), bus.subscribe("reader")]
    with pytest.raises(RateLimited):
        bus.subscribe("reader")
    bus.subscribe("one", most=1)
    with pytest.raises(RateLimited):
        bus.subscribe("one", most=1)
    bus.unsubscribe(reader.pop())
    reader.append(bus.subscribe("reader"))
    bus.unsubscribe(reader.pop())
    for _ in range(3):  # 2 + 1 held: three more, beyond any share, fill the six
        bus.subscribe(None)
    with pytest.raises(ServerBusy):
        bus.subscribe(None)


async def test_an_engine_failure_fails_its_requests_not_the_worker(
    harness: Harness, tmp_path: Path
) -> None:
    """An exception in an engine's step() fails the generations running, not the worker: the
    model's next request is served by the same process."""
    manager = await harness.manager([fake_model(tmp_path, "a")])
    _, _, pid = await bounded(harness.generate(manager, "a"))
    request = GenerationRequest(SamplingParams(max_tokens=3), prompt="CRASH_STEP now")
    async with manager.lease("a") as worker:
        with pytest.raises(EngineError, match="told to crash"):
            async for _ in worker.generate(request):
                pass
    text, _, again = await bounded(harness.generate(manager, "a"))
    assert (text, again) == (expected(3), pid)
    assert manager.resolve("a").status == Status.LOADED


async def test_closing_kills_a_spare_still_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare still importing its engine's library when the server stops was waited for
    until it had (a transformers spare: ~5 s past the drain's grace, found from outside); it
    is killed instead. Its start is made slow by a sitecustomize that sleeps."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    pool = WorkerPool(spares=True)
    pool.refill("fake")
    await bounded(until(lambda: len(_worker_children()) == 1))
    await bounded(pool.close(), 10.0)  # not the 60 s of the spare's start
    assert _worker_children() == []


async def test_a_spare_started_before_the_loop_is_adopted(harness: Harness, tmp_path: Path) -> None:
    """`llm-router serve` starts the spares before importing the server (they import their
    engine libraries meanwhile); the manager's first load uses that very process."""
    pool = WorkerPool(spares=True)
    pool.start_early({"fake"})
    early = pool._early["fake"].pid
    harness.pids.add(early)
    options: dict[str, Any] = {
        "models_dir": tmp_path,
        "models": [fake_model(tmp_path, "a")],
        "watch_interval": 0,
        "provision_default_models": False,
    }
    manager = ModelManager(Settings(**options), pool=pool)
    harness.managers.append(manager)
    await manager.start()
    _, _, pid = await bounded(harness.generate(manager, "a"))
    assert pid == early
    assert pool.base("fake")  # measured from the adopted spare


async def test_busy_models_serve_on_for_drain_after_then_drain(
    harness: Harness, tmp_path: Path
) -> None:
    """A load waiting for room lets busy models take new requests for `drain_after` (a model
    swapped out after every request or two spends the machine on loads), then drains them."""
    models = [fake_model(tmp_path, "a", parallel=4), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=1, drain_after=2.0)
    a, b = manager.resolve("a"), manager.resolve("b")
    held = await hold(harness, manager, "a")
    waiting = asyncio.create_task(harness.generate(manager, "b"))
    await bounded(until(lambda: b.status == Status.WAITING))
    assert not a.draining
    text, _, _ = await bounded(harness.generate(manager, "a"))  # a still takes new requests
    assert text == expected(3)
    await bounded(until(lambda: a.draining, 5.0))
    await held.finish()
    await bounded(waiting)
    assert (a.status, b.status) == (Status.UNLOADED, Status.LOADED)


async def test_a_model_just_loaded_serves_drain_after_before_it_gives_way(
    harness: Harness, tmp_path: Path
) -> None:
    """Two models taking turns in one place (found from outside: 4 clients, two per model,
    swapped 51 times in 45 s, nearly once a request): the model that has just loaded keeps
    its place for `drain_after`, idle or not, and its clients' next requests are served by
    it; then it gives way."""
    models = [fake_model(tmp_path, "a", parallel=4), fake_model(tmp_path, "b")]
    manager = await harness.manager(models, models_max=1, drain_after=1.5)
    a, b = manager.resolve("a"), manager.resolve("b")
    loads: list[str] = []
    manager.events.add_listener(
        lambda e: loads.append(e["model"]) if e["event"] == "loaded" else None
    )
    await bounded(harness.generate(manager, "a"))  # a loads, serves, and is idle
    waiting = asyncio.create_task(harness.generate(manager, "b"))
    await bounded(until(lambda: b.status == Status.WAITING))
    for _ in range(3):  # a's client goes on: a is idle between its requests, and stays
        await bounded(harness.generate(manager, "a"))
        assert (a.status, b.status) == (Status.LOADED, Status.WAITING)
    await bounded(waiting)  # then a gives way, without a request of b's being lost
    assert (a.status, b.status) == (Status.UNLOADED, Status.LOADED)
    assert loads == ["a", "b"]


async def test_files_fixed_since_the_last_scan_are_read_when_asked_for(
    harness: Harness, tmp_path: Path, smollm2_gguf: Path
) -> None:
    """A model copied in was scanned half-written (an error: truncated); a load asked right
    after the copy finished failed on that stale scan until the next one (found from
    outside). Asked for, its changed files are read at once."""
    data = await asyncio.to_thread(smollm2_gguf.read_bytes)
    copied = tmp_path / "copied.gguf"
    await asyncio.to_thread(copied.write_bytes, data[: len(data) // 3])
    manager = await harness.manager([], watch_interval=3600)
    assert "truncated" in (manager.resolve("copied").source.error or "")
    await asyncio.to_thread(copied.write_bytes, data)  # the copy finished
    assert manager.resolve("copied").source.error is None
    assert manager.resolve("copied").status == Status.UNLOADED
