"""ModelManager's reconfiguration (a part of it, as a mixin): new settings while serving (a
reload, reload.py). What a model's worker was started from (file, engine, engine options) is
compared before and after; what changed is unloaded after its requests in flight (a pinned or
preloaded model then loads again at once, the others with their next request), its memory
estimated again. Lower limits evict idle models now, busy ones once idle (admission.py's
`_reconcile`). Runs on the event loop, between awaits, as the whole manager does."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ..errors import RouterError
from ..units import parse_bytes, parse_duration
from .registry import RESIDENT
from .state import ModelState, Status

if TYPE_CHECKING:
    from ..config import Settings
    from .discovery import ModelSource
    from .registry import Registry
    from .state import EventBus

__all__ = ["Reconfiguration"]


class Reconfiguration:
    if TYPE_CHECKING:  # the manager's state and its other parts, for the type checker
        settings: Settings
        registry: Registry
        events: EventBus
        budget: int
        memory_base: int
        _default_keep_alive: float | None
        _scanned: float

        def memory_used(self) -> int: ...
        def request_load(self, name: str, reason: str = "requested") -> ModelState: ...
        def _reconcile(self, why: str) -> None: ...
        def _room_changed(self) -> None: ...
        def _schedule_idle_unload(self, state: ModelState, requested: float | None) -> None: ...
        def _compare_touched(self) -> None: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _stop(self, state: ModelState, reason: str) -> None: ...
        async def _unload(self, state: ModelState, reason: str) -> None: ...

    def reconfigure(self, settings: Settings) -> list[str]:
        """Run with `settings` from now on: the models directory and the entries are scanned
        again with them. A resident model whose file, engine or engine options changed, or
        whose entry is gone, is unloaded after its requests in flight; the next request (at
        once, for a pinned or preloaded one) loads it with the new options. Requests waiting
        for a model that is gone get a 404. Lower limits evict idle models at once; new pins
        and preloads load; an idle model's unload timer starts again only when its keep-alive
        rule changed. Returns the ids of the models it unloads now, of those loaded or loading:
        changed, gone, or evicted for the lower limits or for a new pin or preload (a busy
        model over the limits goes once idle, later, and is not among them)."""
        keys = {s.id: self._load_key(s.source) for s in self.registry}
        rules = {s.id: self._idle_rule(s) for s in self.registry}
        loaded = {s.id for s in self.registry if s.status == Status.LOADED}
        wanted = self._wanted()
        old = self.settings
        self.settings = settings
        self.registry.scanner.settings = settings
        if settings.memory_budget != old.memory_budget:
            # of the memory available at start, as the first budget (available now plus
            # the models' RSS would count their mapped weights twice: page cache is available)
            self.budget = parse_bytes(settings.memory_budget, self.memory_base)
        self._default_keep_alive = parse_duration(settings.keep_alive)
        self._scanned = time.monotonic()
        changed = self.registry.refresh()
        self._compare_touched()
        rekeyed: set[str] = set()
        for state in self.registry:
            key = keys.get(state.id)
            if key is None or key == self._load_key(state.source):
                continue
            state.remeasure()  # other options: other memory
            rekeyed.add(state.id)
            if state.source.error is None:
                state.sticky = False  # a load that failed with the old options may work
            if state.status in RESIDENT and all(state is not s for s, _ in changed):
                changed.append((state, "configuration changed"))
        # a model removed or changed that was not loaded is not unloaded (found from outside:
        # removing an unloaded model's entry answered `unloaded: [it]`)
        going = {s.id for s, _ in changed if s.status in (Status.LOADED, Status.LOADING)}
        for state, reason in changed:
            self._replace(state, reason)
        self._reconcile("reloaded configuration")
        self._room_changed()
        for state in self.registry:
            if state.status == Status.LOADED and rules.get(state.id) != self._idle_rule(state):
                self._schedule_idle_unload(state, state.keep_alive_asked)
            elif state.status in (Status.UNLOADED, Status.ERROR) and not state.sticky:
                if state.id in (self._wanted() - wanted) | (self._wanted() & rekeyed):
                    with contextlib.suppress(RouterError):
                        self.request_load(state.id, reason="preload")
        # after the new pins' and preloads' loads were queued: the room they take is evicted
        # now too (found from outside: `pin: true` with models_max 1 answered `unloaded: []`)
        evicted = {s.id for s in self.registry if s.id in loaded and s.status == Status.UNLOADING}
        return sorted(going | evicted)

    def _load_key(self, source: ModelSource) -> tuple[object, ...]:
        """What a worker is started from: a change means loading again."""
        options = self.settings.model_defaults.merged(source.config.engine_options())
        return (source.path, source.identity, source.engine, options)

    def _idle_rule(self, state: ModelState) -> tuple[object, ...]:
        """What its idle unload follows (lifecycle/leases.py `_keep_alive`)."""
        config = state.source.config
        cap = self.settings.keep_alive_max
        return (self._default_keep_alive, config.keep_alive, config.pin, cap)

    def _wanted(self) -> set[str]:
        """The ids of the models kept loaded by the settings: pinned or preloaded (by id or
        alias: Registry.kept)."""
        return {s.id for s in self.registry.kept()}

    def _replace(self, state: ModelState, reason: str) -> None:
        """Unload `state` for a change. A loaded one is marked leaving now (the limits
        decided right after see it go); a pinned or preloaded one that stays loads again."""
        stop = state.status == Status.LOADED and state.worker is not None
        if stop:
            state.cancel_idle_unload()
            state.set_status(Status.UNLOADING)
            self.events.publish("unloading", state.id, reason=reason)
        self._spawn(self._then_reload(state, reason, stop))

    async def _then_reload(self, state: ModelState, reason: str, stop: bool) -> None:
        await (self._stop(state, reason) if stop else self._unload(state, reason))
        if self.registry.holds(state) and state.id in self._wanted():
            if not state.sticky and state.status in (Status.UNLOADED, Status.ERROR):
                with contextlib.suppress(RouterError):
                    self.request_load(state.id, reason="preload")
