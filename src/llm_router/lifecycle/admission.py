"""ModelManager's admission (a part of it, as a mixin): how a load gets room. A model that
must load goes to `waiting` at the back of the admission queue, holding nothing. `_admit`
looks at the head only (arrival order: no starvation) and starts it as soon as it fits beside
every resident; until then it evicts idle models, and after `drain_after` drains busy ones
(they serve what was queued for them, take no new requests, and are evicted once idle). Any
change of room calls `_admit` again. The decisions are policy.py's (pure); measured memory is
reconciled with the budget here. Runs on the event loop, as the whole manager does."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..engines import check_available
from ..errors import InsufficientMemory, ModelLoadFailed
from ..logs import fields
from ..worker.client import Worker
from .estimate import default_base, estimate_model_bytes
from .policy import Plan, Resident, pinned_out, plan_admission, reconcile
from .registry import RESIDENT, apply_source_error
from .state import ModelState, Status, Timer

if TYPE_CHECKING:
    from typing import Any

    from ..config import Settings
    from ..worker.pool import WorkerPool
    from .discovery import ModelSource
    from .registry import Registry
    from .state import EventBus

__all__ = ["Admission"]

log = logging.getLogger(__name__)
MiB = 2**20
# what holds a waiting load, by (models_max reached, memory short)
_LIMITS = {
    (True, False): "models_max",
    (False, True): "memory",
    (True, True): "models_max and memory",
}


class Admission:
    if TYPE_CHECKING:  # the manager's state and its other parts, for the type checker
        settings: Settings
        registry: Registry
        events: EventBus
        budget: int
        over_budget: bool
        _admission: deque[ModelState]
        _limits_drain: tuple[str, ...]  # busy models draining for lowered limits (_reconcile)
        _pool: WorkerPool
        _patience: Timer | None

        def resolve(self, name: str) -> ModelState: ...
        def memory_used(self) -> int: ...
        def _options(self, source: ModelSource) -> dict[str, Any]: ...
        def _begin_unload(self, state: ModelState, reason: str) -> None: ...
        def _load_cancelled(self, state: ModelState) -> None: ...
        async def _load(self, state: ModelState) -> Worker: ...

    def _check_fits(self, state: ModelState) -> None:
        """Refuse what surely cannot fit (its least need: measured, or its file with an empty
        worker's memory once one has been measured), and what cannot fit beside the pinned
        models by its estimate (`_pinned_out`)."""
        need = self._estimate(state)  # also reads the file's size, which the least need takes
        least = self._least_need(state)
        if least > self.budget:
            raise InsufficientMemory(
                f"model '{state.id}' needs about {least / MiB:.0f} MiB but the memory budget "
                f"is {self.budget / MiB:.0f} MiB; to load it, raise memory_budget"
            )
        pins = self._pinned_out(state, need)
        if not pins:
            return
        names = ", ".join(r.id for r in pins)
        models_max = self.settings.models_max
        if models_max and len(pins) + 1 > models_max:
            raise InsufficientMemory(
                f"model '{state.id}' cannot load beside the pinned models ({names}): they are "
                f"{len(pins)} of the {models_max} models models_max allows; unpin one or raise "
                "models_max"
            )
        raise InsufficientMemory(
            f"model '{state.id}' cannot load beside the pinned models ({names}): it needs about "
            f"{need / MiB:.0f} MiB (estimated) and they hold {sum(r.bytes for r in pins) / MiB:.0f} "
            f"of the {self.budget / MiB:.0f} MiB memory budget; unpin one or raise memory_budget"
        )

    def _fits_beside(self, state: ModelState) -> bool:
        """Whether a load of `state` would start at once, beside every resident: no load
        waits before it and nothing would be evicted or drained for it (spare workers may
        be: they are a cache)."""
        if self._admission:
            return False
        need, residents = self._estimate(state), self._residents()
        return plan_admission(residents, need, self.budget, self.settings.models_max).start

    def _least_need(self, state: ModelState) -> int:
        """What `state` needs at least: measured, else its file with an empty worker's memory
        once one of its engine has been measured."""
        base = self._pool.base(state.source.engine) or 0
        return state.measured_bytes or (state.model_bytes or 0) + base

    def _pinned_out(self, state: ModelState, need: int) -> list[Resident]:
        """The pinned models beside which `state`, needing `need` bytes (its estimate), can
        never load (empty when it can): waiting for room would wait until the configuration
        changes, however many other models leave (it waited for ever, blocking the loads
        queued behind it: found by the storm's property test, then from outside). An estimate
        that is too high refuses what would fit; the budget is a promise, a wait for ever
        keeps none."""
        pins = [r for r in self._residents() if r.pinned and not r.leaving and r.id != state.id]
        models_max = self.settings.models_max
        if not pins or not pinned_out(pins, need, self.budget, models_max):
            return []
        if not (models_max and len(pins) + 1 > models_max) and not all(r.settled for r in pins):
            # Out by memory while a pin still loads: it counts at its estimate until measured
            # (all-MiniLM's 461 MiB estimated, 191 measured, refused a model at cold start
            # that loaded a second later); `_admit` asks again once the pin has loaded.
            return []
        return pins

    def request_load(self, name: str, reason: str = "requested") -> ModelState:
        """Start loading `name` unless it is loaded, loading or waiting; returns at once. An
        explicit load also retries a model whose earlier load failed, and one being unloaded
        loads again once the unload is over (it was dropped). `reason`: "requested"
        (POST /models/load) or "preload" (at start: `preload`, `pin`), on the load's events
        and metrics."""
        state = self.resolve(name)
        if state.source.error is not None:
            reason = state.source.public(state.source.error)  # no paths for clients
            raise ModelLoadFailed(f"model '{state.id}' cannot be loaded: {reason}")
        queue = state.status in (Status.UNLOADED, Status.ERROR)
        if queue:
            self._check_fits(state)  # before anything changes: a refused load leaves no trace
        if queue or state.status in (Status.WAITING, Status.LOADING, Status.UNLOADING):
            state.load_requested = True  # unloading: loaded again once it is over (_stop)
        if queue:
            state.sticky = False
            self._queue_load(state, reason)
        return state

    def _queue_load(self, state: ModelState, reason: str) -> None:
        check_available(state.source.engine)
        state.load_reason = reason
        state.set_status(Status.WAITING)
        state.waiting_since = asyncio.get_running_loop().time()
        self._admission.append(state)
        position = len(self._admission)
        self._admit()
        if state.status == Status.WAITING:  # it did not start at once: say why
            self.events.publish("waiting", state.id, position=position)
            self._say_waiting(state, position)

    def _say_waiting(self, state: ModelState, position: int) -> None:
        """The line of a load that waits for room, naming the limit that holds it: models_max,
        the memory budget or both (a wait for models_max alone was told in memory terms;
        "queue": it waits behind another load)."""
        need, used, budget = self._estimate(state), self.memory_used(), self.budget
        models, models_max = len(self._residents()), self.settings.models_max
        full = bool(models_max) and models >= models_max
        short = used + need > budget
        reason = _LIMITS.get((full, short), "queue")
        said = [
            f"{need / MiB:.0f} MiB needed, {used / MiB:.0f} MiB of {budget / MiB:.0f} MiB in use"
        ]
        if full:
            count = f"models_max reached: {models} of {models_max} models loaded or (un)loading"
            said = [count, *said] if short else [count]
        log.info(
            "model %s waits for room to load (position %d; %s)",
            state.id,
            position,
            "; ".join(said),
            extra=fields(
                event="waiting",
                model=state.id,
                position=position,
                reason=reason,
                needed_bytes=need,
                used_bytes=used,
                budget_bytes=budget,
                models=models,
                models_max=models_max or None,
            ),
        )

    def _residents(self) -> list[Resident]:
        gone = self.registry.leaving  # dropped from the registry, their workers still running
        now, serve = asyncio.get_running_loop().time(), self.settings.drain_after
        return [
            Resident(
                s.id,
                s.memory_bytes or self._estimate(s),
                s.use_order,
                s.busy,
                s.source.config.pin,
                settled=s.status == Status.LOADED,
                leaving=s.status == Status.UNLOADING or s in gone,
                # as `_wake_at` computes its due time: at that time it is not new (a float
                # rounded otherwise woke the loop again and again at the same time)
                new=s.status == Status.LOADED and now < s.up_since + serve and s not in gone,
            )
            for s in (*self.registry, *gone)
            if s.status in RESIDENT
        ]

    def _admit(self) -> None:
        """Start the loads at the head of the admission queue that fit now; for the first that
        does not, evict and drain what policy.plan_admission says. Called on every change of
        room: a load ends, a worker stops or dies, a lease is released, a waiter leaves."""
        drain: tuple[str, ...] = ()
        while self._admission:
            head = self._admission[0]
            need, models_max = self._estimate(head), self.settings.models_max
            if self._pinned_out(head, need):
                # Queued while a pinned model was away (its worker died, it was unloaded):
                # now that it is back, the wait could only end with a configuration change.
                self._admission.popleft()
                self._drop(head, "it cannot load beside the pinned models")
                continue
            # The head's own spare becomes its worker: only the other engines' spares count,
            # and only while they are in nobody's way (they are a cache; models come first).
            # Those in the way are stopped, and the load starts once they have exited (it
            # started at once, beside a spare still importing torch: found from outside).
            engine = head.source.engine
            residents = self._residents()
            spares, stopping = self._pool.memory(engine), self._pool.stopping()
            plan = plan_admission(residents, need, self.budget - spares, models_max)
            if not plan.start and spares > stopping:
                without = plan_admission(residents, need, self.budget - stopping, models_max)
                if without.start or without.evict or without.drain or not residents:
                    self._drop_spares(engine, f"to make room for '{head.id}'")
                    plan = Plan(False, without.evict, without.drain)  # `on_change` decides
            if plan.start or not (residents or self._pool.memory(engine)):
                # Alone it may still fit (its estimate has a margin, `_check_fits` let it
                # through): waiting could not help, so try; the measurement decides after.
                self._admission.popleft()
                self._start_load(head)
                continue
            for victim in plan.evict:
                self._begin_unload(self.registry[victim], f"evicted to make room for '{head.id}'")
            drain = plan.drain if self._patience_over(head) else ()
            if any(r.new for r in residents):  # decide again once they have served a while
                self._wake_at(min(self.registry[r.id].up_since for r in residents if r.new))
            break
        self._set_draining((*drain, *self._limits_drain))

    def _patience_over(self, head: ModelState) -> bool:
        """Whether the load at the head has waited `drain_after` for room: until then busy
        models go on serving new requests (a model swapped out after every request or two
        would spend the machine on loads); then they are drained for it. Sets a timer to
        decide again when the wait is over."""
        due = head.waiting_since + self.settings.drain_after
        if asyncio.get_running_loop().time() >= due:
            return True
        self._wake_at(head.waiting_since)
        return False

    def _wake_at(self, since: float) -> None:
        """`_admit` again `drain_after` after `since` (event-loop time), unless it is due
        sooner already."""
        due = since + self.settings.drain_after
        if self._patience is None or self._patience.when > due:
            if self._patience is not None:
                self._patience.cancel()
            self._patience = Timer.at(due, self._patience_due)

    def _patience_due(self) -> None:
        self._patience = None
        self._admit()

    def _withdraw(self, state: ModelState, reason: str = "load cancelled") -> None:
        """Take a load that has not started out of the admission queue."""
        if state in self._admission:
            self._admission.remove(state)
        self._drop(state, reason)
        self._admit()

    def _drop(self, state: ModelState, reason: str) -> None:
        """A load taken out of the queue goes back to `unloaded`; its waiters wake up and ask
        again (and are told why it cannot load, if it cannot)."""
        state.load_requested = False
        state.set_status(Status.UNLOADED)
        self.events.publish("unloaded", state.id, reason=reason)
        apply_source_error(state, self.events)
        log.info(
            "model %s: load withdrawn (%s)",
            state.id,
            reason,
            extra=fields(event="withdrawn", model=state.id, reason=reason),
        )

    def _set_draining(self, ids: tuple[str, ...]) -> None:
        for state in self.registry:
            drain = state.id in ids and state.status == Status.LOADED
            if drain and not state.draining:
                state.draining = True
                state.drain_allowed = set(state.waiters)
                log.info(
                    "model %s drains: it finishes its %d running and %d queued request(s), "
                    "then makes room for %s",
                    state.id,
                    state.active,
                    len(state.waiters),
                    self._drained_for(state),
                    extra=fields(
                        event="draining",
                        model=state.id,
                        active=state.active,
                        queued=len(state.waiters),
                    ),
                )
            elif not drain and state.draining:
                state.draining = False
                state.drain_allowed.clear()
                state.notify()

    def _drained_for(self, state: ModelState) -> str:
        """What a draining model makes room for, for its log line."""
        if state.id in self._limits_drain:
            return "the lowered limits"
        return self._admission[0].id if self._admission else "a load"

    def _start_load(self, state: ModelState) -> None:
        state.set_status(Status.LOADING)
        self.events.publish("loading", state.id, reason=state.load_reason)
        state.load_task = asyncio.create_task(self._load(state), name=f"load-{state.id}")
        # Nobody awaits a load task: its outcome is in `state`; retrieve it so a failure does
        # not log "Task exception was never retrieved".
        state.load_task.add_done_callback(_outcome_seen)
        state.load_task.add_done_callback(functools.partial(self._load_done, state))

    def _load_done(self, state: ModelState, task: asyncio.Task[Worker]) -> None:
        """A load cancelled before its task first ran never reached `_load`'s own handling
        (an unload in the same turn of the loop as the request that queued it): it would
        stay `loading` for ever, its requests waiting out their queue timeout."""
        if task.cancelled() and state.load_task is task:
            state.load_task = None
            state.load_requested = False
            self._load_cancelled(state)

    def _estimate(self, state: ModelState) -> int:
        """What `state` will hold once loaded: measured last time, else estimated (again once
        an empty worker of its engine has been measured)."""
        if state.model_bytes is None:
            state.model_bytes = estimate_model_bytes(state.source, self._options(state.source))
        base = self._pool.base(state.source.engine) or default_base(state.source.engine)
        state.estimated_bytes = state.model_bytes + base
        return state.estimate_bytes()

    def _reconcile(self, why: str) -> None:
        """Evict least recently used idle models while the measured use is over the budget,
        or more models are resident than `models_max` (lowered by a reload); when nothing idle
        can go, say so (`over_budget`; admission waits meanwhile, and each model going idle
        decides again) and drain busy ones (least recently used first) until they would fit:
        under steady traffic a busy model is never idle, and the limit never held."""
        residents, models_max = self._residents(), self.settings.models_max
        # spares already stopping are as good as gone: no model is evicted for them
        spares = self._pool.memory() - self._pool.stopping()
        done = reconcile(residents, self.budget - spares, models_max)
        if (done.evict or not done.fits) and spares:  # the spares go first
            self._drop_spares(None, f"over the limits ({why})")
            done = reconcile(residents, self.budget, models_max)
        victims, fits = done.evict, done.fits
        self._limits_drain = done.drain
        for victim in victims:
            self._begin_unload(self.registry[victim], f"evicted: over the limits ({why})")
        if not fits and not self.over_budget:
            log.warning(
                "memory in use (%.0f MiB of a %.0f MiB budget) or models loaded (models_max "
                "%d) over the limits and no idle model can be evicted; loads wait until it "
                "fits (%s)",
                self.memory_used() / MiB,
                self.budget / MiB,
                self.settings.models_max,
                why,
            )
        self.over_budget = not fits

    def _room_changed(self) -> None:
        if self.over_budget:
            self._reconcile("a model went idle or away")
        self._admit()

    def _drop_spares(self, excluding: str | None, why: str) -> None:
        dropped = self._pool.drop(excluding)
        if dropped:
            log.info("stopped the spare workers of %s %s", ", ".join(sorted(dropped)), why)

    def _refill_spare(self, engine: str) -> None:
        """Start the next spare worker of `engine` if its memory fits beside what is held and
        a model of `engine` can load within the budget by its estimate: a spare no model can
        use only takes room (a transformers spare, ~250 MiB, in a 900 MiB budget that no
        transformers model of the directory fits)."""
        if self.memory_used() + self._pool.size(engine) > self.budget:
            return
        models = [s for s in self.registry if s.source.engine == engine and not s.source.error]
        if any(self._estimate(s) <= self.budget for s in models):
            self._pool.refill(engine)


def _outcome_seen(task: asyncio.Task[Worker]) -> None:
    if not task.cancelled():
        task.exception()
