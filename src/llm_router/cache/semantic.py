"""The semantic cache: a request whose text means nearly the same as a cached one's (cosine
distance of their embeddings within `threshold`), to the same model with the same parameters,
gets that answer. Off unless `cache.semantic.model` names an embedding model (e.g. the bundled
all-MiniLM-L6-v2). Only requests the exact cache would cache are looked up.

The vectors live in this process (numpy, up to `max_entries`, the oldest dropped first); they
point at exact cache keys, so the answers themselves are in the tiers. A lookup embeds the
request's text once (a few milliseconds on a small local model), reused to remember it if it
is computed. Lookups are counted as `tier="semantic"`: hit, near_miss (within twice the
threshold), miss."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RouterError
from ..routing.dispatcher import Dispatcher
from ..routing.targets import EmbedCall

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["SemanticCache", "SemanticMatch"]

log = logging.getLogger(__name__)


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
        self.matrix = np.zeros((0, 0), dtype=np.float32)


class SemanticCache:
    def __init__(
        self,
        dispatcher: Dispatcher,
        model: str,
        threshold: float,
        max_entries: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.model = model
        self.threshold = threshold
        self.max_entries = max_entries
        self.metrics = metrics
        self._groups: OrderedDict[str, _Group] = OrderedDict()
        self._count = 0

    async def lookup(self, group: str, text: str) -> SemanticMatch | None:
        """The nearest cached request of `group` (a digest of model and parameters) to `text`.
        None when the embedding model failed (logged; the request is served uncached)."""
        try:
            _, out = await self.dispatcher.embed(self.model, EmbedCall([text]))
        except RouterError as exc:
            log.warning("semantic cache: embedding with %s failed: %s", self.model, exc)
            return None
        vector = np.asarray(out.vectors[0], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm else vector
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

    def add(self, group: str, vector: np.ndarray, key: str) -> None:
        """Remember that `vector`'s request is cached under `key`."""
        entries = self._groups.setdefault(group, _Group())
        self._groups.move_to_end(group)
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
        entries.keys.pop(0)
        entries.matrix = entries.matrix[1:]
        self._count -= 1
        if not entries.keys:
            del self._groups[group]

    def _count_result(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_lookups.labels("semantic", result).inc()
