"""The counts the gateway's prompt gates take before a request runs (`prompt_tokens` for chat
and completions, `embedding_tokens` for embeddings; routing/admission.py), through the Ray
deployment's two ends without a cluster: the router's DeploymentWorker (ray_serve/handle.py)
and the model replica's `text` (ray_serve/replica.py), joined by a stand-in for Serve's
DeploymentHandle that calls the replica in this process. The counts must be the model's own,
as from a local worker; the replica's errors must come back as the same errors. (The same
path on a real cluster: test_ray_cluster.py's /tokenize.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from inproc import InProcessPool, fake_models
from llm_router.config import Settings
from llm_router.errors import ModelNotFound
from llm_router.lifecycle.manager import ModelManager
from llm_router.types import ChatMessage

if TYPE_CHECKING:
    from llm_router.ray_serve.handle import DeploymentWorker
    from llm_router.ray_serve.replica import ReplicaBase

# Ray Serve's own modules warn on import with this pydantic (a deprecation in Ray, not ours):
# they are imported in the tests, where this mark lets that one warning pass.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")


class _Remote:
    """`handle.options(...).text` as Serve has it: `.remote(...)` gives an awaitable."""

    def __init__(self, replica: ReplicaBase, model_id: str) -> None:
        self.replica = replica
        self.model_id = model_id

    def remote(self, op: str, args: dict[str, Any]) -> Any:
        self.replica.multiplexed = self.model_id  # what serve.get_multiplexed_model_id says
        return self.replica.text(op, args)


class _Handle:
    def __init__(self, replica: ReplicaBase) -> None:
        self.replica = replica
        self.model_id = ""

    def options(self, *, multiplexed_model_id: str, stream: bool = False) -> Any:
        return type("Options", (), {"text": _Remote(self.replica, multiplexed_model_id)})()


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[ReplicaBase]:
    settings = Settings(
        models_dir=tmp_path,
        models=fake_models(tmp_path, chat={}),
        watch_interval=0,
        provision_default_models=False,
        spare_workers=False,
    )
    from llm_router.ray_serve.replica import Held, ReplicaBase

    replica = object.__new__(ReplicaBase)  # its __init__ asks Ray for its replica context
    replica.manager = ModelManager(settings, pool=InProcessPool())
    await replica.manager.start()

    async def held() -> Held:
        model_id = replica.multiplexed  # type: ignore[attr-defined]
        replica.manager.resolve(model_id)  # ModelNotFound, as the real one
        return Held(replica.manager, model_id)

    replica._held = held  # type: ignore[method-assign]
    try:
        yield replica
    finally:
        await replica.manager.close()


def _worker(replica: ReplicaBase, model_id: str) -> DeploymentWorker:
    from llm_router.ray_serve.handle import DeploymentWorker

    return DeploymentWorker(_Handle(replica), model_id, view=None, slots=1, retry_window=1.0)  # type: ignore[arg-type]


async def test_prompt_and_embedding_counts_cross_the_deployment_as_they_are(
    replica: ReplicaBase,
) -> None:
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hello there"))
    inputs: list[str] | list[list[int]] = ["one two three", "four five"]
    async with replica.manager.lease("chat") as local:  # the same model, asked directly
        expected = (
            await local.prompt_tokens(messages=messages),
            await local.prompt_tokens(text="Once upon a time"),
            await local.embedding_tokens(inputs),
            await local.embedding_tokens([[1, 2, 3, 4]]),
        )
    worker = _worker(replica, "chat")
    got = (
        await worker.prompt_tokens(messages=messages),
        await worker.prompt_tokens(text="Once upon a time"),
        await worker.embedding_tokens(inputs),
        await worker.embedding_tokens([[1, 2, 3, 4]]),
    )
    assert got == expected
    assert expected[0] > expected[1] > 0 and expected[2:] == (5, 4)


async def test_an_error_on_the_replica_comes_back_as_itself(replica: ReplicaBase) -> None:
    with pytest.raises(ModelNotFound):
        await _worker(replica, "no-such-model").prompt_tokens(text="Hi")
