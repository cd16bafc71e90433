"""The model lifecycle: load on demand (one load shared by every waiter), bounded FIFO queues,
admission of loads in arrival order under a count and a measured memory budget, eviction of
least recently used idle models, idle unload, crash recovery.

Everything runs on the event loop; state changes happen between awaits, so a decision and its
first effect (e.g. marking a victim `unloading`) are never interleaved with another decision.

How a load gets room (decisions in policy.py, effects here): a model that must load goes to
`waiting` at the back of the admission queue, holding nothing. `_admit` looks at the head only
(arrival order: no starvation) and starts it as soon as it fits beside every resident; until
then it evicts idle models, and drains busy ones (they serve what was queued for them, take no
new requests, and are evicted once idle). Any change of room calls `_admit` again. A request
for a loaded model with a free slot never waits on another model's load or eviction, unless
that model is draining for a load that arrived first."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil

from ..config import Settings
from ..engines import LoadSpec, check_available
from ..errors import (
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    QueueFull,
    RouterError,
    ServerBusy,
)
from ..units import parse_bytes, parse_duration
from ..worker.client import Worker
from ..worker.pool import WorkerPool
from .discovery import ModelSource, Scanner
from .estimate import default_base, estimate_model_bytes
from .policy import Resident, plan_admission, reconcile
from .registry import RESIDENT, Registry
from .state import EventBus, ModelSnapshot, ModelState, Status
from .threads import ThreadBudget, cores_present

__all__ = ["ModelManager"]

log = logging.getLogger(__name__)
MiB = 2**20


class ModelManager:
    def __init__(
        self, settings: Settings, scanner: Scanner | None = None, *,
        pool: WorkerPool | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.events = EventBus(max_subscribers=settings.max_event_subscribers)
        self.budget = parse_bytes(settings.memory_budget, psutil.virtual_memory().available)
        self._default_keep_alive = parse_duration(settings.keep_alive)
        self.registry = Registry(scanner or Scanner(settings), self.events)
        self.over_budget = False  # measured use is over the budget and nothing idle can go
        self._waiting = 0
        self._admission: deque[ModelState] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._pool = pool or WorkerPool(settings.spare_workers)
        self._pool.on_measured = self._room_changed  # estimates improve: decide again
        self._threads = ThreadBudget(settings.thread_budget or cores_present())
        self._scanned = -math.inf  # monotonic time of the last scan
        self._patience: asyncio.TimerHandle | None = None  # see _patience_over
        self._uses = itertools.count(1)  # orders uses for LRU (wall clocks can tie or step back)

    # -- start, stop, discovery --------------------------------------------------------------

    async def start(self) -> None:
        self.refresh(force=True)
        if self.settings.watch_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="models-watch")
        for engine in {s.source.engine for s in self.registry if not s.source.error}:
            with contextlib.suppress(RouterError):
                check_available(engine)
                self._refill_spare(engine)
        for state in self.registry:
            if state.source.config.pin or state.id in self.settings.preload:
                self.request_load(state.id)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._patience is not None:
            self._patience.cancel()
        for state in self._admission:
            state.set_status(Status.UNLOADED)
        self._admission.clear()
        loads = [s.load_task for s in self.registry if s.load_task is not None]
        for task in [*loads, *self._tasks]:
            task.cancel()
        # Cancelled loads are awaited too: a starting worker is killed when its load task
        # handles the cancellation, which must happen before close() returns.
        await asyncio.gather(*loads, *self._tasks, return_exceptions=True)
        workers = [s.worker for s in self.registry if s.worker is not None]
        await asyncio.gather(*(w.stop(timeout=2.0) for w in workers), return_exceptions=True)
        await self._pool.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                self.refresh(force=True)
            except Exception:  # a scan error must never stop discovery
                log.exception("models directory scan failed")

    def refresh(self, *, force: bool = False) -> None:
        """Re-scan the models directory (registry.py); what changed or went away is unloaded.
        Unless `force`d, at most once per `watch_interval` (and second): unknown names and
        model listings, which any client can send in a loop, cost at most that."""
        now = time.monotonic()
        if not force and now - self._scanned < (self.settings.watch_interval or 1.0):
            return
        self._scanned = now
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

    def snapshots(self) -> list[ModelSnapshot]:
        """Every model's state now, by id."""
        return [self.snapshot(s) for s in self.registry.sorted()]

    def snapshot(self, state: ModelState) -> ModelSnapshot:
        worker = state.worker
        return ModelSnapshot(
            state.source, state.status, state.error, self.queue_position(state), state.draining,
            state.memory_bytes, self._estimate(state), state.last_used or None, state.loaded_at,
            state.load_seconds, state.active, len(state.waiters),
            dict(worker.info) if worker else None,
        )  # fmt: skip

    def queue_position(self, state: ModelState) -> int | None:
        """1 for the load admitted next; None when `state` is not waiting for room."""
        with contextlib.suppress(ValueError):
            return self._admission.index(state) + 1
        return None

    def memory_used(self) -> int:
        """Bytes held now: every resident model (measured, or estimated while loading) and the
        spare workers."""
        return sum(r.bytes for r in self._residents()) + self._pool.memory()

    # -- leases --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, name: str, *, autoload: bool | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[Worker]:
        """Hold one slot of model `name` for the duration of the block, loading it first if
        needed. `autoload=False` refuses to load (a request may turn autoload off, never on);
        `keep_alive` is this request's idle time before unload (math.inf: never), capped by
        the configured maximum. Raises ModelNotFound, ModelNotLoaded, ModelLoadFailed,
        InsufficientMemory, QueueFull (429) or ServerBusy (503). Cancelling while queued gives
        the place up; a load nobody waits for any more is withdrawn if it has not started."""
        state = self.resolve(name)
        worker = await self._acquire(state, self.settings.autoload and autoload is not False)
        try:
            yield worker
        finally:
            state.active -= 1
            state.last_used, state.use_order = time.time(), next(self._uses)
            state.notify()
            self._schedule_idle_unload(state, keep_alive)
            self._share_threads()
            if self._admission or self.over_budget:
                self._room_changed()

    def _can_take(self, state: ModelState, ticket: asyncio.Future[None] | None = None) -> bool:
        worker = state.worker
        return (
            state.status == Status.LOADED
            and worker is not None
            and not worker.exited.is_set()
            and state.active < state.slots
            and (not state.draining or ticket in state.drain_allowed)
        )

    def _take(self, state: ModelState) -> Worker:
        assert state.worker is not None
        state.active += 1
        state.last_used, state.use_order = time.time(), next(self._uses)
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
                    if self._can_take(state, ticket):
                        return self._take(state)
                    self._progress(state, autoload)
                changed = state.changed
                left = deadline - loop.time()
                if left <= 0:
                    raise ServerBusy(
                        f"request waited {self.settings.queue_timeout:g}s for model "
                        f"'{state.id}' without getting a slot", retry_after=5.0,
                    )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            state.waiters.remove(ticket)
            state.drain_allowed.discard(ticket)
            self._waiting -= 1
            state.notify()
            if state.status == Status.WAITING and not state.wanted:
                self._withdraw(state)  # nobody waits for this load any more
            elif self._admission:
                self._admit()  # a draining model may be idle now

    def _check_queue(self, state: ModelState) -> None:
        retry = 1.0 if state.status == Status.LOADED else 5.0
        if len(state.waiters) >= self.settings.queue_per_model:
            raise QueueFull(
                f"too many requests are waiting for model '{state.id}' "
                f"({len(state.waiters)}); retry later", retry_after=retry,
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
                    "load it with POST /models/load", param="model",
                )  # fmt: skip
            self._check_fits(state)
            self._queue_load(state)

    def _check_fits(self, state: ModelState) -> None:
        """Refuse what surely cannot fit: measured, or estimated with an empty worker's memory
        only once one has been measured."""
        self._estimate(state)
        base = self._pool.base(state.source.engine) or 0
        need = state.measured_bytes or (state.model_bytes or 0) + base
        if need > self.budget:
            raise InsufficientMemory(
                f"model '{state.id}' needs about {need / MiB:.0f} MiB but the memory budget "
                f"is {self.budget / MiB:.0f} MiB"
            )

    # -- admission -----------------------------------------------------------------------------

    def request_load(self, name: str) -> ModelState:
        """Start loading `name` unless it is loaded, loading or waiting; returns at once. An
        explicit load also retries a model whose earlier load failed."""
        state = self.resolve(name)
        if state.source.error is not None:
            raise ModelLoadFailed(f"model '{state.id}' cannot be loaded: {state.source.error}")
        if state.status in (Status.UNLOADED, Status.ERROR, Status.WAITING, Status.LOADING):
            state.load_requested = True
        if state.status in (Status.UNLOADED, Status.ERROR):
            self._check_fits(state)
            state.sticky = False
            self._queue_load(state)
        return state

    def _queue_load(self, state: ModelState) -> None:
        check_available(state.source.engine)
        state.set_status(Status.WAITING)
        state.waiting_since = asyncio.get_running_loop().time()
        self._admission.append(state)
        position = len(self._admission)
        self._admit()
        if state.status == Status.WAITING:  # it did not start at once: say why
            self.events.publish("waiting", state.id, position=position)
            log.info("model %s waits for room to load (position %d; %.0f MiB needed, %.0f MiB "
                     "of %.0f MiB in use)", state.id, position, self._estimate(state) / MiB,
                     self.memory_used() / MiB, self.budget / MiB)  # fmt: skip

    def _residents(self) -> list[Resident]:
        return [
            Resident(s.id, s.memory_bytes or self._estimate(s), s.use_order, s.busy,
                     s.source.config.pin, settled=s.status == Status.LOADED,
                     leaving=s.status == Status.UNLOADING)
            for s in self.registry if s.status in RESIDENT
        ]  # fmt: skip

    def _admit(self) -> None:
        """Start the loads at the head of the admission queue that fit now; for the first that
        does not, evict and drain what policy.plan_admission says. Called on every change of
        room: a load ends, a worker stops or dies, a lease is released, a waiter leaves."""
        drain: tuple[str, ...] = ()
        while self._admission:
            head = self._admission[0]
            # The head's own spare becomes its worker: only the other engines' spares count.
            budget = self.budget - self._pool.memory(excluding=head.source.engine)
            plan = plan_admission(self._residents(), self._estimate(head), budget,
                                  self.settings.models_max)  # fmt: skip
            if plan.start or not any(s.status in RESIDENT for s in self.registry):
                # Alone it may still fit (its estimate has a margin, `_check_fits` let it
                # through): waiting could not help, so try; the measurement decides after.
                self._admission.popleft()
                self._start_load(head)
                continue
            for victim in plan.evict:
                self._begin_unload(self.registry[victim], f"evicted to make room for '{head.id}'")
            drain = plan.drain if self._patience_over(head) else ()
            break
        self._set_draining(drain)

    def _patience_over(self, head: ModelState) -> bool:
        """Whether the load at the head has waited `drain_after` for room: until then busy
        models go on serving new requests (a model swapped out after every request or two
        would spend the machine on loads); then they are drained for it. Sets a timer to
        decide again when the wait is over."""
        loop = asyncio.get_running_loop()
        due = head.waiting_since + self.settings.drain_after
        if loop.time() >= due:
            return True
        if self._patience is None or self._patience.when() > due:
            if self._patience is not None:
                self._patience.cancel()
            self._patience = loop.call_at(due, self._patience_due)
        return False

    def _patience_due(self) -> None:
        self._patience = None
        self._admit()

    def _withdraw(self, state: ModelState, reason: str = "load cancelled") -> None:
        """Take a load that has not started out of the admission queue."""
        if state in self._admission:
            self._admission.remove(state)
        state.load_requested = False
        state.set_status(Status.UNLOADED)
        self.events.publish("unloaded", state.id, reason=reason)
        log.info("model %s: load withdrawn (%s)", state.id, reason)
        self._admit()

    def _set_draining(self, ids: tuple[str, ...]) -> None:
        for state in self.registry:
            drain = state.id in ids and state.status == Status.LOADED
            if drain and not state.draining:
                state.draining = True
                state.drain_allowed = set(state.waiters)
                log.info("model %s drains: it serves its %d queued request(s), then makes room "
                         "for %s", state.id, len(state.waiters),
                         self._admission[0].id if self._admission else "a load")  # fmt: skip
            elif not drain and state.draining:
                state.draining = False
                state.drain_allowed.clear()
                state.notify()

    def _start_load(self, state: ModelState) -> None:
        state.set_status(Status.LOADING)
        self.events.publish("loading", state.id)
        state.load_task = asyncio.create_task(self._load(state), name=f"load-{state.id}")
        # Nobody awaits a load task: its outcome is in `state`; retrieve it so a failure does
        # not log "Task exception was never retrieved".
        state.load_task.add_done_callback(_outcome_seen)

    def _estimate(self, state: ModelState) -> int:
        """What `state` will hold once loaded: measured last time, else estimated (again once
        an empty worker of its engine has been measured)."""
        if state.model_bytes is None:
            state.model_bytes = estimate_model_bytes(state.source, self._options(state.source))
        base = self._pool.base(state.source.engine) or default_base(state.source.engine)
        state.estimated_bytes = state.model_bytes + base
        return state.estimate_bytes()

    # -- load, unload --------------------------------------------------------------------------

    async def _load(self, state: ModelState) -> Worker:
        source = state.source
        started = time.monotonic()
        try:
            try:
                worker = await self._pool.start(
                    source.engine, self._spec(source), timeout=self.settings.worker_start_timeout,
                    on_exit=self._worker_exited(state), on_info=self._worker_info(state),
                )  # fmt: skip
            finally:
                self._refill_spare(source.engine)
        except asyncio.CancelledError:
            state.set_status(Status.UNLOADED)
            self.events.publish("unloaded", state.id, reason="load cancelled")
            log.info("model %s: load cancelled", state.id)
            self._room_changed()
            raise
        except RouterError as exc:
            state.sticky = True
            state.set_status(Status.ERROR, exc.message)
            self.events.publish("error", state.id, error=exc.message)
            log.warning("model %s failed to load after %.2f s: %s", state.id,
                        time.monotonic() - started, exc.message)  # fmt: skip
            self._room_changed()
            raise
        finally:
            state.load_task = None
            state.load_requested = False
        state.worker = worker
        state.load_seconds = time.monotonic() - started
        state.loaded_at = state.last_used = time.time()
        state.use_order = next(self._uses)
        measured = worker.rss()
        state.memory_bytes = measured
        state.measured_bytes = measured or state.measured_bytes
        state.set_status(Status.LOADED)
        self.events.publish("loaded", state.id, load_seconds=round(state.load_seconds, 3),
                            memory_bytes=state.memory_bytes)  # fmt: skip
        log.info("model %s loaded in %.2f s: %s MiB measured, %.0f MiB estimated (%s, %s)",
                 state.id, state.load_seconds, _mib(measured), (state.estimated_bytes or 0) / MiB,
                 source.engine, source.format)  # fmt: skip
        self._schedule_idle_unload(state, None)
        self._reconcile(f"'{state.id}' measured {_mib(measured)} MiB after its load")
        self._room_changed()
        return worker

    def _options(self, source: ModelSource) -> dict[str, Any]:
        options = self.settings.model_defaults.merged(source.config.engine_options())
        return options.model_dump(exclude_none=True)

    def _spec(self, source: ModelSource) -> LoadSpec:
        info = source.info
        return LoadSpec(str(source.path), self._options(source),
                        info.architecture if info else None, info.finetune if info else None)  # fmt: skip

    def _reconcile(self, why: str) -> None:
        """Evict least recently used idle models while the measured use is over the budget;
        when nothing idle can go, say so (`over_budget`; admission waits meanwhile)."""
        budget = self.budget - self._pool.memory()
        victims, fits = reconcile(self._residents(), budget)
        for victim in victims:
            self._begin_unload(self.registry[victim], f"evicted: over the memory budget ({why})")
        if not fits and not self.over_budget:
            log.warning("memory in use (%.0f MiB) is over the budget (%.0f MiB) and no idle "
                        "model can be evicted; loads wait until it fits (%s)",
                        self.memory_used() / MiB, self.budget / MiB, why)  # fmt: skip
        self.over_budget = not fits

    def _room_changed(self) -> None:
        if self.over_budget:
            self._reconcile("a model went idle or away")
        self._admit()

    def _refill_spare(self, engine: str) -> None:
        """Start the next spare worker of `engine` if its memory fits beside what is held."""
        if self.memory_used() + (self._pool.base(engine) or 0) <= self.budget:
            self._pool.refill(engine)

    async def unload(self, name: str, reason: str = "requested") -> None:
        await self._unload(self.resolve(name), reason)

    def _begin_unload(self, state: ModelState, reason: str) -> None:
        """Mark `state` unloading now (so no other decision picks it again) and stop its
        worker in the background."""
        if state.status != Status.LOADED or state.worker is None:
            return
        state.set_status(Status.UNLOADING)
        self.events.publish("unloading", state.id, reason=reason)
        self._spawn(self._stop(state, reason))

    async def _unload(self, state: ModelState, reason: str) -> None:
        """Stop the model's worker after in-flight requests finish (up to `unload_grace`).
        Requests arriving meanwhile wait and then load it again. A waiting load is withdrawn,
        a running one cancelled."""
        if state.unload_handle is not None:
            state.unload_handle.cancel()
            state.unload_handle = None
        if state.status == Status.WAITING:
            self._withdraw(state, reason)
            return
        if state.status == Status.LOADING and state.load_task is not None:
            state.load_task.cancel()
            with contextlib.suppress(BaseException):
                await state.load_task
            return
        if state.status != Status.LOADED or state.worker is None:
            return
        state.set_status(Status.UNLOADING)
        self.events.publish("unloading", state.id, reason=reason)
        await self._stop(state, reason)

    async def _stop(self, state: ModelState, reason: str) -> None:
        worker = state.worker
        assert worker is not None
        log.info("model %s unloading (%s)%s", state.id, reason,
                 f", after its {state.active} request(s) in flight" if state.active else "")  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.unload_grace
        while state.active > 0 and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.changed.wait(), left)
        freed = state.memory_bytes
        await worker.stop()
        self._threads.forget(worker)
        state.worker = None
        state.memory_bytes = None
        state.loaded_at = None
        state.draining = False
        state.drain_allowed.clear()
        state.set_status(Status.UNLOADED)
        self.events.publish("unloaded", state.id, reason=reason)
        log.info("model %s unloaded in %.2f s (%s): %s MiB freed", state.id,
                 loop.time() - started, reason, _mib(freed))  # fmt: skip
        self._room_changed()

    def _worker_exited(self, state: ModelState) -> Callable[[Worker, str], None]:
        def on_exit(worker: Worker, reason: str) -> None:
            if worker.stopping or state.worker is not worker:
                return
            # Nobody else will stop a worker that died on its own: stop() closes its channel
            # (the socket would otherwise leak until garbage collection).
            self._spawn(worker.stop())
            self._threads.forget(worker)
            state.worker = None
            state.memory_bytes = None
            state.draining = False
            state.drain_allowed.clear()
            message = f"{reason}; the next request loads it again"
            state.set_status(Status.ERROR, message)
            self.events.publish("error", state.id, error=message)
            log.warning("model %s: %s", state.id, message)
            self._room_changed()

        return on_exit

    def _worker_info(self, state: ModelState) -> Callable[[Worker], None]:
        """Keep the model's memory figure live from the worker's snapshots (it grows as the
        first requests touch weights and buffers), and reconcile when it goes over."""

        def on_info(worker: Worker) -> None:
            rss = worker.info.get("rss")
            if state.worker is not worker or not isinstance(rss, int):
                return
            state.memory_bytes = rss
            state.measured_bytes = max(rss, state.measured_bytes or 0)
            if self.memory_used() > self.budget or self.over_budget:
                self._reconcile(f"'{state.id}' grew to {_mib(rss)} MiB")
                self._room_changed()

        return on_info

    # -- idle unload ---------------------------------------------------------------------------

    def _keep_alive(self, state: ModelState, requested: float | None) -> float | None:
        """Seconds idle before unload, None for never: pinned models never go; a request's own
        value (capped by `keep_alive_max`) applies after that request; else the model's, else
        the server's."""
        if state.source.config.pin:
            return None
        if requested is not None:
            cap = parse_duration(self.settings.keep_alive_max)
            seconds = requested if cap is None else min(requested, cap)
            return None if math.isinf(seconds) else seconds
        if state.source.config.keep_alive is not None:
            return parse_duration(state.source.config.keep_alive)
        return self._default_keep_alive

    def _schedule_idle_unload(self, state: ModelState, requested: float | None) -> None:
        if state.active or state.waiters or state.status != Status.LOADED:
            return
        seconds = self._keep_alive(state, requested)
        if state.unload_handle is not None:
            state.unload_handle.cancel()
            state.unload_handle = None
        if seconds is None:
            return
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


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / MiB:.0f}"
