"""Embeddings: OpenAI request in, OpenAI response out. Knows nothing of HTTP.

A local model is leased from the lifecycle manager for the batch (loaded on demand like any
other model); a remote target gets the request as it came. What can be refused without running
the model is refused before anything loads: a model that generates text, and `dimensions` a
model cannot give. `dimensions` is honoured by cutting and renormalizing the vectors of models
that declare Matryoshka training; asking a model for its own size always works."""

from __future__ import annotations

import base64
import math
import sys
import time
from array import array

from pydantic import ValidationError

from ..errors import BadRequest, RouterError, UpstreamError
from ..lifecycle.discovery import ModelSource
from ..metrics import Metrics
from ..protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from ..routing.dispatcher import Dispatcher
from ..routing.upstream import Upstream

__all__ = ["EmbeddingService", "fit_dimensions", "to_base64"]


class EmbeddingService:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None = None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()

    async def embed(self, req: EmbeddingRequest) -> EmbeddingResponse:
        """Raises ModelNotFound, BadRequest (a text model, `dimensions` it cannot give, inputs
        over its context), the lifecycle's errors (queue full, load failed...) or the
        upstream's for a remote target."""
        if req.model in {r.name for r in self.dispatcher.routes()}:
            raise BadRequest(
                f"'{req.model}' is a route, which serves chat and completions; embeddings need "
                "a model id or alias", param="model",
            )  # fmt: skip
        target = self.dispatcher.target(req.model)
        started = time.perf_counter()
        outcome = "cancelled"
        try:
            if target.remote is not None:
                result = await _remote(target.remote, target.id, req)
            else:
                result = await self._local(target.id, req)
            outcome = "ok"
            self.metrics.tokens.labels(target.id, "prompt").inc(result.usage.prompt_tokens)
            return result
        except RouterError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.metrics.requests.labels(target.id, "embeddings", outcome).inc()
            self.metrics.duration.labels(target.id, "embeddings").observe(
                time.perf_counter() - started
            )

    async def _local(self, model_id: str, req: EmbeddingRequest) -> EmbeddingResponse:
        manager = self.dispatcher.manager
        source = manager.resolve(model_id).source
        _check(source, req.dimensions)
        async with manager.lease(model_id) as worker:
            out = await worker.embed(req.inputs())
        matryoshka = bool(source.info and source.info.matryoshka)
        vectors = fit_dimensions(out.vectors, req.dimensions, matryoshka=matryoshka,
                                 model=model_id)  # fmt: skip
        data = [
            EmbeddingData(index=i, embedding=to_base64(v) if req.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        usage = EmbeddingUsage(prompt_tokens=out.prompt_tokens, total_tokens=out.prompt_tokens)
        return EmbeddingResponse(data=data, model=model_id, usage=usage)


async def _remote(remote: Upstream, name: str, req: EmbeddingRequest) -> EmbeddingResponse:
    data = await remote.embed(req.model_dump(exclude_unset=True))
    try:
        return EmbeddingResponse.model_validate({**data, "model": name})
    except ValidationError as exc:
        raise UpstreamError(
            f"upstream {name} answered with no embeddings response: {exc.errors()[0]['msg']}",
            status=502,
        ) from None


def _check(source: ModelSource, dimensions: int | None) -> None:
    """What the model's files already tell: it generates text, or cannot give `dimensions`."""
    info = source.info
    if info is None:
        return  # an engine that reads the file itself decides
    if info.task != "embed":
        raise BadRequest(
            f"model '{source.id}' generates text and makes no embeddings; ask it through "
            "/v1/chat/completions or /v1/completions, or pick an embedding model",
            param="model",
        )
    if dimensions is not None and info.embedding_length:
        _fits(dimensions, info.embedding_length, matryoshka=info.matryoshka, model=source.id)


def _fits(wanted: int, native: int, *, matryoshka: bool, model: str) -> None:
    if wanted == native:
        return
    if not matryoshka:
        raise BadRequest(
            f"model '{model}' makes {native}-dimensional embeddings and declares no Matryoshka "
            f"training, so they cannot be shortened: leave `dimensions` out or set it to {native}",
            param="dimensions",
        )
    if wanted > native:
        raise BadRequest(
            f"`dimensions` is {wanted}, but model '{model}' makes {native}-dimensional embeddings",
            param="dimensions",
        )


def fit_dimensions(
    vectors: list[list[float]], wanted: int | None, *, matryoshka: bool, model: str
) -> list[list[float]]:
    """`vectors` cut to their first `wanted` dimensions and renormalized (Matryoshka models
    only; any model for its own size). Raises BadRequest otherwise."""
    if wanted is None or not vectors:
        return vectors
    _fits(wanted, len(vectors[0]), matryoshka=matryoshka, model=model)
    if wanted == len(vectors[0]):
        return vectors
    cut = [v[:wanted] for v in vectors]
    return [[x / (math.sqrt(sum(y * y for y in v)) or 1.0) for x in v] for v in cut]


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector as little-endian float32, base64."""
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")
