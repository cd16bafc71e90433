"""Running the server: one process (`run_one`), or several router processes on one port
(`run_many`, `llm-router serve --workers N`), each draining on SIGTERM (server/drain.py).

Drain: the first SIGTERM makes `/health` answer 503 and new requests 503 with `Retry-After`
at once; the requests in flight (streams included) go on until they end or `drain_grace`
seconds pass; what is left then is answered 503 (or its stream ended with that error event:
`Drain.stop_all`), then uvicorn's own shutdown runs (listeners closed), then the app's (model
workers stopped). A second SIGTERM, or SIGINT (Ctrl-C), skips the wait: what is in flight is
answered so at once. As uvicorn does, the process then ends by the signal it was sent.

Several processes: each gets its own listening socket on the same address (SO_REUSEPORT: the
kernel spreads new connections over them), bound and held by the parent, so that connections
queued on the socket of a process that died wait for its replacement. The parent forwards
SIGTERM/SIGINT, restarts a process that dies (not one that failed to start: then it stops
them all), and exits once they have. Only for a gateway with no local models (check_workers):
each process would otherwise load every model itself.

Their drain is one (`Peers`): the kernel goes on sending a socket its share of the new
connections for as long as any process holds it open, and what is queued on it when it closes
is reset. So once stopping, the parent closes its copies and restarts no process, and a
process with nothing left in flight does not stop: it answers 503 until the parent sees every
process drained (or the grace is over), and then they all stop together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from ..config import Settings
from ..errors import ConfigError
from ..reload import SETTLE, ConfigSource, Settling, plan, stamp

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event

    from .reload import Reloader
from .connection import connection_class
from .drain import Drain

__all__ = ["DrainingServer", "Peers", "check_workers", "run_many", "run_one", "tune_gc"]

log = logging.getLogger(__name__)

STARTUP_FAILED = 3  # a process's exit status when its server never started (as uvicorn's)
AFTER_DRAIN = 1  # seconds uvicorn's shutdown gives what is left once the drain is over
LOOK_EVERY = 0.2  # seconds between the parent's looks at its processes (and the config file)
GC_GEN0 = 50_000  # the collector's first threshold in the server (Python's: 700), see tune_gc


@dataclass(frozen=True)
class Peers:
    """What one router process of `run_many` shares with the parent for a drain: `drained`,
    its own, set once it has nothing in flight (or its grace is over); `released`, the read
    end of a pipe only the parent writes to, at its end once the parent closed it: when every
    process that is alive has drained, or when the parent died. Until then a drained process
    keeps answering 503: were it to stop, the connections the kernel had queued on its
    socket, and those it would still send there, would be reset."""

    drained: Event
    released: Connection

    async def hold(self, timeout: float) -> None:
        """Say this process drained, and wait until released or `timeout` seconds."""
        self.drained.set()
        loop = asyncio.get_running_loop()
        released = asyncio.Event()
        loop.add_reader(self.released.fileno(), released.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), timeout)
        finally:
            loop.remove_reader(self.released.fileno())


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain on the first SIGTERM (see the module's docstring).

    uvicorn calls `handle_exit` from a signal handler on the event loop's thread, between
    two bytecodes of whatever runs: it only schedules the drain onto the loop."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: Drain,
        grace: float,
        reloader: Reloader | None = None,
        peers: Peers | None = None,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace = grace
        self.reloader = reloader  # SIGHUP, once started: a reload (server/reload.py)
        self.peers = peers  # one of several processes on the port: they stop together
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._stopper: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            tune_gc()
            if self.reloader is not None and threading.current_thread() is threading.main_thread():
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, self.reloader.on_signal
                )
                self.reloader.catch_up()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if (
            sig == signal.SIGTERM
            and self.started
            and self._loop is not None
            and not (self.drain.draining or self.should_exit)
        ):
            self._captured_signals.append(sig)
            self._loop.call_soon_threadsafe(self._begin_drain)
            return
        if self.started and self._loop is not None and not self.should_exit:
            # a second SIGTERM, or Ctrl-C: what is in flight is answered now, not waited for
            self.config.timeout_graceful_shutdown = AFTER_DRAIN
            self._loop.call_soon_threadsafe(self._stop_now)
        super().handle_exit(sig, frame)

    def _stop_now(self) -> None:
        if self.drain.in_flight:
            log.info("stopping now: %d requests in flight answered 503", self.drain.in_flight)
        self._stopper = asyncio.create_task(self.drain.stop_all(AFTER_DRAIN), name="stop")

    def _begin_drain(self) -> None:
        if self.should_exit or self.drain.draining:
            return
        log.info(
            "SIGTERM: draining (%d requests in flight, at most %g s); new requests get 503",
            self.drain.in_flight,
            self.grace,
        )
        self.drain.begin()
        self._drainer = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace + AFTER_DRAIN
        if not await self.drain.idle(self.grace):
            log.warning(
                "drain grace of %g s is over with %d requests in flight: answering them 503",
                self.grace,
                self.drain.in_flight,
            )
        else:
            log.info("drained: no request in flight; stopping")
        await self.drain.stop_all(AFTER_DRAIN)  # and the subscriptions (/models/events)
        if self.peers is not None:
            log.info("answering 503 until the other router processes have drained too")
            await self.peers.hold(deadline - loop.time())
        self.config.timeout_graceful_shutdown = AFTER_DRAIN
        self.should_exit = True


def tune_gc() -> None:
    """Once the server has started: what start-up made (modules, the app, its settings and
    state) leaves the collector's generations (`gc.freeze`: never walked or collected again,
    and it lives as long as the server anyway), and the youngest generation is collected
    after GC_GEN0 more allocations than deallocations instead of 700. A request leaves no
    reference cycle behind (a test says so), so collections are for the rare cycle; at 700
    the objects of the requests in flight were walked by one every ~20 requests, ~20 us of
    CPU a request at c=64, and their cycles waited at most that long (BENCHMARKS.md, "What
    observability costs")."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # our request log (server/request_log.py) replaces uvicorn's access log; with JSON
        # logs uvicorn's own lines go through the root logger's JSON handler too
        access_log=settings.log_level == "debug" and not settings.log_requests,
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=5,
        limit_concurrency=settings.max_connections,
        http=connection_class(settings.header_timeout),  # a deadline for heads (connection.py)
    )


