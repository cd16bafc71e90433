"""The model lifecycle: load on demand (one load shared by every waiter), bounded FIFO queues
(leases.py), admission of loads in arrival order under a count and a measured memory budget
with eviction of least recently used idle models (admission.py), idle unload, crash recovery.

Everything runs on the event loop; state changes happen between awaits, so a decision and its
first effect (e.g. marking a victim `unloading`) are never interleaved with another decision.
A request for a loaded model with a free slot never waits on another model's load or
eviction, unless that model is draining for a load that arrived first."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..engines import LoadSpec, check_available
from ..errors import (
    LoadInterrupted,
    ModelNotFound,
    RouterError,
)
from ..logs import fields
from ..machine import Machine, available_memory, detect
from ..units import parse_bytes, parse_duration
from ..worker.client import Worker
from ..worker.pool import WorkerPool
from .admission import Admission
from .contents import Contents
from .discovery import Identity, ModelSource, Scanner, identity_of
from .estimate import default_base
from .fit import Fitted, fit
from .leases import Leases
from .reconfigure import Reconfiguration
from .registry import Registry, apply_source_error
from .state import EventBus, ModelSnapshot, ModelState, Status, Timer
from .stops import MiB, Stops, cut_by_shutdown, mib
from .threads import ThreadBudget

__all__ = ["ModelManager"]

log = logging.getLogger(__name__)


class ModelManager(Leases, Admission, Reconfiguration, Stops):
    """Owns every model's state and worker. Its parts: leases.py (slots, queues, keep-alive),
    admission.py (room, eviction, draining, the memory budget), reconfigure.py (new settings
    while serving), stops.py (unloads, workers that die, what they report); here, start and
    close, discovery and loads."""

    def __init__(
        self,
        settings: Settings,
        scanner: Scanner | None = None,
        *,
        pool: WorkerPool | None = None,
    ) -> None:
        self.settings = settings
        self.events = EventBus(max_subscribers=settings.max_event_subscribers)
        # Told how long each lease waited for its slot (and load): the queue-wait metric.
        self.observe_wait: Callable[[str, float], None] = lambda model, seconds: None
        # what a percentage is of: available memory, within a container's limit if lower
        self.memory_base = available_memory()[1]
        self.budget = parse_bytes(settings.memory_budget, self.memory_base)
        self._default_keep_alive = parse_duration(settings.keep_alive)
        self.registry = Registry(scanner or Scanner(settings), self.events)
        self.over_budget = False  # measured use is over the budget and nothing idle can go
        self._limits_drain: tuple[str, ...] = ()  # busy models drained for it (admission.py)
        self._waiting = 0
        self._admission: deque[ModelState] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._pool = pool or WorkerPool(settings.spare_workers)
        self._pool.on_change = self._room_changed  # estimates improve, a spare exited
        self._pool.guess = default_base  # what a spare still starting counts
        self.machine: Machine = detect()  # cores, memory, CPU features: lifecycle/fit.py
        log.info("machine: %s", self.machine.summary())
        self._threads = ThreadBudget(settings.thread_budget or self.machine.physical_cores)
        self._scanned = -math.inf  # monotonic time of the last scan
        self._patience: Timer | None = None  # see _patience_over
        self._uses = itertools.count(1)  # orders uses for LRU (wall clocks can tie or step back)
        self.contents = Contents()  # content hashes, shared with the response cache
        self._comparing: dict[ModelState, Identity] = {}  # touched files compared now

    # -- start, stop, discovery --------------------------------------------------------------

    async def start(self) -> None:
        self.refresh(force=True)
        if self.settings.watch_interval > 0:
            self._watcher = asyncio.create_task(self._watch(), name="models-watch")
        for engine in {s.source.engine for s in self.registry if not s.source.error}:
            with contextlib.suppress(RouterError):
                check_available(engine)
                self._refill_spare(engine)
        self._pool.release_early()  # those of engines given no spare: none of it fits, or no room
        for state in self._preloads():
            try:
                self.request_load(state.id, reason="preload")
            except RouterError as exc:  # the server serves the rest; its status says why
                log.warning(
                    "model %s is not preloaded: %s",
                    state.id,
                    exc.message,
                    extra=fields(event="not_preloaded", model=state.id, error=exc.message),
                )

    def _preloads(self) -> list[ModelState]:
        """The pinned models, then `preload` in its order (ids or aliases: Registry.kept), at
        most `models_max` of them: more would load only to evict each other (found from
        outside: three loads for one model kept, in no particular order). A name that is no
        model is said by the registry's `warnings`."""
        wanted = self.registry.kept()
        most = self.settings.models_max
        if most and len(wanted) > most:
            log.warning(
                "preload and pin name %d models but models_max is %d: preloading %s; the "
                "others load on their first request",
                len(wanted),
                most,
                ", ".join(s.id for s in wanted[:most]),
            )
            wanted = wanted[:most]
        return wanted

    async def close(self) -> None:
        self._closing = True  # a worker dying now (stopped with the others) is not restarted
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
        states = (*self.registry, *self.registry.leaving)
        workers = [s.worker for s in states if s.worker is not None]
        await asyncio.gather(
            *(w.stop(timeout=2.0, cut=cut_by_shutdown) for w in workers), return_exceptions=True
        )
        await self._pool.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                self.refresh(force=True)
            except Exception:  # a scan error must never stop discovery
                log.exception("models directory scan failed")

    def refresh(self, *, force: bool = False) -> None:
        """Re-scan the models directory (registry.py); what changed or went away is unloaded,
        and a pinned or preloaded model whose file changed loads again at once, as on a
        reload (it stayed unloaded until a request came: found from outside). Unless
        `force`d, at most once per `watch_interval` (and second): unknown names and model
        listings, which any client can send in a loop, cost at most that."""
        now = time.monotonic()
        if not force and now - self._scanned < (self.settings.watch_interval or 1.0):
            return
        self._scanned = now
        for state, reason in self.registry.refresh():
            self._replace(state, reason)
        self._compare_touched()

    def _compare_touched(self) -> None:
        """Compare the bytes of each loaded model's touched files (registry.py `touched`: a
        new mtime, the same size) with its worker's, in the background, once for each
        identity: a `touch`, `rsync -t` or a backup tool unloaded a busy model, cutting its
        streams, for the same bytes (found from outside)."""
        for state, identity in self.registry.touched.items():
            if self._comparing.get(state) != identity:
                self._comparing[state] = identity
                self._spawn(self._compare(state, identity))

    async def _compare(self, state: ModelState, identity: Identity) -> None:
        """Hash `state`'s files at `identity` (in a thread, about a second per GB, once per
        file state: lifecycle/contents.py) and settle: the same bytes keep it loaded, others
        unload it as any change does. Meanwhile it serves on from the bytes its worker read:
        the same ones when only touched; the old weights, for as long as the hash takes,
        when they changed (as requests in flight get `unload_grace` of them)."""
        loaded = state.loaded_content
        same = False
        try:
            if loaded is not None:
                was = await asyncio.shield(loaded)
                size, mtime, now = await self.contents.of(state.source.path)
                same = was == now and (size, mtime) == (identity.size_bytes, identity.mtime_ns)
        except OSError:  # gone or unreadable: the next scan says which
            pass
        finally:
            if self._comparing.get(state) == identity:
                del self._comparing[state]
        if same and self.registry.touched.get(state) == identity:
            state.loaded_mtime_ns = identity.mtime_ns  # the files as its worker read them
            log.info("model %s: its file was touched (new mtime, same bytes): kept", state.id)
        for changed, reason in self.registry.settle(state, identity, same):
            self._replace(changed, reason)

    def _hash_loaded(self, source: ModelSource) -> asyncio.Task[str | None]:
        """The content hash of the files a worker just loaded, in the background (the page
        cache holds them now); None when they changed since they were scanned."""

        async def hashed() -> str | None:
            size, mtime, content = await self.contents.of(source.path)
            same = (size, mtime) == (source.identity.size_bytes, source.identity.mtime_ns)
            return content if same else None

        task = asyncio.create_task(hashed())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read: not logged
        return task

    # -- lookups -------------------------------------------------------------------------------

    def states(self) -> list[ModelState]:
        return self.registry.sorted()

    def resolve(self, name: str) -> ModelState:
        """The model called `name` (id or alias); re-scans once before giving up, and at
        once when its files were unusable at the last scan and have changed since (a copy
        that finished in between: a load right after it failed on the stale scan)."""
        for attempt in range(2):
            state = self.registry.get(name)
            if state is not None:
                source = state.source
                if attempt or source.error is None:
                    return state
                now = identity_of(source.path)
                if now is None or now == source.identity:  # gone, or as it was read
                    return state
                self.refresh(force=True)
                continue
            if attempt == 0:
                self.refresh()
        raise ModelNotFound(f"The model '{name}' does not exist", param="model", name=name)

    @property
    def waiting(self) -> int:
        return self._waiting

    def snapshots(self) -> list[ModelSnapshot]:
        """Every model's state now, by id."""
        return [self.snapshot(s) for s in self.registry.sorted()]

    def snapshot(self, state: ModelState) -> ModelSnapshot:
        worker = state.worker
        return ModelSnapshot(
            state.source,
            state.status,
            state.error,
            self.queue_position(state),
            state.draining,
            state.memory_bytes,
            self._estimate(state),
            state.last_used or None,
            state.loaded_at,
            state.load_seconds,
            state.active,
            len(state.waiters),
            dict(worker.info) if worker else None,
            unload_at=_unload_at(state.unload_handle),
            counters=state.counters(),
        )

    def queue_position(self, state: ModelState) -> int | None:
        """1 for the load admitted next; None when `state` is not waiting for room."""
        with contextlib.suppress(ValueError):
            return self._admission.index(state) + 1
        return None

    def memory_used(self) -> int:
        """Bytes held now: every resident model (measured, or estimated while loading) and the
        spare workers."""
        return sum(r.bytes for r in self._residents()) + self._pool.memory()

    # -- load, unload --------------------------------------------------------------------------

    async def _load(self, state: ModelState) -> Worker:
        source, variant = state.source, state.variant
        started = time.monotonic()
        state.loaded_content = None
        try:
            try:
                worker = await self._pool.start(
                    source.engine,
                    self._spec(source),
                    timeout=self.settings.worker_start_timeout,
                    on_exit=self._worker_exited(state),
                    on_info=self._worker_info(state, variant),
                )
            finally:
                self._refill_spare(source.engine)
        except asyncio.CancelledError:
            self._load_cancelled(state)
            raise
        except RouterError as exc:
            state.sticky = not isinstance(exc, LoadInterrupted)  # no autoload retry: its file
            state.failed_at = asyncio.get_running_loop().time()
            state.set_status(Status.ERROR, exc.message)
            self.events.publish("error", state.id, error=state.error)
            took = time.monotonic() - started
            log.warning(
                "model %s failed to load after %.2f s: %s",
                state.id,
                took,
                exc.message,
                extra=fields(
                    event="load_failed",
                    model=state.id,
                    duration_s=round(took, 3),
                    error=exc.message,
                    reason=state.load_reason,
                ),
            )
            self._room_changed()
            raise
        finally:
            state.load_task = None
            state.load_requested = False
        state.worker = worker
        state.loaded_mtime_ns = source.identity.mtime_ns  # the files as this worker read them
        state.loaded_content = self._hash_loaded(source)
        state.load_seconds = time.monotonic() - started
        state.loaded_at = state.last_used = time.time()
        state.up_since = asyncio.get_running_loop().time()
        state.use_order = next(self._uses)
        measured = worker.rss()
        state.memory_bytes = measured
        if state.variant == variant:  # else its files changed as it loaded: it unloads
            state.measured_bytes = measured or state.measured_bytes
        state.set_status(Status.LOADED)
        self.events.publish(
            "loaded",
            state.id,
            load_seconds=round(state.load_seconds, 3),
            memory_bytes=state.memory_bytes,
            reason=state.load_reason,
        )
        log.info(
            "model %s loaded in %.2f s: %s MiB measured, %.0f MiB estimated (%s, %s)",
            state.id,
            state.load_seconds,
            mib(measured),
            (state.estimated_bytes or 0) / MiB,
            source.engine,
            source.format,
            extra=fields(
                event="loaded",
                model=state.id,
                duration_s=round(state.load_seconds, 3),
                bytes=measured,
                estimated_bytes=state.estimated_bytes,
                engine=source.engine,
                format=source.format,
                reason=state.load_reason,
            ),
        )
        state.keep_alive_asked = None  # a new life: no request has asked anything of it yet
        self._schedule_idle_unload(state, None)
        self._reconcile(f"'{state.id}' measured {mib(measured)} MiB after its load")
        self._room_changed()
        return worker

    def _load_cancelled(self, state: ModelState) -> None:
        state.set_status(Status.UNLOADED)
        removed = self.registry.forget(state)
        self.events.publish("unloaded", state.id, reason="load cancelled")
        apply_source_error(state, self.events)  # cancelled as its files broke (registry.refresh)
        if removed:
            self.events.publish("removed", state.id)
        log.info(
            "model %s: load cancelled",
            state.id,
            extra=fields(event="load_cancelled", model=state.id),
        )
        self._room_changed()

    def _options(self, source: ModelSource) -> dict[str, Any]:
        return self.fitted(source).options

    def fitted(self, source: ModelSource) -> Fitted:
        """The engine options for `source`: configured, else derived from the machine."""
        options = self.settings.model_defaults.merged(source.config.engine_options())
        return fit(source, options.model_dump(exclude_none=True), self.budget, self.machine)

    def _spec(self, source: ModelSource) -> LoadSpec:
        info = source.info
        return LoadSpec(
            str(source.path),
            self._options(source),
            info.architecture if info else None,
            info.finetune if info else None,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unload_at(timer: Timer | None) -> float | None:
    """The wall-clock time an idle-unload timer fires (timers run on the monotonic clock)."""
    if timer is None or timer.cancelled():
        return None
    return time.time() + timer.when - time.monotonic()
