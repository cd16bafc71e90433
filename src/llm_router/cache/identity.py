"""The identity of what serves a name, for cache keys: a changed model never serves a stale
answer.

A local model: its file's size and a content hash (blake2b of every byte; of every file of a
folder model), plus its configuration (engine options, sampling defaults, system prompt) and
the server's `model_defaults` (engine options it leaves unset), but not its path or mtime, so
routers sharing a Redis share answers of copies of one file. The file is `stat`-ed on every
cacheable request (a few microseconds); the content hash is computed again whenever its size
or mtime changed, once, in a thread, shared by concurrent requests and the manager
(lifecycle/contents.py). A remote target: its name, base URL, upstream model and
configuration. A route: its configuration and the identities of all its targets, since any of
them may answer."""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..lifecycle.contents import hash_content
from ..routing.dispatcher import Dispatcher
from ..routing.local import LocalTarget
from ..routing.remote import RemoteTarget
from .keys import digest

__all__ = ["Identities", "StaleModel", "hash_content"]


class StaleModel(Exception):
    """A loaded model's file changed since its worker read it: its answers are not cached."""


class Identities:
    """Identities of names, for one dispatcher. Content hashes are memoized per file state."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._mtimes: dict[Path, int] = {}  # the newest mtime seen (ns) of each model file
        self._configs: dict[int, tuple[ModelConfig, str]] = {}  # id(config) -> its JSON
        self._defaults: tuple[object, str] = (None, "")  # model_defaults and its JSON

    async def of(self, name: str) -> str:
        """The identity of what serves `name`. Raises ModelNotFound for an unknown name."""
        routes = {r.name: r for r in self.dispatcher.routes()}
        route = routes.get(name)
        if route is None:
            return await self._target(name)
        parts = [route.model_dump_json()]
        for target in (*route.targets, *route.fallbacks):
            try:
                parts.append(await self._target(target))
            except StaleModel:
                raise
            except Exception:  # a missing target serves nothing: it cannot change an answer
                parts.append(f"missing:{target}")
        return digest(parts)

    async def _target(self, name: str) -> str:
        target = self.dispatcher.target(name)
        config = self._configs.get(id(target.config))
        if config is None or config[0] is not target.config:  # a config is never changed
            config = (target.config, target.config.model_dump_json(exclude={"path"}))
            self._configs[id(target.config)] = config  # where it is is not what it is
        if isinstance(target, RemoteTarget):
            upstream = target.config.model or target.id
            return digest(["remote", target.id, target.config.base_url, upstream, config[1]])
        assert isinstance(target, LocalTarget)
        state = target.lifecycle.resolve(target.id)
        content = await self.content(state.source.path)
        if state.worker is not None and state.loaded_at is not None:
            # newer than the files its worker read (not than the clock when it read them: a
            # file's time is the kernel's coarse clock, a few ms behind, so a file rewritten
            # within that of the load looked older than it, and its old answers were stored
            # under the new file's identity, then served: found by a CI run)
            if self._mtimes.get(state.source.path, 0) > state.loaded_mtime_ns:
                # the file changed under a running worker: until the manager has reloaded it,
                # answers come from the old weights, and are neither served nor stored
                target.lifecycle.refresh(force=True)
                raise StaleModel(f"model '{target.id}' changed on disk since it was loaded")
        defaults = self.dispatcher.settings.model_defaults  # options a model leaves unset
        if self._defaults[0] is not defaults:  # (a reload replaces it)
            self._defaults = (defaults, defaults.model_dump_json())
        return digest(["local", target.id, content, config[1], self._defaults[1]])

    async def content(self, path: Path) -> str:
        """`size:hash` of the file as it is now, the hash computed once per file state and
        shared with the manager (lifecycle/contents.py); the mtime seen is remembered. Any
        change of the bytes is a new identity, never a reload, which the manager decides."""
        size, mtime, content = await self.dispatcher.manager.contents.of(path)
        self._mtimes[path] = mtime
        return f"{size}:{content}"  # not the mtime: replicas with copies of a file share
