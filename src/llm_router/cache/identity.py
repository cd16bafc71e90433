"""The identity of what serves a name, for cache keys: a changed model never serves a stale
answer.

A local model: its file's size and a content hash (blake2b of every byte; of every file of a
folder model), plus its configuration (engine options, sampling defaults, system prompt), the
server's `model_defaults` (engine options it leaves unset) and `max_tokens_limit`, but not its
path or mtime, so routers sharing a Redis share answers of copies of one file. The file is
`stat`-ed on every cacheable request (a few microseconds); the content hash is computed again
whenever its size or mtime changed, once, in a thread, shared by concurrent requests and the
manager (lifecycle/contents.py). A loaded model whose file is not the bytes its worker read has
no identity (StaleModel) until it is reloaded, and an answer is stored only if the identity it
was keyed on is still that of what serves it. A remote target: its name, base URL, upstream
model, configuration, `max_tokens_limit` and `forward_fields`. A route: its configuration and
the identities of all its targets, since any of them may answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..config import ModelConfig
from ..lifecycle.contents import hash_content
from ..lifecycle.state import ModelState
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
        self._stale: dict[Path, str] = {}  # the content last found not its worker's
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
        # the server's settings that change an answer count as the model's own: routers with
        # other settings share the disk and Redis tiers (an answer capped at one router's
        # max_tokens_limit was served whole by another's, and the other way round)
        limit = target.token_limit
        if isinstance(target, RemoteTarget):
            upstream = target.config.model or target.id
            forwarded = sorted(self.dispatcher.settings.forward_fields)  # what it is sent
            return digest(
                ["remote", target.id, target.config.base_url, upstream, config[1], limit, forwarded]
            )
        assert isinstance(target, LocalTarget)
        state = target.lifecycle.resolve(target.id)
        content = await self.content(state.source.path)
        if state.worker is not None and await self._loaded(state) != content.split(":")[1]:
            # the files are not the bytes its running worker read: until the manager has
            # reloaded it, answers come from the old weights, and are neither served nor
            # stored. Bytes, not a newer mtime: a file replaced by an older one (`mv` of an
            # earlier download, `cp -p`, `ln -sfn` to an older release) had the old model's
            # answers stored under the new file's identity, and served after the reload
            # (found from outside); a file only touched is the same bytes, the same identity
            self._rescan(target, state.source.path, content)
            raise StaleModel(f"model '{target.id}' changed on disk since it was loaded")
        defaults = self.dispatcher.settings.model_defaults  # options a model leaves unset
        if self._defaults[0] is not defaults:  # (a reload replaces it)
            self._defaults = (defaults, defaults.model_dump_json())
        return digest(["local", target.id, content, config[1], self._defaults[1], limit])

    async def _loaded(self, state: ModelState) -> str | None:
        """The content hash of the files `state`'s worker read (lifecycle/manager.py hashes
        them once it has loaded: at once when they are the file state just hashed here);
        None when unknown (they changed while it loaded)."""
        loaded = state.loaded_content
        if loaded is None:
            return None
        try:
            return await asyncio.shield(loaded)
        except OSError:  # gone or unreadable when it was hashed
            return None
        except asyncio.CancelledError:
            if loaded.cancelled():  # the manager stopped
                return None
            raise

    async def holds(self, name: str, identity: str) -> bool:
        """Whether `identity` is still that of what serves `name`, as an answer computed
        under it is about to be stored: its worker may have been replaced meanwhile (a
        model loaded by the request itself, from a file replaced since it was hashed)."""
        try:
            return await self.of(name) == identity
        except Exception:  # unknown now, or changed under its worker: not stored
            return False

    def _rescan(self, target: LocalTarget, path: Path, content: str) -> None:
        """Have the manager see the change at once, once per new content (its scan may not
        see one: a file rewritten in place with its mtime put back); then at its pace."""
        force = self._stale.get(path) != content
        self._stale[path] = content
        target.lifecycle.refresh(force=force)

    async def content(self, path: Path) -> str:
        """`size:hash` of the file as it is now, the hash computed once per file state and
        shared with the manager (lifecycle/contents.py). Any change of the bytes is a new identity, never a reload, which the manager decides."""
        size, _, content = await self.dispatcher.manager.contents.of(path)
        return f"{size}:{content}"  # not the mtime: replicas with copies of a file share
