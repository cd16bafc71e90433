"""ModelManager's stops (a part of it, as a mixin): unloads on request, evictions and reloads
stopping a worker after the requests in flight (up to `unload_grace`), a worker that dies on
its own, and what workers report (their measured memory). Runs on the event loop, as the
whole manager does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ModelUnloaded, RouterError, ServerStopping
from ..logs import fields
from ..worker.client import Worker
from .registry import apply_source_error
from .state import ModelState, Status

if TYPE_CHECKING:
    from ..config import Settings
    from .registry import Registry
    from .state import EventBus
    from .threads import ThreadBudget

__all__ = ["MiB", "Stops", "cut_by_shutdown", "mib"]

log = logging.getLogger(__name__)
MiB = 2**20
# A pinned model whose worker dies is loaded again at once if it had served this long; one
# that dies sooner (a model that crashes its worker) waits for a request, so no loop of loads.
RESTART_AFTER = 10.0


def cut_by_shutdown() -> RouterError:  # what requests cut by the server's shutdown are told
    return ServerStopping("the server is shutting down; retry on another server")


class Stops:
    if TYPE_CHECKING:  # the manager's state and its other parts, for the type checker
        settings: Settings
        registry: Registry
        events: EventBus
        budget: int
        over_budget: bool
        _closing: bool
        _threads: ThreadBudget

        def resolve(self, name: str) -> ModelState: ...
        def memory_used(self) -> int: ...
        def request_load(self, name: str, reason: str = ...) -> ModelState: ...
        def _room_changed(self) -> None: ...
        def _reconcile(self, why: str) -> None: ...
        def _withdraw(self, state: ModelState, reason: str = ...) -> None: ...
        def _spawn(self, coro: Any) -> None: ...

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
        state.cancel_idle_unload()
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
        state.cancel_idle_unload()  # evicted or replaced: its keep-alive is over
        log.info(
            "model %s unloading (%s)%s",
            state.id,
            reason,
            f", after its {state.active} request(s) in flight" if state.active else "",
            extra=fields(event="unloading", model=state.id, reason=reason, active=state.active),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.unload_grace
        try:
            while state.active > 0 and (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.changed.wait(), left)
        except asyncio.CancelledError:  # close(): never leave a worker behind
            await worker.stop(cut=cut_by_shutdown)
            raise
        freed = state.memory_bytes
        grace = self.settings.unload_grace
        why = (
            f"the model was unloaded ({reason}) before this request finished: "
            f"requests in flight get unload_grace ({grace:g} s); retry"
        )
        await worker.stop(cut=lambda: ModelUnloaded(why))
        self._threads.forget(worker)
        if state.worker is not worker and (state.status != Status.ERROR or state.sticky):
            # It died in the grace, and a request has queued, started or finished a load of
            # it since (a failed one is sticky): that is the model now.
            return
        if state.worker is worker:  # else it died in the grace: retired as it exited
            state.retire(worker)
        state.worker = None
        state.memory_bytes = None
        state.loaded_at = None
        state.draining = False
        state.drain_allowed.clear()
        state.set_status(Status.UNLOADED)
        removed = self.registry.forget(state)
        self.events.publish("unloaded", state.id, reason=reason)
        apply_source_error(state, self.events)  # its files changed into something unservable
        if removed:
            self.events.publish("removed", state.id)
        took = loop.time() - started
        log.info(
            "model %s unloaded in %.2f s (%s): %s MiB freed",
            state.id,
            took,
            reason,
            mib(freed),
            extra=fields(
                event="unloaded",
                model=state.id,
                reason=reason,
                duration_s=round(took, 3),
                bytes=freed,
            ),
        )
        if state.load_requested and not removed:  # POST /models/load while it unloaded
            state.load_requested = False
            self._load_again(state, "requested")
        self._room_changed()

    def _worker_exited(self, state: ModelState) -> Callable[[Worker, str], None]:
        def on_exit(worker: Worker, reason: str) -> None:
            if worker.stopping or state.worker is not worker:
                return
            # Being unloaded on purpose (an unload, an eviction, a reload's change): not a
            # pinned model to load again.
            leaving = state.status == Status.UNLOADING or state in self.registry.leaving
            # Nobody else will stop a worker that died on its own: stop() closes its channel
            # (the socket would otherwise leak until garbage collection).
            self._spawn(worker.stop())
            self._threads.forget(worker)
            state.cancel_idle_unload()
            removed = self.registry.forget(state)
            state.retire(worker)
            state.worker = None
            state.memory_bytes = None
            state.loaded_at = None
            state.draining = False
            state.drain_allowed.clear()
            lived = asyncio.get_running_loop().time() - state.up_since
            pinned = state.source.config.pin and not self._closing and not leaving
            restart = pinned and lived >= RESTART_AFTER
            if restart:
                message = f"{reason}; pinned: it loads again"
            elif pinned:
                message = (
                    f"{reason} {lived:.0f} s after loading; pinned, but not loaded again by "
                    "itself before it has served a while: the next request loads it again"
                )
            else:
                message = f"{reason}; the next request loads it again"
            state.set_status(Status.ERROR, message)
            self.events.publish("error", state.id, error=state.error)
            if removed:
                self.events.publish("removed", state.id)
            log.warning(
                "model %s: %s",
                state.id,
                message,
                extra=fields(event="exited", model=state.id, reason=reason, restart=restart),
            )
            if restart:
                self._load_again(state, "restart")
            self._room_changed()

        return on_exit

    def _load_again(self, state: ModelState, reason: str) -> None:
        """Load a model again: a pinned one after its worker died ("restart": meant to stay
        loaded), one asked for while it was unloading ("requested")."""
        try:
            self.request_load(state.id, reason=reason)
        except RouterError as exc:  # e.g. other pinned models now fill what it needs
            log.warning(
                "model %s cannot load again (%s): %s",
                state.id,
                reason,
                exc.message,
                extra=fields(
                    event="load_refused", model=state.id, reason=reason, error=exc.message
                ),
            )

    def _worker_info(self, state: ModelState, variant: int) -> Callable[[Worker], None]:
        """Keep the model's memory figure live from the worker's snapshots (it grows as the
        first requests touch weights and buffers), and reconcile when it goes over. What it
        holds counts until it has stopped; as the model's measurement only while its files
        and options are those it loaded (`variant`, ModelState.remeasure)."""

        def on_info(worker: Worker) -> None:
            rss = worker.info.get("rss")
            if state.worker is not worker or not isinstance(rss, int):
                return
            state.memory_bytes = rss
            if state.variant == variant:
                state.measured_bytes = max(rss, state.measured_bytes or 0)
            if self.memory_used() > self.budget or self.over_budget:
                self._reconcile(f"'{state.id}' grew to {mib(rss)} MiB")
                self._room_changed()

        return on_info


def mib(value: int | None) -> str:
    return "?" if value is None else f"{value / MiB:.0f}"
