"""Starting a worker process: spawned on the event loop, or started before it runs (`Early`)
and adopted, then waited on until it has imported its engine's library (a `Spare`, ready for
`Worker.start` in client.py to load a model into). Nothing is left running when a start fails
or is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Protocol

from .protocol import decode

__all__ = ["STREAM_LIMIT", "Early", "Process", "Spare", "describe_exit", "kill_and_wait"]

STREAM_LIMIT = 64 * 1024 * 1024  # the longest line read from a worker's channel


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker is gone"
    if code < 0:
        try:
            return f"worker was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker was killed by signal {-code}"
    return f"worker exited with code {code}"


class Process(Protocol):
    """What is used of a worker's process: asyncio's, or a started one adopted (`Early`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class Early:
    """A worker process started before the event loop runs (`Early.start`, from the CLI
    before the server's own imports, so both import at once), adopted later as a Spare."""

    def __init__(self, engine: str, popen: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.engine = engine
        self.popen = popen
        self.sock = sock

    @classmethod
    def start(cls, engine: str) -> Early:
        parent, child = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "llm_router.worker", str(child.fileno()), engine],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        return cls(engine, popen, parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        return await asyncio.to_thread(self.popen.wait)

    def kill(self) -> None:
        self.popen.kill()

    def discard(self) -> None:
        """Let it go unused (it exits when its socket closes)."""
        self.sock.close()
        try:
            self.popen.wait(2)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass(eq=False)
class Spare:
    """A started worker process that has imported an engine's library and waits for the model
    to load. `rss`: its memory then, what any worker of this engine holds before a model."""

    engine: str
    proc: Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    rss: int | None = None

    @classmethod
    async def spawn(cls, engine: str, early: Early | None = None) -> Spare:
        """Start a worker (or adopt `early`) and wait until it has imported the engine's
        library. Raises OSError when the process cannot start or dies first."""
        proc: Process
        if early is not None:
            proc, parent = early, early.sock
        else:
            parent, child = socket.socketpair()
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "llm_router.worker",
                    str(child.fileno()),
                    engine,
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except BaseException:  # cancelled (a close) or could not start: no socket left
                parent.close()
                raise
            finally:
                child.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent, limit=STREAM_LIMIT)
        except BaseException:  # cancelled or failed right after spawn: leave no process
            parent.close()
            await kill_and_wait(proc)
            raise
        try:
            first = decode(await reader.readline() or b"{}")
        except BaseException as exc:
            writer.close()
            await kill_and_wait(proc)
            if isinstance(exc, ValueError):
                raise OSError(f"it wrote garbage at start: {exc}") from None
            raise
        if first.get("op") != "spare":
            writer.close()
            code = await kill_and_wait(proc)
            raise OSError(describe_exit(code))  # the pool says it was the worker's start
        rss = first.get("rss")
        return cls(engine, proc, reader, writer, rss if isinstance(rss, int) else None)

    async def discard(self) -> None:
        self.writer.close()  # an unused spare exits when its socket closes
        try:
            await asyncio.wait_for(self.proc.wait(), 2)
        except TimeoutError:
            await kill_and_wait(self.proc)


async def kill_and_wait(proc: Process) -> int | None:
    """Kill `proc` unless it has exited; its exit code once it is gone."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return await proc.wait()
