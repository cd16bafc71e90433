"""The lifecycle manager on simulated time: a virtual-clock event loop and in-process workers
whose loads and tokens take simulated seconds, so a scheduling scenario of minutes runs in
milliseconds and the same seed gives the same run.

`SimWorker` has the interface the manager uses of `worker.client.Worker`; `SimPool` starts
them from the fake engine's JSON "model" files (`load_seconds`, `fail_load`, `ballast_mb`,
`token_seconds`, `parallel`), with memory as `lifecycle.estimate` predicts it, times `scale`.
With `spares`, it also starts spare workers (`SimSpare`), each taking its simulated start time
and holding its memory from its first moment to its exit, as a process would."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llm_router.engines import LoadSpec
from llm_router.errors import ModelLoadFailed, RouterError, WorkerDied
from llm_router.lifecycle.estimate import DEFAULT_BASE
from llm_router.types import Embeddings, Finished, GenerationRequest, TextDelta, Usage
from llm_router.worker.pool import WorkerPool

T = TypeVar("T")
MiB = 2**20


class NoWhen:
    """What uvloop, the server's loop, returns for a timer due in under half a millisecond: a
    plain `Handle`, which can be cancelled but has no `when()`."""

    def __init__(self, timer: asyncio.TimerHandle) -> None:
        self._timer = timer

    def cancel(self) -> None:
        self._timer.cancel()

    def cancelled(self) -> bool:
        return self._timer.cancelled()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready to run.
    Only for code that does no real I/O while it runs (the simulated workers do none). Its
    timers due within half a millisecond have no `when()`, as uvloop's."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual = 0.0

    def time(self) -> float:
        return self._virtual

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        timer = super().call_at(when, callback, *args, context=context)
        return NoWhen(timer) if when - self._virtual < 0.0005 else timer

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> Any:
        return self.call_at(self._virtual + delay, callback, *args, context=context)

    def _run_once(self) -> None:
        ready: Any = getattr(self, "_ready")  # noqa: B009  # CPython's loop internals
        scheduled: Any = getattr(self, "_scheduled")  # noqa: B009
        if not ready and scheduled:
            live = [h.when() for h in scheduled if not h.cancelled()]
            if live:
                self._virtual = max(self._virtual, min(live))
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class SimWorker:
    _pids = itertools.count(10_000_000)

    def __init__(self, script: dict[str, Any], parallel: int, rss: int) -> None:
        self.pid = next(self._pids)
        self.info: dict[str, Any] = {"parallel": parallel, "threads": 1, "rss": rss}
        self.exited = asyncio.Event()
        self.stopping = False
        self._rss = rss
        self._token_seconds = float(script.get("token_seconds", 0.01))
        self._on_exit: Callable[[Any, str], None] | None = None
        self._on_info: Callable[[Any], None] | None = None
        self._cut: Callable[[], RouterError] | None = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Finished]:
        n = request.params.max_tokens or 4
        for i in range(n):
            await asyncio.sleep(self._token_seconds)
            if self.exited.is_set():
                cut = self._cut
                raise cut() if cut else WorkerDied("the model's worker was killed mid-request")
            yield TextDelta(f"t{i} ")
        yield Finished("length", Usage(2, n))

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        return Embeddings([[1.0] for _ in inputs], len(inputs))

    def set_threads(self, threads: int) -> None:
        self.info["threads"] = threads

    def rss(self) -> int | None:
        return None if self.exited.is_set() else self._rss

    async def stop(
        self, timeout: float = 5.0, cut: Callable[[], RouterError] | None = None
    ) -> None:
        self.stopping = True
        self._cut = cut or self._cut
        await asyncio.sleep(0.01)  # a process takes a moment to go
        if self._on_info is not None:  # its last info snapshot, as a worker sends as it exits
            self._on_info(self)
        self.exited.set()

    def crash(self) -> None:
        """The process dies by itself (as a SIGKILL would end it)."""
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit(self, "worker was killed by SIGKILL")


@dataclass(eq=False)
class SimProcess:
    """A spare's process: what it holds from its start to its exit."""

    returncode: int | None = None


@dataclass(eq=False)
class SimSpare:
    """What the pool uses of `worker.spawn.Spare`: started after `start_seconds` (killed if
    cancelled before), holding `held` bytes until it exits; `rss`, what it measures."""

    engine: str
    held: int
    proc: SimProcess = field(default_factory=SimProcess)
    rss: int | None = None
    task: asyncio.Task[Any] | None = None  # the pool's start of it
    taken: bool = False  # by a load: its process becomes the worker, counted as the model

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def start(self, seconds: float) -> SimSpare:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.proc.returncode = -9
            raise
        self.rss = self.held
        return self

    async def discard(self) -> None:
        await asyncio.sleep(0.01)  # a process takes a moment to go
        self.proc.returncode = 0


class SimPool(WorkerPool):
    """Starts SimWorkers; `scale` multiplies the memory a worker really takes against what
    lifecycle.estimate predicts (1.0: the estimate is exact). `spares`: engine -> (seconds its
    spare takes to start, bytes it holds); none without. A load takes its engine's spare (the
    spare's process becomes its worker, whose memory then counts it)."""

    def __init__(
        self, scale: float = 1.0, spares: dict[str, tuple[float, int]] | None = None
    ) -> None:
        super().__init__(spares=bool(spares))
        self.scale = scale
        self.started: list[SimWorker] = []
        self.spare_kinds = spares or {}
        self.spares_started: list[SimSpare] = []

    def refill(self, engine: str) -> None:  # as WorkerPool's, with no process
        if self.spares and not self._closed and engine not in self._spares:
            seconds, held = self.spare_kinds.get(engine, (0.0, 0))
            spare = SimSpare(engine, held)
            task = asyncio.create_task(spare.start(seconds))
            spare.task = task
            task.add_done_callback(self._measured)
            self._spares[engine] = task  # type: ignore[assignment]
            self.spares_started.append(spare)

    def spare_memory(self, loading: str | None = None) -> int:
        """What the spares' processes hold now, all of them but the spare a load of engine
        `loading` is about to take."""
        taking = self._spares.get(loading) if loading else None
        return sum(
            s.held for s in self.spares_started if s.alive and not s.taken and s.task is not taking
        )

    async def _take(self, engine: str) -> Any:
        for spare in self.spares_started:
            if spare.task is not None and spare.task is self._spares.get(engine):
                spare.taken = True
        return await super()._take(engine)

    async def start(  # type: ignore[override]
        self,
        engine: str,
        spec: LoadSpec,
        *,
        timeout: float,
        on_exit: Any = None,
        on_info: Any = None,
    ) -> SimWorker:
        await self._take(engine)  # its process becomes the worker
        script = json.loads(Path(spec.path).read_text())  # noqa: ASYNC240  # a tiny file
        await asyncio.sleep(float(script.get("load_seconds", 0.0)))
        if script.get("fail_load"):
            raise ModelLoadFailed(f"fake engine was told to fail loading {spec.path}")
        # an empty worker holds what its engine's spare measured (lifecycle.estimate's base)
        estimate = (self.base(engine) or DEFAULT_BASE) + int(script.get("ballast_mb", 0)) * MiB
        parallel = int(spec.options.get("parallel") or script.get("parallel") or 4)
        worker = SimWorker(script, parallel, int(estimate * self.scale))
        worker.info["context_size"] = spec.options.get("context_size")
        worker._on_exit = on_exit
        worker._on_info = on_info
        self.started.append(worker)
        return worker
