"""The model deployment: each replica is a ModelManager of its own (worker processes, queues,
crash recovery, the memory budget of its node), serving the models Serve's multiplexing sends
it. `@serve.multiplexed` keeps the replica's LRU of loaded models (`models_per_replica`) and
tells Serve's router which replica holds which model, so a request goes to one that already
has its model loaded when there is one; the model it evicts is unloaded after the requests
in flight on it (`unload_grace`).

Methods are called through DeploymentHandles with the model id as the multiplexed model id
(ray_serve/handle.py); answers are worker-channel messages (wire.py), errors included. Each
replica reports what it holds to the directory (directory.py) every second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from ..errors import RouterError
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import ModelSnapshot, Status
from ..worker.protocol import (
    embeddings_to_wire,
    messages_from_wire,
    pieces_to_wire,
    request_from_wire,
    template_from_wire,
)
from .wire import error_message, event_message, replica_settings, settings_from_wire

__all__ = ["replica_class"]

log = logging.getLogger(__name__)
REPORT_EVERY = 1.0  # seconds between reports to the directory


class Held:
    """A model the replica's multiplexer holds. Serve awaits its `__del__` when it evicts the
    model (its LRU is full): the manager unloads it once its requests in flight end. (An
    instance attribute, so that garbage collection never calls it.)"""

    def __init__(self, manager: ModelManager, model_id: str) -> None:
        self.manager = manager
        self.model_id = model_id
        self.__del__ = self.evicted

    async def evicted(self) -> None:
        with contextlib.suppress(RouterError):
            await self.manager.unload(self.model_id, "evicted (models_per_replica)")


class ReplicaBase:
    """The replica's work, without the Serve decorators (replica_class adds them)."""

    def __init__(self, settings: dict[str, Any], cwd: str, directory: Any) -> None:
        with contextlib.suppress(OSError):
            os.chdir(cwd)  # relative paths in the config mean what they meant to the CLI
        self.settings = replica_settings(settings_from_wire(settings))
        self.manager = ModelManager(self.settings)
        self.directory = directory
        self._started: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        context = serve.get_replica_context()
        node = ray.get_runtime_context().get_node_id()
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        ips = [n.get("NodeManagerAddress") for n in nodes if n.get("NodeID") == node]
        self.identity = {
            "replica": context.replica_id.unique_id,
            "node_id": node,
            "node_ip": ips[0] if ips else None,
            "pid": os.getpid(),
        }

    async def ready(self) -> None:
        """Start the manager once (Serve constructs replicas outside their event loop)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.manager.start())
        await asyncio.shield(self._started)
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report(), name="replica-report")

    async def model(self, model_id: str) -> Held:
        """Replaced by the multiplexed loader in replica_class."""
        raise NotImplementedError

    async def load(self) -> dict[str, Any]:
        """Load the request's model here (the multiplexed id); `{}` or `{"error"}`."""
        try:
            await self._held()
            async with self.manager.lease(serve.get_multiplexed_model_id()):
                pass
        except RouterError as exc:
            return error_message(exc)
        return {"replica": self.identity}

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one generation of the multiplexed model: the events, or an error last.
        Cancelling (the ingress's client went away) cancels the sequence in the worker."""
        try:
            model_id = (await self._held()).model_id
            async with self.manager.lease(model_id) as worker:
                async for event in worker.generate(request_from_wire(request)):
                    yield event_message(event)
        except RouterError as exc:
            yield error_message(exc)

    async def embed(self, inputs: list[str] | list[list[int]]) -> dict[str, Any]:
        try:
            model_id = (await self._held()).model_id
            async with self.manager.lease(model_id) as worker:
                out = await worker.embed(inputs)
        except RouterError as exc:
            return error_message(exc)
        return embeddings_to_wire(0, out.vectors, out.prompt_tokens)

    async def text(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One of the text operations (llama-server's tokenize, pieces, chat_prompt,
        template_info, and prompt_tokens and embedding_tokens for routing/admission.py) on the
        multiplexed model: `{"result"}` or `{"error"}`."""
        try:
            model_id = (await self._held()).model_id
            async with self.manager.lease(model_id) as worker:
                result: Any
                if op == "tokenize":
                    result = await worker.tokenize(args["text"], **args["options"])
                elif op == "pieces":
                    result = pieces_to_wire(await worker.pieces(args["tokens"]))
                elif op == "chat_prompt":
                    template = template_from_wire(args.get("template"))
                    chat = messages_from_wire(args["messages"])
                    result = await worker.chat_prompt(chat, template)
                elif op == "prompt_tokens":
                    wire = args["messages"]
                    messages = None if wire is None else messages_from_wire(wire)
                    template = template_from_wire(args.get("template"))
                    result = await worker.prompt_tokens(
                        text=args["text"], messages=messages, options=template
                    )
                elif op == "embedding_tokens":
                    result = await worker.embedding_tokens(args["inputs"])
                else:
                    result = await worker.template_info()
        except RouterError as exc:
            return error_message(exc)
        return {"result": result}

    async def check_health(self) -> None:
        """Serve's periodic health check; it also starts a replica nobody has called yet."""
        await self.ready()

    async def _held(self) -> Held:
        await self.ready()
        model_id = serve.get_multiplexed_model_id()
        self.manager.resolve(model_id)  # ModelNotFound before the multiplexer caches anything
        return await self.model(model_id)

    def snapshot(self) -> dict[str, Any]:
        """What this replica holds now, for GET /models (a copy)."""
        states = {s.id: s for s in self.manager.states()}
        models = _models(self.manager.snapshots())
        for model in models:
            worker = states[model["id"]].worker
            model["pid"] = worker.pid if worker is not None else None
        return {**self.identity, "at": time.time(), "models": models}

    async def _report(self) -> None:
        while True:
            try:
                await self.directory.report.remote(self.snapshot())
            except Exception as exc:  # the directory restarting: report again next time
                log.debug("report to the directory failed: %s", exc)
            await asyncio.sleep(REPORT_EVERY)


def _models(snapshots: list[ModelSnapshot]) -> list[dict[str, Any]]:
    out = []
    for snap in snapshots:
        if snap.status == Status.UNLOADED:
            continue
        runtime = snap.runtime or {}
        out.append(
            {
                "id": snap.id,
                "status": snap.status.value,
                "error": snap.error,
                "memory_bytes": snap.memory_bytes,
                "active_requests": snap.active,
                "queued_requests": snap.queued,
                "slots": runtime.get("parallel"),
                "last_used": snap.last_used,
            }
        )
    return out


def replica_class(models_per_replica: int) -> type[ReplicaBase]:
    """The deployment class, multiplexing up to `models_per_replica` models per replica."""

    class ModelReplica(ReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)  # type: ignore[untyped-decorator]
        async def model(self, model_id: str) -> Held:
            held = Held(self.manager, model_id)
            async with self.manager.lease(model_id):  # loads it (errors: ModelLoadFailed...)
                pass
            return held

    return ModelReplica
