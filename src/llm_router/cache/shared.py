"""The semantic cache's vectors shared through Redis, so that routers on one Redis share one
semantic index, as they share the answers (the Redis tier) it points at.

One Redis stream per embedding model and group (model and parameters): each entry is the
exact cache key of a computed answer and its request's unit vector (float32 bytes). A router
appends what it computes (in the background) and, on each lookup, reads what was appended
since its last read (`XRANGE` after the last id it saw: usually nothing, one round trip, done
while the request is being embedded). Streams are capped at `max_entries` (approximately:
Redis trims whole nodes) and expire with the Redis tier's TTL when nothing is added. A Redis
that fails is a warning: the index then is this router's own. Needs Redis 6.2 or newer (an
exclusive `XRANGE` start)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..logs import Occasional
from .keys import digest
from .tiers import RedisTier

__all__ = ["SharedVectors"]

log = logging.getLogger(__name__)
_BATCH = 1000


class SharedVectors:
    """The streams `llm-router:semantic:<digest of model and group>` in the Redis of `tier`
    (its client, once the tier is started)."""

    prefix = "llm-router:semantic:"

    def __init__(self, tier: RedisTier, model: str, max_entries: int) -> None:
        self.tier = tier
        self.model = model
        self.max_entries = max_entries
        self.warn = Occasional(log)  # once per 10 s while Redis is down, not once a request

    def _stream(self, group: str) -> str:
        return self.prefix + digest([self.model, group])

    async def publish(self, group: str, key: str, vector: np.ndarray) -> None:
        """Append `key` and its vector for every router."""
        client: Any = self.tier.client
        if client is None:
            return
        stream = self._stream(group)
        fields = {"k": key, "v": vector.astype(np.float32).tobytes()}
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, fields, maxlen=self.max_entries, approximate=True)
                if self.tier.ttl is not None:
                    pipe.expire(stream, max(1, round(self.tier.ttl)))
                await pipe.execute()
        except Exception as exc:  # redis' errors, OSError: this router's index still has it
            self.warn.warning("semantic cache: sharing a vector through redis failed: %s", exc)

    async def since(self, group: str, after: str) -> tuple[str, list[tuple[str, np.ndarray]]]:
        """The entries of `group` added after id `after` ("-": all) and the last id read."""
        client: Any = self.tier.client
        if client is None:
            return after, []
        stream = self._stream(group)
        out: list[tuple[str, np.ndarray]] = []
        try:
            while True:
                start = "-" if after == "-" else "(" + after
                rows = await client.xrange(stream, min=start, max="+", count=_BATCH)
                for entry_id, fields in rows:
                    after = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    key, vector = fields.get(b"k"), fields.get(b"v")
                    if key is not None and vector is not None:
                        out.append((key.decode(), np.frombuffer(vector, dtype=np.float32)))
                if len(rows) < _BATCH:
                    return after, out
        except Exception as exc:
            self.warn.warning("semantic cache: reading shared vectors from redis failed: %s", exc)
            return after, out
