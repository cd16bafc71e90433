"""ModelManager's leases (a part of it, as a mixin): a request holds one slot of a model for
its duration; requests wait in a bounded FIFO queue per model while it has no free slot, with
a deadline; the first waiter moves the model towards `loaded` (admission.py). After a lease,
the idle timer (keep_alive) is set. Runs on the event loop, as the whole manager does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    BadRequest,
    LoadInterrupted,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotLoaded,
    QueueFull,
    ServerBusy,
)
from ..types import Answers
from ..units import parse_duration
from ..worker.client import Worker
from .registry import RESIDENT
from .state import ModelState, Status, Timer

if TYPE_CHECKING:
    from ..config import Settings
    from .registry import Registry
    from .threads import ThreadBudget

__all__ = ["Leases"]


class Leases:
    if TYPE_CHECKING:  # the manager's state and its other parts, for the type checker
        settings: Settings
        registry: Registry
        over_budget: bool
        _waiting: int
        _admission: deque[ModelState]
        _threads: ThreadBudget
        _uses: itertools.count[int]
        _default_keep_alive: float | None
        observe_wait: Callable[[str, float], None]

        def resolve(self, name: str) -> ModelState: ...
        def _room_changed(self) -> None: ...
        def _admit(self) -> None: ...
        def _withdraw(self, state: ModelState, reason: str = ...) -> None: ...
        def _check_fits(self, state: ModelState) -> None: ...
        def _fits_beside(self, state: ModelState) -> bool: ...
        def _queue_load(self, state: ModelState, reason: str) -> None: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _unload(self, state: ModelState, reason: str) -> None: ...

    @contextlib.asynccontextmanager
    async def lease(
        self,
        name: str,
        *,
        autoload: bool | None = None,
        keep_alive: float | None = None,
        answers: Answers | None = None,
        evict: bool = True,
    ) -> AsyncIterator[Worker]:
        """Hold one slot of model `name` for the duration of the block, loading it first if
        needed. `autoload=False` refuses to load (a request may turn autoload off, never on);
        `keep_alive` is this request's idle time before unload (math.inf: never; None: the
        model's or the server's), capped by the configured maximum; the latest request to come
        sets it, as in Ollama (it was the last to finish: a short request asking for an hour,
        done while a stream that asked for 0 went on, was forgotten). `answers`: this is one
        of a request's several answers, each leasing a slot (see `_acquire`). `evict=False`:
        a model that is not loaded is loaded only when it fits beside the loaded ones, nothing
        evicted nor drained for it (else ModelNotLoaded: the semantic cache's lookup, which
        swapped the chat model out on every miss under `models_max: 1`). Raises
        ModelNotFound, ModelNotLoaded, ModelLoadFailed, InsufficientMemory, QueueFull (429),
        ServerBusy (503), or BadRequest when `answers` are more than the model's slots and
        queue can ever hold. Cancelling while queued gives the place up; a load nobody waits
        for any more is withdrawn if it has not started."""
        state = self.resolve(name)
        autoload = self.settings.autoload and autoload is not False
        worker = await self._acquire(state, autoload, answers, evict)
        state.keep_alive_asked = keep_alive  # the latest request's (in the order they got in)
        if answers is not None:
            state.held[answers] = state.held.get(answers, 0) + 1
        try:
            yield worker
        finally:
            if answers is not None:
                if state.held[answers] == 1:
                    del state.held[answers]
                else:
                    state.held[answers] -= 1
            state.active -= 1
            state.last_used, state.use_order = time.time(), next(self._uses)
            state.notify()
            self._schedule_idle_unload(state, state.keep_alive_asked)
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
        state.cancel_idle_unload()
        self._share_threads()
        return state.worker

    def _share_threads(self) -> None:
        """Split the cores among the models generating now (see lifecycle/threads.py)."""
        default = self.settings.model_defaults.threads
        busy = [
            (s.worker, s.source.config.threads or default)
            for s in self.registry
            if s.active > 0 and s.worker is not None
        ]
        self._threads.apply(busy)

    async def _acquire(
        self, state: ModelState, autoload: bool, answers: Answers | None = None, evict: bool = True
    ) -> Worker:
        """A slot, after a wait in the model's queue of at most `queue_timeout`. A request's
        answers past the model's slots wait for its own others to end: that time does not
        count (with n=3 on 2 slots, the third answer timed out behind the first two). Answers
        that can never fit are refused before any of them takes a slot (the third of n=3 on
        one slot and a queue of one found it after the first had generated: found from
        outside, its tokens charged for a 400)."""
        if answers is not None:
            self._check_room(state, answers.count)
        if not state.waiters and self._can_take(state):
            self.observe_wait(state.id, 0.0)
            return self._take(state)
        if state.status in RESIDENT:
            # Loaded, but it no longer fits the limits (a lower budget): it drains, and no
            # wait can bring it back (it waited out queue_timeout for a 503 saying retry,
            # and got the 507 once the drain was over: found from outside).
            self._check_fits(state)
        self._check_queue(state, answers)
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.settings.queue_timeout
        ticket: asyncio.Future[None] = loop.create_future()
        state.waiters.append(ticket)
        self._waiting += 1
        taken = False
        try:
            while True:
                if not self.registry.holds(state):  # gone: a reload, a file removed
                    raise ModelNotFound(f"The model '{state.id}' does not exist", param="model")
                if state.waiters[0] is ticket:
                    if self._can_take(state, ticket):
                        taken = True
                        return self._take(state)
                    self._progress(state, autoload, began, evict)
                changed = state.changed
                if answers is not None and answers in state.held:  # behind its own answers
                    deadline = loop.time() + self.settings.queue_timeout
                left = deadline - loop.time()
                if left <= 0:
                    raise ServerBusy(
                        f"request waited {self.settings.queue_timeout:g}s for model "
                        f"'{state.id}' without getting a slot",
                        retry_after=5.0,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            self.observe_wait(state.id, loop.time() - began)
            state.waiters.remove(ticket)
            state.drain_allowed.discard(ticket)
            self._waiting -= 1
            state.notify()
            try:
                if state.status == Status.WAITING and not state.wanted:
                    self._withdraw(state)  # nobody waits for this load any more
                elif self._admission:
                    self._admit()  # a draining model may be idle now
            except BaseException:
                if taken:  # the caller never gets the slot to give back: a slot lost for good
                    state.active -= 1  # would keep the model busy, never evicted or drained
                    state.notify()
                raise

    def _check_queue(self, state: ModelState, answers: Answers | None = None) -> None:
        retry = 1.0 if state.status == Status.LOADED else 5.0
        full = len(state.waiters) >= self.settings.queue_per_model
        if answers is not None and (full or self._waiting >= self.settings.queue_total):
            self._check_room(state, answers.count)  # a 400 when no wait can help
        if full:
            raise QueueFull(
                f"too many requests are waiting for model '{state.id}' "
                f"({len(state.waiters)}); retry later",
                retry_after=retry,
            )
        if self._waiting >= self.settings.queue_total:
            raise ServerBusy(
                f"the server is full ({self._waiting} requests waiting); retry later",
                retry_after=retry,
            )

    def _check_room(self, state: ModelState, count: int) -> None:
        """BadRequest when a request's `count` answers are more than the model's slots and
        its queue hold together: no retry can pass (it was a 429 that the openai client
        retried). Unknown until it loads when no `parallel` is configured (the engine's own
        default): a 429 then, and this once it has loaded."""
        parallel = state.source.config.parallel or self.settings.model_defaults.parallel
        slots = state.slots if state.worker is not None else parallel
        queue = min(self.settings.queue_per_model, self.settings.queue_total)
        if slots is None or count <= slots + queue:
            return
        setting = "queue_per_model" if queue == self.settings.queue_per_model else "queue_total"
        raise BadRequest(
            f"this request asks for {count} answers at once (`n`, times the prompts of a "
            f"completion), but model '{state.id}' holds at most {slots + queue}: {slots} "
            f"generating (its slots, `parallel`) and {queue} waiting (`{setting}`); ask for "
            f"at most {slots + queue}, or raise `{setting}` or the model's `parallel`",
            param="n",
        )

    def _progress(self, state: ModelState, autoload: bool, since: float, evict: bool) -> None:
        """Move the model at the head of its queue towards `loaded`, or raise why it cannot:
        a load that failed by itself fails every request until its file changes (sticky);
        one interrupted from outside fails the requests that waited for it (`since`: when
        this one began waiting), and the next ones load it again."""
        if state.status == Status.ERROR and state.sticky:
            raise ModelLoadFailed(f"model '{state.id}' failed to load: {state.error}")
        if state.status == Status.ERROR and state.failed_at >= since:
            raise LoadInterrupted(f"model '{state.id}' failed to load: {state.error}")
        if state.status in (Status.UNLOADED, Status.ERROR):
            if not autoload:
                raise ModelNotLoaded(
                    f"model '{state.id}' is not loaded and autoload is off; "
                    "load it with POST /models/load",
                    param="model",
                )
            self._check_fits(state)
            if not evict and not self._fits_beside(state):
                raise ModelNotLoaded(
                    f"model '{state.id}' is not loaded and would have to evict another",
                    param="model",
                )
            self._queue_load(state, "request")

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
        state.cancel_idle_unload()
        if seconds is None:
            return
        due = asyncio.get_running_loop().time() + seconds
        state.unload_handle = Timer.at(due, self._idle_expired, state)

    def _idle_expired(self, state: ModelState) -> None:
        """Its keep-alive ran out: unload it if it is still loaded and idle."""
        state.unload_handle = None
        if state.status == Status.LOADED and not state.active and not state.waiters:
            self._spawn(self._unload(state, "idle (keep_alive)"))
