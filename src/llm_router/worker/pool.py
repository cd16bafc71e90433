"""Starting model workers: from a spare started ahead of need when there is one, else from a
new process. The pool also knows what an empty worker of each engine holds (its spare's
measured memory), the base of every memory estimate, and what the spares hold now: one still
starting at what such a spare measured last (else the manager's guess), one let go until its
process has exited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..engines import LoadSpec
from ..errors import LoadInterrupted
from .client import Worker
from .spawn import Early, Spare, kill_and_wait

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """At most one spare worker per engine (with `spares` on), started ahead of need by
    `refill`: a cold load then skips Python's start-up and the engine library's import (a few
    hundred ms on a small model). The manager decides when to refill (memory permitting)."""

    def __init__(self, spares: bool = True) -> None:
        self.spares = spares
        # What the spares hold changed: an engine's base was measured, or a spare let go has
        # exited. Called from the event loop, never from within a pool method's caller.
        self.on_change: Callable[[], None] | None = None
        # What an empty worker of an engine holds before one has been measured (the manager
        # sets its per-engine defaults): a spare still starting counts that much.
        self.guess: Callable[[str], int] = lambda engine: 0
        self._closed = False
        self._spares: dict[str, asyncio.Task[Spare]] = {}
        self._adopted: dict[asyncio.Task[Spare], Early] = {}  # spares started early, adopted
        self._base: dict[str, int] = {}
        self._early: dict[str, Early] = {}
        self._stopping: dict[asyncio.Task[None], int] = {}  # spares let go -> what they hold

    def start_early(self, engines: set[str]) -> None:
        """Start a spare of each engine now, before any event loop runs: the CLI calls it
        before importing the server, so the spares import their engine libraries while the
        server imports its own, and the first load finds one ready. `refill` adopts them."""
        if self.spares:
            for engine in engines - set(self._early):
                self._early[engine] = Early.start(engine)

    def refill(self, engine: str) -> None:
        if self.spares and not self._closed and engine not in self._spares:
            early = self._early.pop(engine, None)
            task = asyncio.create_task(Spare.spawn(engine, early))
            task.add_done_callback(self._measured)
            self._spares[engine] = task
            if early is not None:
                self._adopted[task] = early

    def release_early(self) -> None:
        """Stop the spares started early that `refill` did not adopt (their engine has no
        model that fits the budget, or there was no room): they held memory nobody counted
        until the server stopped. Counted from now until they have exited."""
        for engine in list(self._early):
            self._let_go(None, self._early.pop(engine), self.size(engine))

    def _measured(self, task: asyncio.Task[Spare]) -> None:
        self._adopted.pop(task, None)
        if not task.cancelled() and task.exception() is None:
            self._note(task.result())

    def _note(self, spare: Spare) -> None:
        if spare.rss is not None and self._base.get(spare.engine) != spare.rss:
            self._base[spare.engine] = spare.rss
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def base(self, engine: str) -> int | None:
        """Memory of an empty worker of `engine`, as the last one started measured it."""
        return self._base.get(engine)

    def size(self, engine: str) -> int:
        """What a spare of `engine` holds: as the last one measured, else the guess."""
        return self._base.get(engine) or self.guess(engine)

    def memory(self, excluding: str | None = None) -> int:
        """Memory the spares hold now: each started or starting one but `excluding`'s, at its
        engine's `size` (a transformers spare imports torch for 10-16 s; counted as 0 until
        one had been measured, the workers' memory passed the budget unseen: found from
        outside), and each let go (`drop`), until its process has exited (`stopping`)."""
        live = sum(self.size(engine) for engine in self._spares if engine != excluding)
        return live + self.stopping()

    def stopping(self) -> int:
        """Memory of the spares let go whose processes have not exited yet."""
        return sum(self._stopping.values())

    def drop(self, excluding: str | None = None) -> list[str]:
        """Stop the spares of every engine but `excluding`: a spare is a cache, and a model
        that needs its memory comes first. One still starting is killed, one started is let
        go (it exits when its socket closes); each counts (`stopping`) until its process has
        exited, then `on_change` is called. Returns the engines dropped; `refill` starts them
        again once there is room."""
        dropped = [engine for engine in self._spares if engine != excluding]
        for engine in dropped:
            task = self._spares.pop(engine)
            self._let_go(task, self._adopted.pop(task, None), self.size(engine))
        return dropped

    def _let_go(self, task: asyncio.Task[Spare] | None, early: Early | None, size: int) -> None:
        stopping = asyncio.create_task(_discard(task, early))
        self._stopping[stopping] = size
        stopping.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        del self._stopping[task]
        if not self._closed:
            self._changed()

    async def start(
        self,
        engine: str,
        spec: LoadSpec,
        *,
        timeout: float,
        on_exit: Callable[[Worker, str], None] | None = None,
        on_info: Callable[[Worker], None] | None = None,
    ) -> Worker:
        """A worker with `spec` loaded (see Worker.start for what it raises). Cancelling the
        call kills the process."""
        spare = await self._take(engine)
        if spare is None:
            try:
                spare = await Spare.spawn(engine)
            except OSError as exc:  # the machine's doing (killed, out of processes), not the file's
                raise LoadInterrupted(
                    f"its worker process failed to start: {exc}; the next request loads it again"
                ) from None
            self._note(spare)
        return await Worker.start(spare, spec, timeout=timeout, on_exit=on_exit, on_info=on_info)

    async def _take(self, engine: str) -> Spare | None:
        task = self._spares.pop(engine, None)
        if task is None:
            return None
        self._adopted.pop(task, None)  # cancelled with the load, the spawn kills the process
        try:
            spare = await task
        except OSError as exc:
            log.warning("spare %s worker failed: %s", engine, exc)
            return None
        if spare.proc.returncode is not None:
            return None
        return spare

    async def close(self) -> None:
        self._closed = True
        for early in self._early.values():
            early.discard()
        self._early.clear()
        tasks, self._spares = list(self._spares.values()), {}
        # one still starting is killed, not waited for: a transformers spare imports torch
        # for seconds, past the drain's grace
        await asyncio.gather(*(_discard(t, self._adopted.pop(t, None)) for t in tasks))
        await asyncio.gather(*self._stopping)


async def _discard(task: asyncio.Task[Spare] | None, early: Early | None) -> None:
    """End a spare let go: killed while it still starts, else it exits when its socket
    closes. `early`: the process it adopted (`start_early`), ended here if the spawn was
    cancelled before it ran (the spawn kills it once it runs). Returns once it has exited."""
    if task is not None:
        task.cancel()  # nothing once it has started
        try:
            spare = await task
        except (OSError, asyncio.CancelledError):
            spare = None
        if spare is not None:
            await spare.discard()
            return
    if early is not None:
        early.sock.close()
        await kill_and_wait(early)
