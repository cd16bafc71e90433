"""Starting model workers: from a spare started ahead of need when there is one, else from a
new process. The pool also knows what an empty worker of each engine holds (its spare's
measured memory), the base of every memory estimate, and what the spares hold now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..engines import LoadSpec
from ..errors import LoadInterrupted
from .client import Worker
from .spawn import Early, Spare

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    """At most one spare worker per engine (with `spares` on), started ahead of need by
    `refill`: a cold load then skips Python's start-up and the engine library's import (a few
    hundred ms on a small model). The manager decides when to refill (memory permitting)."""

    def __init__(self, spares: bool = True) -> None:
        self.spares = spares
        self.on_measured: Callable[[], None] | None = None  # an engine's base became known
        self._closed = False
        self._spares: dict[str, asyncio.Task[Spare]] = {}
        self._base: dict[str, int] = {}
        self._early: dict[str, Early] = {}
        self._dropping: set[asyncio.Task[None]] = set()

    def start_early(self, engines: set[str]) -> None:
        """Start a spare of each engine now, before any event loop runs: the CLI calls it
        before importing the server, so the spares import their engine libraries while the
        server imports its own, and the first load finds one ready. `refill` adopts them."""
        if self.spares:
            for engine in engines - set(self._early):
                self._early[engine] = Early.start(engine)

    def refill(self, engine: str) -> None:
        if self.spares and not self._closed and engine not in self._spares:
            task = asyncio.create_task(Spare.spawn(engine, self._early.pop(engine, None)))
            task.add_done_callback(lambda t: self._measured(engine, t))
            self._spares[engine] = task

    def _measured(self, engine: str, task: asyncio.Task[Spare]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._note(task.result())

    def _note(self, spare: Spare) -> None:
        if spare.rss is not None:
            known = spare.engine in self._base
            self._base[spare.engine] = spare.rss
            if not known and self.on_measured is not None:
                self.on_measured()

    def base(self, engine: str) -> int | None:
        """Memory of an empty worker of `engine`, as the last one started measured it."""
        return self._base.get(engine)

    def memory(self, excluding: str | None = None) -> int:
        """Memory the spares hold now (one still starting counts as its engine's base)."""
        return sum(self._base.get(engine, 0) for engine in self._spares if engine != excluding)

    def drop(self, excluding: str | None = None) -> list[str]:
        """Stop the spares of every engine but `excluding`: a spare is a cache, and a model
        that needs its memory comes first. Their memory no longer counts from now on (the
        processes end in the background); the engines dropped. `refill` starts them again
        once there is room."""
        dropped = [engine for engine in self._spares if engine != excluding]
        for engine in dropped:
            task = asyncio.create_task(_discard(self._spares.pop(engine)))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)
        return dropped

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
        for task in tasks:  # one still starting is killed, not waited for: a transformers
            task.cancel()  # spare imports torch for seconds, past the drain's grace
        spares = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.discard() for s in spares if isinstance(s, Spare)))
        await asyncio.gather(*self._dropping)


async def _discard(task: asyncio.Task[Spare]) -> None:
    """A spare let go (`drop`) once it has started: it exits when its socket closes."""
    try:
        spare = await task
    except (OSError, asyncio.CancelledError):
        return
    await spare.discard()