def run_one(
    settings: Settings,
    pool: Any = None,
    sockets: list[socket.socket] | None = None,
    source: ConfigSource | None = None,
    parent: int | None = None,
    peers: Peers | None = None,
) -> bool:
    """Serve in this process until a signal stops it; False when the server never started,
    ConfigError when the configuration was refused as it started (the lifespan's, asgi.py).
    `pool`: a WorkerPool whose spares the CLI started early; `source`: where `settings` were
    read, read again on SIGHUP and `POST /admin/reload`; `parent`, `peers`: see run_many."""
    from ..lifecycle.manager import ModelManager
    from .app import create_app

    manager = ModelManager(settings, pool=pool)
    app = create_app(settings, manager, source=source, parent=parent)
    app.quiet_refusals = True  # a ConfigError at start-up: raised below, said by the caller
    server = DrainingServer(
        uvicorn_config(app, settings),
        app.state.drain,
        settings.drain_grace,
        app.state.reloader if source is not None else None,
        peers,
    )
    try:
        server.run(sockets)
    except SystemExit:  # uvicorn's when the lifespan failed
        if hasattr(app.state, "refused"):  # found at start-up: a route named like a model, say
            raise app.state.refused from None
        raise
    return bool(server.started)


def check_workers(settings: Settings, workers: int) -> None:
    """Raise ConfigError, saying why, when `workers` router processes cannot serve `settings`:
    local models (each process would load its own copy of every model, and the memory budget,
    LRU and queues would be per process), or no `redis_url` (limits, breakers, usage and the
    cache would be per process, so N processes would allow N times the configured limits)."""
    if workers <= 1:
        return
    from ..lifecycle.discovery import Scanner

    local = sorted(Scanner(settings).scan())
    if local or settings.provision_default_models:
        what = (
            f"local models ({', '.join(local[:5])}{', ...' if len(local) > 5 else ''})"
            if local
            else "the bundled models (provision_default_models is on)"
        )
        raise ConfigError(
            f"--workers {workers}: this configuration serves {what}, and each router process "
            "would load its own copy of every model. Several processes are for a gateway of "
            "remote targets and routes only: serve the local models from one `llm-router "
            "serve` (the model host) and name it as a remote target (provider: openai, "
            "base_url: http://HOST:PORT/v1) in the gateway's config, with "
            "provision_default_models: false and no models in its models_dir."
        )
    if not settings.redis_url:
        raise ConfigError(
            f"--workers {workers}: redis_url is not set. Rate limits, circuit breakers, usage "
            "and the response cache are kept per process without it, so N processes would "
            "let through N times the configured limits. Set redis_url (e.g. "
            "redis://127.0.0.1:6379/0, or LLM_ROUTER_REDIS_URL) or serve with --workers 1."
        )


