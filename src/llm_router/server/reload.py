"""Reloads of a running server: `POST /admin/reload` (the `admin` scope) and SIGHUP read the
configuration again from where `llm-router serve` read it (its `--config` file, the
environment, its flags) and apply what can change while serving (reload.py says what).

One reload at a time. An invalid configuration changes nothing: the HTTP answer is a 400
naming the key, a SIGHUP logs it. Every reload done over HTTP, and every signalled one that
changed something, goes into the audit log as `config.reloaded` (who: the key's name, or
"SIGHUP"). Under `serve --workers N` each router process reloads itself: a SIGHUP to the
parent is forwarded to all of them, and a process reloaded over HTTP sends its parent a
SIGHUP so that the others follow (for it, that second reading changes nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from ..api import Router
from ..config import Settings
from ..errors import ConfigError, ReloadRejected
from ..gateway.service import Gateway
from ..reload import ConfigSource, plan

__all__ = ["Reloader"]

log = logging.getLogger(__name__)
SIGNALLED = "SIGHUP"  # the audit log's actor for a reload by signal


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

    async def reload(self, actor: str | None) -> dict[str, Any]:
        """Read the configuration again and apply it; what changed. Raises ReloadRejected."""
        async with self._lock:
            result = await self._reload(actor)
        if actor != SIGNALLED and self.parent is not None:
            with contextlib.suppress(ProcessLookupError):  # a parent gone: we drain anyway
                os.kill(self.parent, signal.SIGHUP)  # the other router processes follow
        return result

    def on_signal(self) -> None:
        """SIGHUP (on the event loop, from `loop.add_signal_handler`)."""
        task = asyncio.create_task(self._signalled(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _signalled(self) -> None:
        try:
            await self.reload(SIGNALLED)
        except ReloadRejected as exc:
            log.error("SIGHUP: %s", exc.message)
        except Exception:  # nobody awaits this task: say what went wrong, keep serving
            log.exception("SIGHUP: the reload failed")

    async def _reload(self, actor: str | None) -> dict[str, Any]:
        if self.source is None:
            raise ReloadRejected(
                "this server has no configuration to read again (it was given its settings "
                "in code); `llm-router serve` reloads its --config file, environment and flags"
            )
        running: Settings = self.state.settings
        first = self.source.first or running  # the reading the server started from
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
        path = str(self.source.path) if self.source.path else ""
        detail = {
            "applied": list(change.applied),
            "unloaded": unloaded,
            "restart_required": list(change.restart_required),
        }
        log.info(
            "configuration reloaded (%s): applied %s; models unloaded %s%s",
            actor or "loopback",
            ", ".join(change.applied) or "nothing",
            ", ".join(unloaded) or "none",
            f"; waiting for a restart: {', '.join(change.restart_required)}"
            if change.restart_required
            else "",
        )
        if actor != SIGNALLED or change.applied or unloaded:
            await self.gateway.audit(actor, "config.reloaded", path, **detail)
        return {"reloaded": True, "config": path or None, **detail}
