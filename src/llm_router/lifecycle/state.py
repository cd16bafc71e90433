"""What the lifecycle manager knows about each model, and the bus its status changes go out on."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..engines.base import COUNTERS
from ..errors import RateLimited, ServerBusy
from ..types import Answers
from ..worker.client import Worker
from .discovery import ModelSource

__all__ = ["EventBus", "ModelSnapshot", "ModelState", "Status", "Timer"]


class Status(StrEnum):
    """llama.cpp's router values, plus `waiting` (a load queued for room: it holds nothing yet)
    and `unloading` and `error`."""

    UNLOADED = "unloaded"
    WAITING = "waiting"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    ERROR = "error"


@dataclass(eq=False)
class Timer:
    """A callback due at event-loop time `when`. The loop's own handle cannot say when: uvloop
    (what the server runs on) answers a delay under half a millisecond with a plain `Handle`,
    which has no `when()`, where asyncio's loop gives a `TimerHandle`."""

    when: float
    handle: asyncio.Handle

    @classmethod
    def at(cls, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        return cls(when, asyncio.get_running_loop().call_at(when, callback, *args))

    def cancel(self) -> None:
        self.handle.cancel()

    def cancelled(self) -> bool:
        return self.handle.cancelled()


@dataclass(eq=False)
class ModelState:
    """Mutable state of one model; touched only from the event loop. `changed` is set and
    replaced on every transition, so waiters re-check after any change."""

    source: ModelSource
    status: Status = Status.UNLOADED
    error: str | None = None
    sticky: bool = False  # a load failure: no autoload retry until the file changes
    failed_at: float = -math.inf  # event-loop time of its last failed load
    worker: Worker | None = None
    load_task: asyncio.Task[Worker] | None = None
    load_requested: bool = False  # explicit load (request_load): waits for room with no waiters
    # What queued the load under way: request, preload, requested, restart (a pinned model's
    # worker died)
    load_reason: str = "request"
    active: int = 0
    # of `active`, the slots held by the answers of requests asking for several (their Answers)
    held: dict[Answers, int] = field(default_factory=dict)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    # Draining: a waiting load needs this model's room. Only the requests already queued
    # when the drain began (`drain_allowed`) still get a slot; later ones wait for a reload.
    waiting_since: float = 0.0  # event-loop time its load was queued for room
    draining: bool = False
    drain_allowed: set[asyncio.Future[None]] = field(default_factory=set)
    last_used: float = 0.0  # wall clock, for display
    use_order: int = 0  # the manager's count of uses at the last one: least recently used first
    loaded_at: float | None = None
    loaded_mtime_ns: int = 0  # the newest modification time of its files when its worker loaded
    # the content hash of its files, hashed once its worker loaded them (None: they changed
    # meanwhile): files touched since (a new mtime, the same size) are compared with it
    loaded_content: asyncio.Task[str | None] | None = None
    up_since: float = 0.0  # event-loop time its worker last finished loading
    load_seconds: float | None = None
    memory_bytes: int | None = None
    measured_bytes: int | None = None  # last measured footprint of this file, kept across unloads
    # Counts the changes of its files or engine options (`remeasure`): a worker loaded before
    # the last one, still stopping, measures another model than the one to load next.
    variant: int = 0
    model_bytes: int | None = None  # estimated from its metadata and engine options
    estimated_bytes: int | None = None  # model_bytes plus an empty worker of its engine
    unload_handle: Timer | None = None
    keep_alive_asked: float | None = None  # the last request's own keep_alive, for reloads
    # the engine counters (engines.base.COUNTERS) of its workers gone before (unloaded,
    # crashed), as each said last: its totals go on across its workers (`counters`)
    retired: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def slots(self) -> int:
        info = self.worker.info if self.worker else {}
        return int(info.get("parallel") or 1)

    @property
    def busy(self) -> bool:
        """Serving, or holding requests that will be served before it can go (when draining,
        only those queued before the drain began)."""
        if self.active > 0:
            return True
        if self.draining:
            return any(w in self.drain_allowed for w in self.waiters)
        return bool(self.waiters)

    @property
    def wanted(self) -> bool:
        """A load of it is still wanted: someone waits for it, or it was asked for."""
        return bool(self.waiters) or self.load_requested

    def retire(self, worker: Worker) -> None:
        """`worker`, this model's, is gone: its counters, as its last info snapshot said
        them, are kept (a stopped worker sends one as it exits: exact; a crashed one's is
        up to a snapshot interval old). Call it once per worker, before letting it go."""
        for k in COUNTERS:
            value = worker.info.get(k)
            if isinstance(value, int):
                self.retired[k] = self.retired.get(k, 0) + value

    def counters(self) -> dict[str, int]:
        """Each engine counter over the model's workers so far, the running one's included:
        never smaller than at an earlier call (for as long as the model is known)."""
        out = dict(self.retired)
        info = self.worker.info if self.worker else {}
        for k in COUNTERS:
            value = info.get(k)
            if isinstance(value, int):
                out[k] = out.get(k, 0) + value
        return out

    def cancel_idle_unload(self) -> None:
        """Stop its keep-alive timer: it is in use, unloading or gone, and a timer left to run
        would unload (or withdraw, or cancel) whatever the model does by then."""
        if self.unload_handle is not None:
            self.unload_handle.cancel()
            self.unload_handle = None

    def set_status(self, status: Status, error: str | None = None) -> None:
        """`error` is kept as clients may read it (ModelSource.public)."""
        self.status = status
        self.error = None if error is None else self.source.public(error)
        self.notify()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def remeasure(self) -> None:
        """Its files or engine options changed: what was measured and estimated was of
        another model. The worker loaded from those, if any, no longer measures this one (it
        put the old file's figure back while it unloaded, and the new, bigger file was
        planned with it: found from outside)."""
        self.measured_bytes = self.model_bytes = None
        self.variant += 1

    def estimate_bytes(self) -> int:
        """Memory this model will take once loaded: measured last time, else the estimate from
        its metadata (lifecycle/estimate.py), reconciled after each load."""
        if self.measured_bytes is not None:
            return self.measured_bytes
        return self.estimated_bytes or self.source.identity.size_bytes


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What a model's state is at one moment, for readers outside the lifecycle (the HTTP
    listing, metrics): a copy, so nothing outside can change the manager's state through it."""

    source: ModelSource
    status: Status
    error: str | None
    queue_position: int | None  # waiting for room: 1 is the next load admitted
    draining: bool  # serves what is queued for it, then makes room
    memory_bytes: int | None
    estimate_bytes: int
    last_used: float | None
    loaded_at: float | None
    load_seconds: float | None
    active: int
    queued: int
    runtime: dict[str, Any] | None  # the worker's last info snapshot
    unload_at: float | None = None  # wall-clock time its keep_alive ends, if idle
    # the engine counters over all its workers so far (ModelState.counters)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.source.id


