"""The model lifecycle: load on demand (one load shared by every waiter), bounded FIFO queues,
eviction by LRU under a count and a measured memory budget, idle unload, crash recovery.

Everything runs on the event loop; state changes happen between awaits, so a decision and its
first effect (e.g. marking a victim `unloading`) are never interleaved with another decision.
A request for a loaded model with a free slot never waits on another model's load or eviction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil

from ..config import Settings
from ..discovery import ModelSource, Scanner
from ..engines import LoadSpec, check_available
from ..errors import (
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    QueueFull,
    RouterError,
    ServerBusy,
)  # fmt: skip
from ..units import parse_bytes, parse_duration
from ..worker.client import SparePool, Worker
from .policy import Resident, choose_victims
from .registry import RESIDENT, Registry
from .state import EventBus, ModelState, Status
from .threads import ThreadBudget, cores_present

__all__ = ["ModelManager"]

log = logging.getLogger(__name__)
_NOT_SET: Any = False


class ModelManager:
    def __init__(self, settings: Settings, scanner: Scanner | None = None) -> None:
        self.settings = settings
        self.events = EventBus()
        self.budget = parse_bytes(settings.memory_budget, psutil.virtual_memory().available)
        self._default_keep_alive = parse_duration(settings.keep_alive)
        self.registry = Registry(scanner or Scanner(settings), self.events)
        self._waiting = 0
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._spares = SparePool(settings.spare_workers)
        self._threads = ThreadBudget(settings.thread_budget or cores_present())

    # -- start, stop, discovery --------------------------------------------------------------

    async def start(self) -> None:
        self.refresh()
        if self.settings.watch_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="models-watch")
        for state in self.registry:
            if state.source.config.pin or state.id in self.settings.preload:
                self.request_load(state.id)
        for engine in {s.source.engine for s in self.registry if not s.source.error}:
            with contextlib.suppress(RouterError):
                check_available(engine)
                self._spares.refill(engine)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        loads = [s.load_task for s in self.registry if s.load_task is not None]
        for task in [*loads, *self._tasks]:
            task.cancel()
        # Fix: the cancelled loads are awaited too; a worker still starting is killed only when
        # its load task handles the cancellation, which used to happen after close() returned.
        await asyncio.gather(*loads, *self._tasks, return_exceptions=True)
        workers = [s.worker for s in self.registry if s.worker is not None]
        await asyncio.gather(*(w.stop(timeout=2.0) for w in workers), return_exceptions=True)
        await self._spares.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                self.refresh()
            except Exception:  # a scan error must never stop discovery
                log.exception("models directory scan failed")

    def refresh(self) -> None:
        """Re-scan the models directory (registry.py); what changed or went away is unloaded."""
        for state, reason in self.registry.refresh():
            self._spawn(self._unload(state, reason))

    # -- lookups -------------------------------------------------------------------------------

    def states(self) -> list[ModelState]:
        return self.registry.sorted()

    def resolve(self, name: str) -> ModelState:
        """The model called `name` (id or alias); re-scans once before giving up."""
        for attempt in range(2):
            state = self.registry.get(name)
            if state is not None:
                return state
            if attempt == 0:
                self.refresh()
        raise ModelNotFound(f"The model '{name}' does not exist", param="model")

    @property
    def waiting(self) -> int:
        return self._waiting

    # -- leases --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, *, autoload: bool | None = None, keep_alive: float | bool | None = False
    ) -> AsyncIterator[Worker]:
        """Hold one slot of model `name` for the duration of the block, loading it first if
        needed. Raises ModelNotFound, ModelNotLoaded (autoload off), ModelLoadFailed,
        InsufficientMemory, QueueFull (429) or ServerBusy (503). Cancelling while queued gives
        the place up; a load nobody waits for any more still completes."""
        state = self.resolve(name)
        auto = self.settings.autoload if autoload is None else autoload
        worker = await self._acquire(state, auto)
        if keep_alive is not _NOT_SET:
            state.keep_alive_override = keep_alive
        try:
            yield worker
        finally:
            state.active -= 1
            state.last_used = time.time()
            state.notify()
            self._room_changed()
            self._schedule_idle_unload(state)
            self._share_threads()

    def _can_take(self, state: ModelState) -> bool:
        worker = state.worker
        return (
            state.status == Status.LOADED
            and worker is not None
            and not worker.exited.is_set()
            and state.active < state.slots
        )

    def _take(self, state: ModelState) -> Worker:
        assert state.worker is not None
        state.active += 1
        state.last_used = time.time()
        if state.unload_handle is not None:
            state.unload_handle.cancel()
            state.unload_handle = None
        self._share_threads()
        return state.worker

    def _share_threads(self) -> None:
        """Split the cores among the models generating now (see lifecycle/threads.py)."""
        default = self.settings.model_defaults.threads
        busy = [(s.worker, s.source.config.threads or default)
                for s in self.registry if s.active > 0 and s.worker is not None]  # fmt: skip
        self._threads.apply(busy)

    async def _acquire(self, state: ModelState, autoload: bool) -> Worker:
        if not state.waiters and self._can_take(state):
            return self._take(state)
        self._check_queue(state)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout
        ticket: asyncio.Future[None] = loop.create_future()
        state.waiters.append(ticket)
        self._waiting += 1
        try:
            while True:
                if state.waiters[0] is ticket:
                    if self._can_take(state):
                        return self._take(state)
                    self._progress(state, autoload)
                changed = state.changed
                left = deadline - loop.time()
                if left <= 0:
                    raise ServerBusy(
                        f"request waited {self.settings.queue_timeout:g}s for model "
                        f"'{state.id}' without getting a slot", retry_after=5.0
                    )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            state.waiters.remove(ticket)
            self._waiting -= 1
            state.notify()
            if not state.waiters and state.status == Status.LOADING:
                self._room_changed()  # fix: a load waiting for room re-checks whether it is wanted

    def _check_queue(self, state: ModelState) -> None:
        retry = 1.0 if state.status == Status.LOADED else 5.0
        if len(state.waiters) >= self.settings.queue_per_model:
            raise QueueFull(
                f"too many requests are waiting for model '{state.id}' "
                f"({len(state.waiters)}); retry later", retry_after=retry
            )  # fmt: skip
        if self._waiting >= self.settings.queue_total:
            raise ServerBusy(
                f"the server is full ({self._waiting} requests waiting); retry later",
                retry_after=retry,
            )

    def _progress(self, state: ModelState, autoload: bool) -> None:
        """Move the model at the head of its queue towards `loaded`, or raise why it cannot."""
        if state.status == Status.ERROR and state.sticky:
            raise ModelLoadFailed(f"model '{state.id}' failed to load: {state.error}")
        if state.status in (Status.UNLOADED, Status.ERROR):
            if not autoload:
                raise ModelNotLoaded(
                    f"model '{state.id}' is not loaded and autoload is off; "
                    "load it with POST /models/load", param="model"
                )  # fmt: skip
            # Refuse only what surely cannot fit: its measured size, else its file's size (the
            # estimate with its margin is for planning evictions, and may be too high).
            need = state.measured_bytes or state.source.identity.size_bytes
            if need > self.budget:
                raise InsufficientMemory(
                    f"model '{state.id}' needs at least {need / 2**20:.0f} MiB but the memory "
                    f"budget is {self.budget / 2**20:.0f} MiB"
                )
            self._start_load(state)

    # -- load, unload --------------------------------------------------------------------------

    def request_load(self, name: str) -> ModelState:
        """Start loading `name` unless it is loaded or loading; returns at once. An explicit
        load also retries a model whose earlier load failed."""
        state = self.resolve(name)
        if state.source.error is not None:
            raise ModelLoadFailed(f"model '{state.id}' cannot be loaded: {state.source.error}")
        if state.status in (Status.UNLOADED, Status.ERROR, Status.LOADING):
            state.load_requested = True
        if state.status in (Status.UNLOADED, Status.ERROR):
            state.sticky = False
            self._start_load(state)
        return state

    def _start_load(self, state: ModelState) -> None:
        check_available(state.source.engine)
        state.set_status(Status.LOADING)
        self.events.publish("loading", state.id)
        state.load_task = asyncio.create_task(self._load(state), name=f"load-{state.id}")
        # Fix: nobody awaits a load task, so retrieve its outcome here; a failed load used to
        # log "Task exception was never retrieved" (the failure itself is already in `state`).
        state.load_task.add_done_callback(_outcome_seen)

    async def _load(self, state: ModelState) -> Worker:
        try:
            if not await self._make_room(state):
                raise asyncio.CancelledError("nobody waits for this load any more")
            started = time.monotonic()  # the load itself, not the wait for room
            source = state.source
            spare = await self._spares.take(source.engine)
            try:
                worker = await Worker.start(
                    source.engine, self._spec(source), spare=spare,
                    timeout=self.settings.worker_start_timeout, on_exit=self._worker_exited(state),
                )  # fmt: skip
            finally:
                self._spares.refill(source.engine)
        except asyncio.CancelledError:
            state.set_status(Status.UNLOADED)
            self.events.publish("unloaded", state.id, reason="load cancelled")
            self._room_changed()
            raise
        except RouterError as exc:
            state.sticky = True
            state.set_status(Status.ERROR, exc.message)
            self.events.publish("error", state.id, error=exc.message)
            self._room_changed()
            raise
        finally:
            state.load_task = None
            state.load_requested = False
        state.worker = worker
        state.load_seconds = time.monotonic() - started
        state.loaded_at = time.time()
        state.last_used = time.time()
        state.memory_bytes = state.measured_bytes = _rss(worker.pid)
        state.set_status(Status.LOADED)
        self.events.publish(
            "loaded", state.id, load_seconds=round(state.load_seconds, 3),
            memory_bytes=state.memory_bytes,
        )  # fmt: skip
        self._schedule_idle_unload(state)
        return worker

    def _spec(self, source: ModelSource) -> LoadSpec:
        options = self.settings.model_defaults.merged(source.config.engine_options())
        info = source.info
        return LoadSpec(str(source.path), options.model_dump(exclude_none=True),
                        info.architecture if info else None, info.finetune if info else None)  # fmt: skip

    async def _make_room(self, state: ModelState) -> bool:
        """Evict LRU idle models until `state` fits; wait while the rest are busy. False when
        the load is no longer wanted: not requested explicitly and its last waiter has left
        (timed out or disconnected) while it waited. Fix: such a load used to stay `loading`
        for ever, then evict another model for nobody once room appeared."""
        while True:
            residents = [
                Resident(s.id, s.memory_bytes or s.estimate_bytes(), s.last_used,
                         s.busy or s.status != Status.LOADED, s.source.config.pin)
                for s in self.registry
                if s is not state and s.status in RESIDENT
            ]  # fmt: skip
            need = min(state.estimate_bytes(), self.budget)  # an estimate over budget: try
            verdict = choose_victims(residents, need, self.budget, self.settings.models_max)
            if verdict.fits:
                reason = f"evicted to make room for '{state.id}'"
                victims = [self.registry[v] for v in verdict.victims]
                await asyncio.gather(*(self._unload(v, reason) for v in victims))
                return True
            if not state.waiters and not state.load_requested:
                return False
            self._room.clear()
            await self._room.wait()

    def _room_changed(self) -> None:
        self._room.set()

    async def unload(self, name: str, reason: str = "requested") -> None:
        await self._unload(self.resolve(name), reason)

    async def _unload(self, state: ModelState, reason: str) -> None:
        """Stop the model's worker after in-flight requests finish (up to `unload_grace`).
        Requests arriving meanwhile wait and then load it again."""
        if state.unload_handle is not None:
            state.unload_handle.cancel()
            state.unload_handle = None
        if state.status == Status.LOADING and state.load_task is not None:
            state.load_task.cancel()
            with contextlib.suppress(BaseException):
                await state.load_task
            return
        if state.status != Status.LOADED or state.worker is None:
            return
        worker = state.worker
        state.set_status(Status.UNLOADING)
        self.events.publish("unloading", state.id, reason=reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.unload_grace
        while state.active > 0 and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.changed.wait(), left)
        await worker.stop()
        state.worker = None
        state.memory_bytes = None
        state.loaded_at = None
        state.set_status(Status.UNLOADED)
        self.events.publish("unloaded", state.id, reason=reason)
        self._room_changed()

    def _worker_exited(self, state: ModelState) -> Any:
        def on_exit(worker: Worker, reason: str) -> None:
            if worker.stopping or state.worker is not worker:
                return
            # Nobody else will stop a worker that died on its own: stop() closes its channel
            # (the socket would otherwise leak until garbage collection).
            self._spawn(worker.stop())
            state.worker = None
            state.memory_bytes = None
            message = f"{reason}; the next request loads it again"
            state.set_status(Status.ERROR, message)
            self.events.publish("error", state.id, error=message)
            self._room_changed()

        return on_exit

    # -- idle unload ---------------------------------------------------------------------------

    def _keep_alive(self, state: ModelState) -> float | None:
        if state.source.config.pin:
            return None
        if state.keep_alive_override is not _NOT_SET:
            return state.keep_alive_override
        if state.source.config.keep_alive is not None:
            return parse_duration(state.source.config.keep_alive)
        return self._default_keep_alive

    def _schedule_idle_unload(self, state: ModelState) -> None:
        if state.active or state.waiters or state.status != Status.LOADED:
            return
        seconds = self._keep_alive(state)
        if seconds is None:
            return
        if state.unload_handle is not None:
            state.unload_handle.cancel()
        loop = asyncio.get_running_loop()
        state.unload_handle = loop.call_later(
            seconds, lambda: self._spawn(self._unload(state, "idle (keep_alive)"))
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _outcome_seen(task: asyncio.Task[Worker]) -> None:
    if not task.cancelled():
        task.exception()


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None
