"""The models the manager knows: one `ModelState` per model in the models directory (and the
config's entries), found by id or alias. `refresh()` re-scans and keeps the states in step
with the files; it starts nothing itself, but says which resident models must be unloaded
(their file changed or is gone), for the manager to do. A loaded model whose file has a new
mtime but its old size may only have been touched: it is kept as it is (`touched`) until the
manager has compared the bytes (`settle`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from ..units import parse_duration
from .discovery import Identity, ModelSource, Scanner
from .state import EventBus, ModelState, Status

__all__ = ["RESIDENT", "Registry", "apply_source_error"]

RESIDENT = (Status.LOADED, Status.LOADING, Status.UNLOADING)


class Registry:
    def __init__(self, scanner: Scanner, events: EventBus) -> None:
        self.scanner = scanner
        self._events = events
        self._states: dict[str, ModelState] = {}
        self._aliases: dict[str, str] = {}
        # Dropped by a scan while holding a worker: still in memory until their worker stops
        # (the manager discards them then), so admission still counts them.
        self.leaving: set[ModelState] = set()
        # Loaded models whose file has a new identity of the same size: the new one, kept
        # aside until the manager has compared the bytes with its worker's (`settle`);
        # `_differs`: those it found changed, unloaded as any other change.
        self.touched: dict[ModelState, Identity] = {}
        self._differs: dict[ModelState, Identity] = {}

    def __iter__(self) -> Iterator[ModelState]:
        return iter(self._states.values())

    def __getitem__(self, model_id: str) -> ModelState:
        return self._states[model_id]

    def get(self, name: str) -> ModelState | None:
        """The model called `name` (id or alias), as last scanned. An id comes first: an
        alias that is another model's id would hide that model (`warnings` says so)."""
        state = self._states.get(name)
        return state if state is not None else self._states.get(self._aliases.get(name, name))

    def kept(self) -> list[ModelState]:
        """The models the settings keep loaded, as last scanned: the pinned ones, then those
        `preload` names (by id or alias, as `get` finds them) in its order, each once. The one
        reading of `preload`: at start, on a reload and when a replaced model loads again."""
        kept = [s for s in self._states.values() if s.source.config.pin]
        for name in self.scanner.settings.preload:
            state = self.get(name)
            if state is not None and state not in kept:
                kept.append(state)
        return kept

    def warnings(self) -> list[str]:
        """What the configuration says that names nothing, or hides something, each as a
        sentence (said at start and on a reload, whose answer lists them): an alias that is
        another model's id, a `models:` entry without a `path` naming no model found, a
        `preload` name that is no model, a `drain_after` that outlasts `queue_timeout`, a
        `keep_alive` longer than `keep_alive_max`."""
        said = [
            f"model {owner}: alias {alias!r} is the id of another model, which keeps that "
            "name; rename the alias"
            for alias, owner in self._aliases.items()
            if alias in self._states and alias != owner
        ]
        said += [
            f"models: entry {entry.id!r} names no model in the models directory (a typo?); "
            "its settings apply once a model of that id appears"
            for entry in self.scanner.settings.models
            if entry.provider == "local" and entry.path is None and entry.id not in self._states
        ]
        settings = self.scanner.settings
        said += [
            f"preload names {name!r}, which is no model here (a typo?); it is not preloaded"
            for name in settings.preload
            if self.get(name) is None
        ]
        said += self._keep_alive_warnings()
        if settings.drain_after >= settings.queue_timeout:
            said.append(
                f"drain_after ({settings.drain_after:g} s) is not under queue_timeout "
                f"({settings.queue_timeout:g} s): a request for a model that must wait for "
                "another's room times out before that model gives it up"
            )
        return said

    def _keep_alive_warnings(self) -> list[str]:
        """`keep_alive_max` caps a request's own keep_alive only (leases.py `_keep_alive`):
        under a longer configured one, asking for more gives less than asking nothing."""
        settings = self.scanner.settings
        cap = parse_duration(settings.keep_alive_max)
        if cap is None:
            return []
        ours = [("", settings.keep_alive)] + [
            (f"model {s.id}: ", s.source.config.keep_alive)
            for s in self.sorted()
            if s.source.config.keep_alive is not None and not s.source.config.pin
        ]
        return [
            f"{who}keep_alive ({_shown(value)}) is longer than keep_alive_max "
            f"({_shown(settings.keep_alive_max)}), which caps a request's own keep_alive only: a "
            "request asking for more than keep_alive_max gets less than one asking nothing; "
            "raise keep_alive_max or lower keep_alive"
            for who, value in ours
            if (seconds := parse_duration(value)) is None or seconds > cap
        ]

    def holds(self, state: ModelState) -> bool:
        """Whether `state` is still the model of its id (not dropped by a scan)."""
        return self._states.get(state.id) is state

    def forget(self, state: ModelState) -> bool:
        """`state`'s worker stopped: if a scan had dropped it, it is gone now; True when no
        model of its id is left (the caller then says `removed`, after its `unloaded`: a
        client following the events ended with a model the listing no longer had)."""
        if state not in self.leaving:
            return False
        self.leaving.discard(state)
        return state.id not in self._states

    def sorted(self) -> list[ModelState]:
        return sorted(self._states.values(), key=lambda s: s.id)

    def refresh(self) -> list[tuple[ModelState, str]]:
        """Re-scan: new files appear, removed ones are dropped, changed ones lose any sticky
        load error. Returns the (state, reason) pairs to unload."""
        found = self.scanner.scan()
        unload: list[tuple[ModelState, str]] = []
        for model_id, source in found.items():
            state = self._states.get(model_id)
            if state is None:
                self._states[model_id] = state = ModelState(source)
                apply_source_error(state)
                self._events.publish("added", model_id, status=state.status.value)
            elif self._maybe_touched(state, source):
                self.touched[state] = source.identity
                state.source = replace(source, identity=state.source.identity)  # its config
            elif state.source.identity != source.identity or state.source.error != source.error:
                unload += self._changed(state, source)
            else:
                self.touched.pop(state, None)  # touched, and put back as it was
                state.source = source
        for model_id in set(self._states) - set(found):
            state = self._states.pop(model_id)
            self.touched.pop(state, None)
            if state.status in RESIDENT:  # `removed` once its worker stopped (`forget`)
                self.leaving.add(state)
            else:
                self._events.publish("removed", model_id)
            gone = not state.source.path.exists()  # else its `models:` entry went
            unload.append(
                (state, "model file removed" if gone else "removed from the configuration")
            )
            state.notify()
        self._aliases = {
            alias: s.id for s in self._states.values() for alias in s.source.config.aliases
        }
        return unload

    def _maybe_touched(self, state: ModelState, source: ModelSource) -> bool:
        """Whether a new identity of `state`'s files may be a touch alone, for the manager
        to decide by their bytes: a loaded model (its worker's are hashed) whose files kept
        their size, errors and place, and not found changed at this identity already."""
        old = state.source
        return (
            state.status == Status.LOADED
            and state.loaded_content is not None
            and old.identity != source.identity
            and old.identity.size_bytes == source.identity.size_bytes
            and (old.path, old.error) == (source.path, source.error)
            and self._differs.get(state) != source.identity
        )

    def _changed(self, state: ModelState, source: ModelSource) -> list[tuple[ModelState, str]]:
        """`state`'s files changed (or broke, or were fixed): what to unload for it."""
        self.touched.pop(state, None)
        self._differs.pop(state, None)
        state.source = source
        state.sticky = False
        state.remeasure()  # another file
        waiting = state.status == Status.WAITING and source.error is not None
        if state.status in RESIDENT or waiting:  # its error once its worker is gone
            return [(state, "model file changed")]
        # broken, or fixed: told (a client following the events saw neither)
        apply_source_error(state, self._events)
        return []

    def settle(
        self, state: ModelState, identity: Identity, same: bool
    ) -> list[tuple[ModelState, str]]:
        """The manager compared the bytes of `state`'s touched files at `identity` with those
        its worker read: the same, and that is its identity now (its model stays loaded);
        else they changed, and a re-scan says so. Nothing when a scan since saw them change
        again (or go): that scan decided. Returns the (state, reason) pairs to unload."""
        if self.touched.get(state) != identity or not self.holds(state):
            return []
        del self.touched[state]
        if same:
            state.source = replace(state.source, identity=identity)
            return []
        self._differs[state] = identity
        return self.refresh()


def _shown(duration: str | float) -> str:
    """A duration as the configuration wrote it ("2m", or -1 rather than -1.0)."""
    return duration if isinstance(duration, str) else f"{duration:g}"


def apply_source_error(state: ModelState, events: EventBus | None = None) -> None:
    """A model whose files cannot be served is in `error` (sticky) until they change.
    `events`: told of the change this makes (`error`, or `unloaded` once the files are
    fixed); call it after the caller's own event, so that the last one says the status."""
    if state.source.error is not None:
        told = state.status == Status.ERROR and state.error == state.source.error
        state.sticky = True
        state.set_status(Status.ERROR, state.source.error)
        if events is not None and not told:
            events.publish("error", state.id, error=state.error)
    elif state.status == Status.ERROR:
        state.set_status(Status.UNLOADED)
        if events is not None:
            events.publish("unloaded", state.id, reason="its files can be served again")
