"""Embeddings: OpenAI request in, OpenAI response out. Knows nothing of HTTP.

The dispatcher sends the request to its target (a local model, leased and loaded on demand,
or a remote server) with the target's breaker and stats, as for generations. What can be
refused without running the model is refused before anything loads (routing/local.py): a model
that generates text, and `dimensions` a model cannot give."""

from __future__ import annotations

import base64
import sys
import time
from array import array

from ..errors import RouterError
from ..metrics import Metrics
from ..protocol import (
    OPENAI_EMBEDDING_FIELDS,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from ..routing.dispatcher import Dispatcher
from ..routing.targets import EmbedCall, Lease
from ..types import Usage
from .route_info import RouteInfo

__all__ = ["EmbeddingService", "encoded", "to_base64"]


class EmbeddingService:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None = None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()
        # what a remote target is sent: OpenAI's fields and `forward_fields` (it was every
        # field, `keep_alive` and `cache` too, which OpenAI's API refuses as unknown)
        self._forwarded = OPENAI_EMBEDDING_FIELDS | set(dispatcher.settings.forward_fields)

    async def embed(
        self, req: EmbeddingRequest, route: RouteInfo | None = None
    ) -> EmbeddingResponse:
        """`route`, when given, is filled in as for a generation (target, usage). Raises
        ModelNotFound, BadRequest (a route, a text model, `dimensions` it cannot give, inputs
        over its context), the lifecycle's errors (queue full, load failed...), ServerBusy (its
        breaker is open) or the upstream's for a remote target."""
        started = time.perf_counter()
        outcome, model = "cancelled", "unknown"
        if route is not None:
            route.model = req.model  # the log names the model asked, whatever happens next
        try:
            model = self.dispatcher.resolve(req.model)  # raises ModelNotFound
            dumped = req.model_dump(exclude_unset=True)
            body = {k: v for k, v in dumped.items() if k in self._forwarded}
            lease = Lease.of(req.autoload, req.keep_alive)  # BadRequest for a bad keep_alive
            call = EmbedCall(req.inputs(), req.dimensions, body, lease)
            model, out = await self.dispatcher.embed(req.model, call)
            outcome = "ok"
            if route is not None:
                route.model, route.target, route.reason = req.model, model, "direct"
                route.usage = Usage(out.prompt_tokens, 0)
            self.metrics.tokens.labels(model, "prompt").inc(out.prompt_tokens)
        except RouterError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if route is not None and outcome != "ok":
                route.error = outcome
            self.metrics.requests.labels(model, "embeddings", outcome).inc()
            self.metrics.duration.labels(model, "embeddings").observe(time.perf_counter() - started)
        data = [EmbeddingData(index=i, embedding=v) for i, v in enumerate(out.vectors)]
        usage = EmbeddingUsage(prompt_tokens=out.prompt_tokens, total_tokens=out.prompt_tokens)
        return encoded(EmbeddingResponse(data=data, model=model, usage=usage), req.encoding_format)


def encoded(response: EmbeddingResponse, encoding_format: str) -> EmbeddingResponse:
    """`response` (its vectors as floats) with its vectors as `encoding_format` asks."""
    if encoding_format != "base64":
        return response
    data = [
        d.model_copy(update={"embedding": to_base64(d.embedding)})
        if isinstance(d.embedding, list)
        else d
        for d in response.data
    ]
    return response.model_copy(update={"data": data})


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector as little-endian float32, base64."""
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
