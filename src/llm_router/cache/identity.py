"""The identity of what serves a name, for cache keys: a changed model never serves a stale
answer.

A local model: its file's size and a content hash (blake2b of every byte; of every file of a
folder model), plus its configuration (engine options, sampling defaults, system prompt) and
the server's `model_defaults` (engine options it leaves unset), but not its path or mtime, so routers sharing a Redis share answers of copies of one file. The
file is `stat`-ed on every cacheable request (a few microseconds); the content hash is
computed again whenever its size or mtime changed, once, in a thread, shared by concurrent
requests. A remote target: its name, base URL, upstream model and configuration. A route:
its configuration and the identities of all its targets, since any of them may answer."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from pathlib import Path

from ..config import ModelConfig
from ..routing.dispatcher import Dispatcher
from ..routing.local import LocalTarget
from ..routing.remote import RemoteTarget
from .keys import digest

__all__ = ["Identities", "StaleModel", "hash_content"]

_CHUNK = 1 << 20


def hash_content(path: Path) -> str:
    """blake2b of the file's bytes (of a folder: of each file's relative path and bytes).
    Blocks: reads every byte."""
    h = hashlib.blake2b(digest_size=20)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file != path:
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


class StaleModel(Exception):
    """A loaded model's file changed since its worker read it: its answers are not cached."""


class Identities:
    """Identities of names, for one dispatcher. Content hashes are memoized per file state."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._hashes: dict[tuple[Path, int, int, int], asyncio.Future[str]] = {}
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
        """`size:hash` of the file as it is now; the hash computed once per (size, mtime,
        ctime). The ctime moves when a file is written in place with its mtime put back
        (`rsync --inplace -t`), and also for a new hard link or a chmod: it only asks for the
        hash again (the same bytes are the same identity), never for a reload, which the
        mtime alone decides."""
        size, mtime, ctime = await _state(path)
        self._mtimes[path] = mtime
        key = (path, size, mtime, ctime)
        future = self._hashes.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(hash_content, path))
            self._hashes = {k: v for k, v in self._hashes.items() if k[0] != path}
            self._hashes[key] = future
        try:
            content = await asyncio.shield(future)
        except Exception:
            self._hashes.pop(key, None)
            raise
        return f"{size}:{content}"  # not the mtime: replicas with copies of a file share


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """Size, mtime and ctime of a file (a `stat`: microseconds, done on the loop); None for a
    folder."""
    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


async def _state(path: Path) -> tuple[int, int, int]:
    """Size, newest mtime and newest ctime: one `stat` for a file; a folder's files are walked
    in a thread."""
    state = _file_state(path)
    if state is not None:
        return state

    def walk() -> tuple[int, int, int]:
        size = newest = changed = 0
        for file in path.rglob("*"):
            if file.is_file():
                st = file.stat()
                size += st.st_size
                newest = max(newest, st.st_mtime_ns)
                changed = max(changed, st.st_ctime_ns)
        return size, newest, changed

    return await asyncio.to_thread(walk)
