"""The embedding service without HTTP: the wire types, `dimensions`, base64, and the whole path
(router -> lease -> worker process -> engine) on the fake engine; a worker that dies mid-request
is a WorkerDied, not a hang."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from llm_router.config import ModelConfig, RouteConfig, Settings
from llm_router.errors import BadRequest, WorkerDied
from llm_router.lifecycle.manager import ModelManager
from llm_router.protocol import EmbeddingRequest
from llm_router.routing.dispatcher import Dispatcher
from llm_router.routing.local import fit_dimensions
from llm_router.serving.embed import EmbeddingService, to_base64

pytestmark = pytest.mark.timeout(60)


# -- wire types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "inputs"),
    [("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_every_input_shape(value: object, inputs: object) -> None:
    assert EmbeddingRequest(model="m", input=value).inputs() == inputs


@pytest.mark.parametrize(
    "value", [[], [""], "", ["a", 1], [1.5], [-1], [[]], [[1, "a"]], [2**31], 3]
)
def test_bad_inputs_are_refused_naming_input(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        EmbeddingRequest(model="m", input=value)
    assert {e["loc"][0] for e in err.value.errors()} == {"input"}


def test_encoding_format_and_dimensions_are_checked() -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="x", encoding_format="int8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="x", dimensions=0)


# -- dimensions and base64 ------------------------------------------------------------------


def test_matryoshka_vectors_are_cut_and_renormalized() -> None:
    vectors = [[0.6, 0.8, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]
    cut = fit_dimensions(vectors, 2, matryoshka=True, model="m")
    assert np.allclose(cut, [[0.6, 0.8], [math.sqrt(0.5), math.sqrt(0.5)]], rtol=0, atol=1e-12)
    assert fit_dimensions(vectors, 4, matryoshka=False, model="m") is vectors
    assert fit_dimensions(vectors, None, matryoshka=False, model="m") is vectors


@pytest.mark.parametrize(("wanted", "matryoshka"), [(2, False), (8, True)])
def test_dimensions_a_model_cannot_give_are_refused(wanted: int, matryoshka: bool) -> None:
    with pytest.raises(BadRequest) as err:
        fit_dimensions([[1.0, 0.0, 0.0, 0.0]], wanted, matryoshka=matryoshka, model="m")
    assert err.value.param == "dimensions"


def test_base64_is_little_endian_float32() -> None:
    vector = [0.1, -2.5, 3.25, 1e-8]
    decoded = np.frombuffer(base64.b64decode(to_base64(vector)), dtype="<f4")
    assert np.array_equal(decoded, np.array(vector, dtype=np.float32))


# -- the whole path on the fake engine ------------------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddingService]:
    (tmp_path / "fake.json").write_text(json.dumps({"reply": "a b"}))
    settings = Settings(
        models_dir=tmp_path / "none",
        watch_interval=0,
        provision_default_models=False,
        models=[ModelConfig(id="fake", path=tmp_path / "fake.json", engine="fake")],
        routes=[RouteConfig(name="auto", targets=["fake"])],
    )
    manager = ModelManager(settings)
    router = Dispatcher(settings, manager)
    await manager.start()
    await router.start()
    yield EmbeddingService(router)
    await router.close()
    await manager.close()


async def test_embeddings_through_a_worker(service: EmbeddingService) -> None:
    out = await service.embed(EmbeddingRequest(model="fake", input=["one two", "three"]))
    assert out.model == "fake" and [d.index for d in out.data] == [0, 1]
    assert out.usage.prompt_tokens == out.usage.total_tokens == 3  # the fake counts words
    vectors = [d.embedding for d in out.data]
    assert all(isinstance(v, list) and len(v) == 8 for v in vectors)
    packed = await service.embed(
        EmbeddingRequest(model="fake", input=["one two", "three"], encoding_format="base64")
    )
    for d, v in zip(packed.data, vectors, strict=True):
        assert isinstance(d.embedding, str)
        assert np.allclose(np.frombuffer(base64.b64decode(d.embedding), "<f4"), v)
    ids = await service.embed(EmbeddingRequest(model="fake", input=[3, 4, 5]))
    assert ids.usage.prompt_tokens == 3 and len(ids.data) == 1


async def test_a_route_name_is_refused(service: EmbeddingService) -> None:
    with pytest.raises(BadRequest, match="is a route") as err:
        await service.embed(EmbeddingRequest(model="auto", input="x"))
    assert err.value.param == "model"


async def test_a_worker_that_dies_is_a_worker_died(service: EmbeddingService) -> None:
    manager = service.dispatcher.manager
    async with manager.lease("fake") as worker:
        os.kill(worker.pid, signal.SIGKILL)
        await asyncio.wait_for(worker.exited.wait(), 10)
        with pytest.raises(WorkerDied):
            await worker.embed(["x"])
    out = await service.embed(EmbeddingRequest(model="fake", input="x"))  # loads it again
    assert len(out.data) == 1
