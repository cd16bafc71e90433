"""The response cache: exact-match answers of deterministic requests, in tiers (memory LRU,
SQLite, Redis), keyed on the canonical request and the identity of what serves it, with
single flight; optionally semantic (similar requests by embedding distance)."""

from __future__ import annotations

from ..config import Settings
from ..metrics import Metrics
from ..routing.dispatcher import Dispatcher
from .identity import Identities
from .semantic import SemanticCache
from .service import CachedEmbeddingService, CachedGenerationService
from .shared import SharedVectors
from .store import ResponseCache
from .tiers import RedisTier

__all__ = [
    "CachedEmbeddingService",
    "CachedGenerationService",
    "Identities",
    "ResponseCache",
    "SemanticCache",
    "build_cache",
]


def build_cache(
    settings: Settings, dispatcher: Dispatcher, metrics: Metrics
) -> tuple[ResponseCache, CachedGenerationService, CachedEmbeddingService]:
    """The cache of `settings.cache` and the services that use it (started by `cache.start()`)."""
    cache = ResponseCache.from_settings(settings, metrics)
    identities = Identities(dispatcher)
    semantic = None
    cfg = settings.cache.semantic
    if cfg.model:
        redis = next((t for t in cache.tiers if isinstance(t, RedisTier)), None)
        shared = SharedVectors(redis, cfg.model, cfg.max_entries) if redis else None
        semantic = SemanticCache(
            dispatcher,
            cfg.model,
            cfg.threshold,
            cfg.max_entries,
            metrics,
            timeout=cfg.timeout,
            shared=shared,
            spawn=cache.background,
        )
    return (
        cache,
        CachedGenerationService(dispatcher, metrics, cache, identities, semantic),
        CachedEmbeddingService(dispatcher, metrics, cache, identities),
    )
