"""The semantic cache: a request whose text means nearly the same as a cached one's (cosine
distance of their embeddings within `threshold`), to the same model with the same parameters
and the same data in its turns (tool calls, tool results: keys.py `exact_part`), gets that
answer. Off unless `cache.semantic.model` names an embedding model (e.g. the bundled
all-MiniLM-L6-v2). Only requests the exact cache would cache are looked up.

The vectors live in this process (numpy, up to `max_entries`, the oldest dropped first); they
point at exact cache keys, so the answers themselves are in the tiers. With the Redis tier on,
they are shared with every router on that Redis too (shared.py): a lookup first takes in what
the others added. A lookup embeds the request's text once (a few milliseconds on a small local
model), reused to remember it if it is computed.

A text longer than the model reads (all-MiniLM-L6-v2: 256 tokens, the rest is cut off) is
neither looked up nor remembered: its vector says nothing of what comes after the cut, so
every question after one shared context (a RAG document, a long system prompt, the earlier
turns of a chat) embedded alike, at distance 0, and got the first one's answer. The engine
says how many tokens it read and where it cuts (`Embeddings.window`): a count that reaches
the window is taken as cut. Lookups are counted as `tier="semantic"`: hit, near_miss (within
twice the threshold), miss, too_long.

A lookup never makes a request much slower than no cache: it waits at most `timeout` for its
vector (the embedding model may be busy with a user's batch: a greedy chat waited 30 s behind
one; or loading), then the request goes on without it (`timeout`; a load goes on). It never
makes room for the embedding model: one that is not loaded loads only where it fits beside
the loaded models, else the lookup is skipped (`unloaded`; under `models_max: 1` each miss
evicted the chat model to embed, and loaded it again to answer)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelNotLoaded, RouterError
from ..routing.dispatcher import Dispatcher
from ..routing.targets import EmbedCall, Lease

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .shared import SharedVectors

__all__ = ["SemanticCache", "SemanticMatch"]

log = logging.getLogger(__name__)

_BESIDE = Lease(evict=False)  # a lookup never makes room for the embedding model


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """What a lookup found: the exact key of the nearest cached request (None: nothing close
    enough), its distance, and the request's own vector (to `add` once computed)."""

    key: str | None
    distance: float
    vector: np.ndarray


class _Group:
    """The vectors of one model and parameter set, as rows of a unit-norm matrix."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.seen: set[str] = set()
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.last_id = "-"  # of the shared stream: the last entry taken in


class SemanticCache:
    def __init__(
        self,
        dispatcher: Dispatcher,
        model: str,
        threshold: float,
        max_entries: int,
        metrics: Metrics | None = None,
        shared: SharedVectors | None = None,
        spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
        timeout: float = 0.5,
    ) -> None:
        """`shared`: the vectors of other routers (and theirs of ours); `spawn` runs its
        writes in the background (the response cache's, awaited at close)."""
        self.dispatcher = dispatcher
        self.shared = shared
        self.spawn = spawn
        self.model = model
        self.threshold = threshold
        self.max_entries = max_entries
        self.metrics = metrics
        self.timeout = timeout
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._count = 0

    async def lookup(self, group: str, text: str) -> SemanticMatch | None:
        """The nearest cached request of `group` (a digest of model and parameters) to `text`.
        None when `text` is longer than the model reads, the vector took longer than `timeout`,
        the model is not loaded and has no room, or it failed (logged): the request is served
        without the semantic cache (the exact one applies)."""
        try:
            if self.shared is None:
                vector = await asyncio.wait_for(self._embed(text), self.timeout)
            else:
                both = asyncio.gather(self._embed(text), self._take_in(group, self.shared))
                vector, _ = await asyncio.wait_for(both, self.timeout)
        except TimeoutError:
            self._count_result("timeout")
            return None
        if vector is None:
            return None
        entries = self._groups.get(group)
        if entries is None or not entries.keys:
            self._count_result("miss")
            return SemanticMatch(None, 2.0, vector)
        distances = 1.0 - entries.matrix @ vector
        best = int(np.argmin(distances))
        distance = float(distances[best])
        if distance <= self.threshold:
            self._count_result("hit")
            return SemanticMatch(entries.keys[best], distance, vector)
        self._count_result("near_miss" if distance <= 2 * self.threshold else "miss")
        return SemanticMatch(None, distance, vector)

    async def _embed(self, text: str) -> np.ndarray | None:
        try:
            _, out = await self.dispatcher.embed(self.model, EmbedCall([text], lease=_BESIDE))
        except ModelNotLoaded:
            self._count_result("unloaded")
            return None
        except RouterError as exc:
            log.warning("semantic cache: embedding with %s failed: %s", self.model, exc)
            return None
        if out.window is not None and out.prompt_tokens >= out.window:
            self._count_result("too_long")
            return None
        vector = np.asarray(out.vectors[0], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    async def _take_in(self, group: str, shared: SharedVectors) -> None:
        """What other routers added to `group` since this one last looked."""
        entries = self._groups.get(group)
        last, rows = await shared.since(group, entries.last_id if entries else "-")
        for key, vector in rows:
            self._append(group, vector, key)
        entries = self._groups.get(group)
        if entries is not None:
            entries.last_id = last

    def add(self, group: str, vector: np.ndarray, key: str) -> None:
        """Remember that `vector`'s request is cached under `key` (and tell the others)."""
        self._append(group, vector, key)
        if self.shared is not None and self.spawn is not None:
            self.spawn(self.shared.publish(group, key, vector))

    def _append(self, group: str, vector: np.ndarray, key: str) -> None:
        entries = self._groups.setdefault(group, _Group())
        self._groups.move_to_end(group)
        if key in entries.seen:
            return  # ours coming back from Redis, or an answer computed again
        if entries.matrix.size and entries.matrix.shape[1] != vector.shape[0]:
            return  # another embedding model's vector
        entries.seen.add(key)
        if entries.matrix.size == 0:
            entries.matrix = vector[None, :].copy()
        else:
            entries.matrix = np.vstack([entries.matrix, vector[None, :]])
        entries.keys.append(key)
        self._count += 1
        while self._count > self.max_entries:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        group, entries = next(iter(self._groups.items()))
        entries.seen.discard(entries.keys.pop(0))
        entries.matrix = entries.matrix[1:]
        self._count -= 1
        if not entries.keys:
            del self._groups[group]

    def _count_result(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels("semantic", result).inc()
