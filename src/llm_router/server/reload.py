"""Reloads of a running server: `POST /admin/reload` (the `admin` scope) and SIGHUP read the
configuration again from where `llm-router serve` read it (its `--config` file, the
environment, its flags) and apply what can change while serving (reload.py says what).

One reload at a time. An invalid configuration changes nothing: the HTTP answer is a 400
naming the key, a SIGHUP logs it. Every reload done over HTTP, and every signalled one that
changed something, goes into the audit log as `config.reloaded` (who: the key's name, or
"SIGHUP"). Under `serve --workers N` each router process reloads itself: a SIGHUP to the
parent is forwarded to all of them, and a process reloaded over HTTP sends its parent a
SIGHUP so that the others follow (for it, that second reading changes nothing).

`watch_config: true` reloads whenever the file changes (its inode, size or mtime, looked at
every second), as llama-swap's `--watch-config` (under `--workers`, the parent looks), once
it stayed unchanged for `SETTLE` seconds (reload.py's `Settling`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from ..api import Router
from ..config import Settings
from ..errors import ConfigError, ReloadRejected
from ..gateway.service import Gateway
from ..reload import SETTLE, ConfigSource, Settling, plan, stamp

__all__ = ["Reloader"]

log = logging.getLogger(__name__)
SIGNALLED = "SIGHUP"  # the audit log's actor for a reload by signal
WATCHED = "config file changed"  # and for one by `watch_config`
WATCH_EVERY = 1.0  # seconds between looks at the file (`watch_config`)


class Reloader:
    """`source`: where the settings came from (None: made in code, nothing to read again);
    `parent`: the pid of `serve --workers N`'s parent process, told of reloads over HTTP."""

    def __init__(
        self,
        core: Router,
        gateway: Gateway,
        state: Any,
        source: ConfigSource | None = None,
        parent: int | None = None,
    ) -> None:
        self.core = core
        self.gateway = gateway
        self.state = state  # the app's state: its `settings` follow the reloads
        self.source = source
        self.parent = parent
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def reload(self, actor: str | None) -> dict[str, Any]:
        """Read the configuration again and apply it; what changed. Raises ReloadRejected."""
        async with self._lock:
            try:
                result = await self._reload(actor)
            except Exception:  # rejected (or failed): nothing changed
                self.core.metrics.count_reload(applied=False)
                raise
            self.core.metrics.count_reload(applied=True)
        if actor not in (SIGNALLED, WATCHED) and self.parent is not None:
            with contextlib.suppress(ProcessLookupError):  # a parent gone: we drain anyway
                os.kill(self.parent, signal.SIGHUP)  # the other router processes follow
        return result

    def on_signal(self) -> None:
        """SIGHUP (on the event loop, from `loop.add_signal_handler`); ignored once the
        server is stopping."""
        if not self._closed:
            self._spawn(self._unattended(SIGNALLED), "reload")

    def catch_up(self) -> None:
        """Once the server handles SIGHUP: the SIGHUPs that came while it started were held
        (`serve`, and each process of `serve --workers N`), so it reloads if the file changed
        since it was read."""
        source = self.source
        if source is None or source.path is None:
            return
        if stamp(source.path) != source.read:
            self.on_signal()

    def watch(self) -> None:
        """Reload whenever the config file changes (`watch_config`), until `close`. Not in a
        process of `serve --workers N`: its parent watches and signals them all."""
        if self.source is None or self.source.path is None or self.parent is not None:
            return
        self._spawn(self._watch(self.source), "watch-config")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _watch(self, source: ConfigSource) -> None:
        assert source.path is not None
        settling = Settling(max(1, round(SETTLE / WATCH_EVERY)))
        while True:
            await asyncio.sleep(WATCH_EVERY)
            # Against the file as last read: a change since, even before this task started,
            # reloads, once the file stayed as it is for a while (a write in several steps is
            # read whole); a file gone is not read.
            now = stamp(source.path)
            if now is not None and now != source.read and settling.settled(now):
                await self._unattended(WATCHED)

    async def _unattended(self, actor: str) -> None:
        try:
            await self.reload(actor)
        except ReloadRejected as exc:
            log.error("%s: %s", actor, exc.message)
        except Exception:  # nobody awaits this: say what went wrong, keep serving
            log.exception("%s: the reload failed", actor)

    async def _reload(self, actor: str | None) -> dict[str, Any]:
        if self.source is None:
            raise ReloadRejected(
                "this server has no configuration to read again (it was given its settings "
                "in code); `llm-router serve` reloads its --config file, environment and flags"
            )
        running: Settings = self.state.settings
        first = self.source.first or running  # the reading the server started from
        if self.source.path is not None and await asyncio.to_thread(_blank, self.source.path):
            self.source.read = stamp(self.source.path)  # the watch waits for the next write
            raise ReloadRejected(
                f"configuration not reloaded: {self.source.path} is empty (an editor in the "
                "middle of writing it?); to go back to the defaults, write `{}` in it"
            )
        try:
            new = await asyncio.to_thread(self.source.load)
        except ConfigError as exc:
            raise ReloadRejected(f"configuration not reloaded: {exc.message}") from None
        change = plan(running, first, new)
        try:
            unloaded = self.core.reconfigure(change.settings)
        except ConfigError as exc:
            raise ReloadRejected(f"configuration not reloaded: {exc.message}") from None
        self.state.settings = change.settings
        self.gateway.set_prices(change.settings)  # keys' spend
        path = str(self.source.path) if self.source.path else ""
        detail = {
            "applied": list(change.applied),
            "unloaded": unloaded,
            "restart_required": list(change.restart_required),
        }
        warnings = self.core.dispatcher.warnings()  # served as configured, but said
        log.info(
            "configuration reloaded (%s): applied %s; models unloaded %s%s",
            actor or "loopback",
            ", ".join(change.applied) or "nothing",
            ", ".join(unloaded) or "none",
            f"; waiting for a restart: {', '.join(change.restart_required)}"
            if change.restart_required
            else "",
        )
        if actor not in (SIGNALLED, WATCHED) or change.applied or unloaded:
            await self.gateway.audit(actor, "config.reloaded", path, **detail)
        return {"reloaded": True, "config": path or None, **detail, "warnings": warnings}


def _blank(path: Path) -> bool:
    """Whether the file holds nothing but white space (a missing file, or one that is no
    UTF-8 text, is an error later, when it is read)."""
    try:
        return not path.read_bytes().strip()
    except OSError:
        return False