class EventBus:
    """Fan-out of status events to SSE subscribers. A slow subscriber loses old events, never
    blocks the manager.

    `max_subscribers` bounds the subscriptions of everyone together; one holder (an API key)
    may have at most its share of them, half (`share`), so that no one key leaves the others,
    the dashboard's included, none (found from outside: a read-only key took all 16)."""

    def __init__(self, backlog: int = 256, max_subscribers: int = 64) -> None:
        self._subscribers: dict[asyncio.Queue[dict[str, Any]], str | None] = {}  # -> holder
        self._held: dict[str, int] = {}  # holder -> its subscriptions
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._backlog = backlog
        self.max_subscribers = max_subscribers

    @property
    def share(self) -> int:
        """The most subscriptions one holder may have at once."""
        return max(1, self.max_subscribers // 2)

    def publish(self, event: str, model: str, **fields: Any) -> None:
        message = {"event": event, "model": model, "time": time.time(), **fields}
        for listener in self._listeners:
            listener(message)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener` synchronously with every event (it must not block)."""
        self._listeners.append(listener)

    def subscribe(
        self, holder: str | None = None, most: int | None = None
    ) -> asyncio.Queue[dict[str, Any]]:
        """A queue of the events from now on, for `holder` (None: one held to no share, the
        master key's or a client's with auth off), who may have `share` of them at once, or
        `most` if fewer (its key's max_concurrent). Raises ServerBusy past `max_subscribers`,
        RateLimited past the holder's share."""
        if len(self._subscribers) >= self.max_subscribers:
            raise ServerBusy(
                f"too many event subscribers ({len(self._subscribers)}); retry later",
                retry_after=5.0,
            )
        if holder is not None:
            held = self._held.get(holder, 0)
            limit = self.share if most is None else min(self.share, most)
            if held >= limit:
                raise RateLimited(
                    f"the API key '{holder}' has {held} event subscriptions open, the most one "
                    f"key may have (half of max_event_subscribers, or its max_concurrent); "
                    "close one or retry later",
                    retry_after=5.0,
                )
            self._held[holder] = held + 1
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._backlog)
        self._subscribers[queue] = holder
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        holder = self._subscribers.pop(queue, None)
        if holder is not None:
            self._held[holder] -= 1
            if not self._held[holder]:
                del self._held[holder]