def run_many(settings: Settings, workers: int, source: ConfigSource | None = None) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; the exit status for the command,
    or minus the signal that stopped it (the caller ends by it, as one process does).
    SIGHUP is forwarded to every process (each reloads `source`); a process reloaded over
    HTTP sends it here, so that the others follow."""
    check_workers(settings, workers)
    sockets = _bind(settings.host, settings.port, workers)
    port = sockets[0].getsockname()[1]
    settings = settings.model_copy(update={"port": port, "watch_interval": 0.0})
    ctx = multiprocessing.get_context("spawn")
    stop: list[int] = []  # the signal that stops everything, once received
    signal.signal(signal.SIGTERM, lambda sig, _: stop.append(sig))
    signal.signal(signal.SIGINT, lambda sig, _: stop.append(sig))
    hangups: list[int] = []
    if source is not None:
        signal.signal(signal.SIGHUP, lambda sig, _: hangups.append(sig))
    watched = source.path if source is not None and settings.watch_config else None
    seen = stamp(watched) if watched is not None else None
    settling = Settling(round(SETTLE / LOOK_EVERY))  # watch_config: as one process's watch
    released, release = ctx.Pipe(duplex=False)  # closing `release` releases them (Peers)
    drained: dict[int, Event] = {}  # each process's, by its place in `procs`

    def start(i: int) -> Any:
        peers = Peers(ctx.Event(), released)
        drained[i] = peers.drained
        args = (settings, sockets[i], os.getpid(), source, peers)
        proc = ctx.Process(target=_child, args=args, daemon=False)
        proc.start()
        return proc

    procs = [start(i) for i in range(len(sockets))]
    log.info(
        "serving on http://%s:%d with %d router processes (%s)",
        settings.host,
        port,
        workers,
        ", ".join(str(p.pid) for p in procs),
    )
    status = forwarded = 0
    while any(p.is_alive() for p in procs):
        if stop and forwarded == 0:  # stopping: the processes' sockets close with them (Peers)
            for sock in sockets:
                sock.close()
        for sig in stop[forwarded:]:  # each signal once: a second SIGTERM skips the drain
            forwarded += 1
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, sig)
        if watched is not None and (now := stamp(watched)) != seen and settling.settled(now):
            seen = now
            hangups.append(signal.SIGHUP)  # the config file changed: watch_config
        if hangups and not stop:  # several SIGHUPs in one turn: one reload is enough
            hangups.clear()
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signal.SIGHUP)
        if stop and all(drained[i].is_set() or not p.is_alive() for i, p in enumerate(procs)):
            release.close()  # every process drained: they stop together
        for i, proc in enumerate(procs):
            if stop or proc.is_alive():
                continue
            if proc.exitcode == STARTUP_FAILED:
                log.error("router process %s failed to start: stopping all of them", proc.pid)
                stop.append(signal.SIGTERM)
                status = 1
                break
            log.warning(
                "router process %s ended (status %s): restarting it", proc.pid, proc.exitcode
            )
            procs[i] = start(i)
        time.sleep(LOOK_EVERY)
    for sock in sockets:
        sock.close()  # closed already if a stop began while they ran
    release.close()
    released.close()
    if stop and not status:
        return -stop[0]  # as one process does, the command ends by the signal it was sent
    return status


def listen(host: str, port: int) -> socket.socket:
    """The one process's listening socket, bound before anything starts (a port in use is
    then a one-line error at once, not uvicorn's after the models were provisioned). Raises
    ConfigError."""
    return _bind(host, port, 1)[0]


def _bind(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets on one address; several share it (SO_REUSEPORT, one per router
    process), one does not (a second server on its port is refused, as uvicorn's would be).

    The kernel lets any process of the same user join sockets that have SO_REUSEPORT, so a
    second `serve --workers N` on the port would start and take part of its connections.
    Several sockets are therefore bound only after a probe without SO_REUSEPORT was bound
    and closed: it fails on a port anyone listens on. A server that binds the port in the
    moment between the probe's close and the first bind below is not seen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        if count > 1:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                port = probe.getsockname()[1]  # port 0: the sockets below share this one
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the first's
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def _child(
    settings: Settings,
    sock: socket.socket,
    parent: int,
    source: ConfigSource | None,
    peers: Peers,
) -> None:
    """One router process (spawned: a fresh interpreter). It has a process group of its own,
    so that a Ctrl-C reaches it once, through the parent; it drains when the parent dies."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its server handles it: a reload
    from ..logs import setup_logging

    setup_logging(settings.log_level, settings.log_format == "json")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if source is not None and source.first is not None:
        # a process started again after a reload (one died) serves what the others do
        with contextlib.suppress(ConfigError):
            settings = plan(settings, source.first, source.load()).settings
    try:
        served = run_one(settings, sockets=[sock], source=source, parent=parent, peers=peers)
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it drained for again: no traceback
        sys.exit(128 + signal.SIGINT)  # in a JSON log, nor once per process
    except ConfigError as exc:
        log.error("%s", exc.message)
        sys.exit(STARTUP_FAILED)
    if not served:
        sys.exit(STARTUP_FAILED)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
