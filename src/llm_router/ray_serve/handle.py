"""The router replica's end: a local model whose worker is the model deployment.

The router's own ModelManager runs unchanged in the ingress, with a DeploymentPool in place
of its WorkerPool: "loading" a model asks one model replica to load it (Serve multiplexing
then sends its requests to replicas that hold it), and the "worker" it gets is a
DeploymentWorker, which sends each operation through a DeploymentHandle with the model id as
the multiplexed model id. Everything above the worker (routes, fallbacks, tool calls, system
prompts, sampling defaults, the OpenAI shapes, errors, headers) is the single-machine code.

Faults: a Ray error before the first event (the replica died, or is gone while Serve has not
noticed yet) is retried, through the handle, on the replicas left, for `retry_window`
seconds; after the first event the stream ends with WorkerDied, as when a local worker dies.
The engine's own errors come back as values (wire.py) and are raised as they are."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ray.exceptions import RayError, RayTaskError

from ..config import Settings
from ..engines import LoadSpec
from ..errors import EngineError, ModelLoadFailed, RouterError, WorkerDied
from ..types import (
    ChatMessage,
    Embeddings,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    TemplateOptions,
    TextDelta,
)
from ..worker.client import Worker
from ..worker.pool import WorkerPool
from ..worker.protocol import (
    error_from_wire,
    event_from_wire,
    messages_to_wire,
    pieces_from_wire,
    request_to_wire,
    template_to_wire,
)
from .directory import ReplicaView

__all__ = ["DeploymentPool", "DeploymentWorker"]

log = logging.getLogger(__name__)
_ids = itertools.count(1)
BACKOFF = (0.1, 0.25, 0.5, 1.0)  # seconds between retries after a replica failed


class DeploymentWorker(Worker):
    """A Worker whose process is the model deployment (Worker's interface; no process)."""

    def __init__(
        self, handle: Any, model_id: str, view: ReplicaView, slots: int, retry_window: float
    ) -> None:  # Worker's own __init__ wants a process and its channel: not called
        self._handle = handle
        self.model_id = model_id
        self._view = view
        self._slots = slots
        self._retry_window = retry_window
        self._pid = -next(_ids)  # a key for the thread budget, never a real process
        self._in_flight = 0
        self.exited = asyncio.Event()
        self.stopping = False

    @property
    def info(self) -> dict[str, Any]:
        """The model's slots across the deployment and the replicas holding it now."""
        return {"parallel": self._slots, "replicas": self._view.holding(self.model_id)}

    @info.setter
    def info(self, value: dict[str, Any]) -> None:  # Worker's snapshots: none come here
        pass

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _to(self, *, stream: bool = False) -> Any:
        return self._handle.options(multiplexed_model_id=self.model_id, stream=stream)

    async def load(self, timeout: float) -> None:
        """Have a replica load the model. Raises its RouterError (ModelLoadFailed...)."""
        answer = await asyncio.wait_for(self._call(lambda: self._to().load.remote()), timeout)
        if "error" in answer:
            raise error_from_wire(answer["error"])

    async def generate(
        self, request: GenerationRequest
    ) -> AsyncIterator[TextDelta | PromptLogprobs | Finished]:
        """Stream one generation from a replica (see the module's docstring for faults).
        Closing the iterator early cancels the request on the replica."""
        wire = request_to_wire(request)
        deadline = time.monotonic() + self._retry_window
        self._in_flight += 1
        try:
            for attempt in itertools.count():
                stream = self._to(stream=True).generate.remote(wire)
                started = done = False
                try:
                    async for message in stream:
                        event = event_from_wire(message)
                        if isinstance(event, RouterError):
                            done = True
                            raise event
                        if not isinstance(event, TextDelta | PromptLogprobs | Finished):
                            raise WorkerDied("the model replica answered with something else")
                        started = True
                        done = isinstance(event, Finished)
                        yield event
                        if done:
                            return
                    done = True
                    raise WorkerDied("the model replica ended the stream before its end")
                except RayError as exc:
                    done = True
                    if started or isinstance(exc, RayTaskError):
                        raise _died(exc) from None
                    await self._before_retry(exc, attempt, deadline)
                finally:
                    if not done:
                        stream.cancel()
        finally:
            self._in_flight -= 1

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        answer = await self._call(lambda: self._to().embed.remote(inputs))
        event = event_from_wire(answer)
        if isinstance(event, RouterError):
            raise event
        if not isinstance(event, Embeddings):
            raise WorkerDied("the model replica answered an embedding request with text")
        return event

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        options = {"add_special": add_special, "parse_special": parse_special}
        value = await self._text("tokenize", {"text": text, "options": options})
        return [int(t) for t in value]

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        return pieces_from_wire(await self._text("pieces", {"tokens": tokens}))

    async def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        args = {"messages": messages_to_wire(messages), "template": template_to_wire(options)}
        return str(await self._text("chat_prompt", args))

    async def prompt_tokens(
        self,
        *,
        text: str = "",
        messages: tuple[ChatMessage, ...] | None = None,
        options: TemplateOptions | None = None,
    ) -> int:
        wire = None if messages is None else messages_to_wire(messages)
        args = {"text": text, "messages": wire, "template": template_to_wire(options)}
        return int(await self._text("prompt_tokens", args))

    async def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return int(await self._text("embedding_tokens", {"inputs": inputs}))

    async def template_info(self) -> dict[str, str]:
        value = await self._text("template_info", {})
        return {str(k): str(v) for k, v in value.items()}

    async def _text(self, op: str, args: dict[str, Any]) -> Any:
        answer = await self._call(lambda: self._to().text.remote(op, args))
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return answer["result"]

    async def _call(self, send: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """One answer from a replica, retried on Ray errors within the retry window."""
        deadline = time.monotonic() + self._retry_window
        self._in_flight += 1
        try:
            for attempt in itertools.count():
                try:
                    answer = await send()
                    return dict(answer)
                except RayTaskError as exc:
                    raise _died(exc) from None
                except RayError as exc:
                    await self._before_retry(exc, attempt, deadline)
            raise AssertionError("unreachable")
        finally:
            self._in_flight -= 1

    async def _before_retry(self, exc: RayError, attempt: int, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise _died(exc) from None
        log.warning(
            "model %s: a replica failed before answering (%s); retrying on another",
            self.model_id,
            type(exc).__name__,
        )
        await asyncio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])

    def rss(self) -> int | None:
        return None  # the memory is the replicas' (GET /models: runtime.replicas)

    def set_threads(self, threads: int) -> None:
        pass  # each replica shares its own CPUs among its models

    async def stop(
        self, timeout: float = 5.0, cut: Callable[[], RouterError] | None = None
    ) -> None:
        """Close the route; the replicas keep the model until their own LRU lets it go (and
        finish the requests in flight: none is cut, so `cut` is never made)."""
        self.stopping = True


def _died(exc: BaseException) -> RouterError:
    if isinstance(exc, RayTaskError):
        return EngineError(f"the model replica failed: {type(exc.cause).__name__}: {exc.cause}")
    return WorkerDied(f"the model's replica is gone during the request ({type(exc).__name__})")


class DeploymentPool(WorkerPool):
    """The ingress manager's pool: its workers are DeploymentWorkers (no spares, no memory)."""

    def __init__(self, handle: Any, view: ReplicaView, settings: Settings) -> None:
        super().__init__(spares=False)
        ray = settings.ray
        replicas = max(ray.replicas, ray.autoscaling.max_replicas or 0)
        self._handle = handle
        self._view = view
        self._slots = replicas * ray.max_ongoing_requests
        self._retry_window = ray.retry_window

    async def start(
        self,
        engine: str,
        spec: LoadSpec,
        *,
        timeout: float,
        on_exit: Callable[[Worker, str], None] | None = None,
        on_info: Callable[[Worker], None] | None = None,
    ) -> Worker:
        """Open the route to the model and have one replica load it; raises its error.
        `spec.path` is the model's id (IngressManager): each replica fits the engine options
        to its own node."""
        self._view.start()
        worker = DeploymentWorker(
            self._handle, spec.path, self._view, self._slots, self._retry_window
        )
        try:
            await worker.load(timeout)
        except TimeoutError:
            raise ModelLoadFailed(f"no model replica loaded it within {timeout:g} s") from None
        return worker

    async def close(self) -> None:
        await self._view.close()
