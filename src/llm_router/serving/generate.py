"""Chat and text completions: OpenAI request in, OpenAI response or chunk stream out.

Knows nothing of HTTP. A stream's first item is produced only after the engine has accepted
the request and produced its first event, so every refusal (unknown model, full queue, prompt
too long) is raised before a streaming response starts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..errors import BadRequest, RouterError
from ..lifecycle.manager import ModelManager
from ..metrics import Metrics
from ..protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    UsageOut,
    _Request,
    new_id,
    now,
)  # fmt: skip
from ..types import Finished, GenerationRequest, TextDelta
from ..units import parse_duration

__all__ = ["GenerationService"]

Event = TextDelta | Finished


class GenerationService:
    def __init__(self, manager: ModelManager, metrics: Metrics | None = None) -> None:
        self.manager = manager
        self.metrics = metrics or Metrics()

    async def _events(self, wire: _Request, request: GenerationRequest) -> AsyncIterator[Event]:
        """Hold a slot of the model for as long as the caller iterates; count the request."""
        lease: dict[str, Any] = {"autoload": wire.autoload}
        if wire.keep_alive is not None:
            try:
                lease["keep_alive"] = parse_duration(wire.keep_alive)
            except ValueError as exc:
                raise BadRequest(str(exc), param="keep_alive") from None
        model = self.model_id(wire.model)
        endpoint = "chat" if request.messages is not None else "completion"
        started = time.perf_counter()
        outcome = "cancelled"
        first = True
        try:
            async with self.manager.lease(wire.model, **lease) as worker:
                async for event in worker.generate(request):
                    if first:
                        first = False
                        self.metrics.ttft.labels(model).observe(time.perf_counter() - started)
                    if isinstance(event, Finished):
                        outcome = event.finish_reason
                        self.metrics.tokens.labels(model, "prompt").inc(event.usage.prompt_tokens)
                        self.metrics.tokens.labels(model, "completion").inc(
                            event.usage.completion_tokens
                        )
                    yield event
        except RouterError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.metrics.requests.labels(model, endpoint, outcome).inc()
            self.metrics.duration.labels(model, endpoint).observe(time.perf_counter() - started)

    def model_id(self, name: str) -> str:
        return self.manager.resolve(name).id

    def _chat_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        try:
            return req.to_request(self.manager.resolve(req.model).source.config.system_prompt)
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletion:
        model = self.model_id(req.model)
        text, finished = await _collect(self._events(req, self._chat_request(req)))
        return ChatCompletion(
            id=new_id("chatcmpl"), created=now(), model=model,
            choices=[ChatChoice(message=AssistantMessage(content=text),
                                finish_reason=finished.finish_reason)],
            usage=UsageOut.of(finished.usage),
        )  # fmt: skip

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        model = self.model_id(req.model)
        events = self._events(req, self._chat_request(req))
        head: dict[str, Any] = {"id": new_id("chatcmpl"), "created": now(), "model": model}
        first = True
        async for event in events:
            if first:
                first = False
                yield ChatCompletionChunk(
                    **head, choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))]
                )
            if isinstance(event, TextDelta):
                yield ChatCompletionChunk(
                    **head, choices=[ChatChunkChoice(delta=ChatDelta(content=event.text))]
                )
                continue
            yield ChatCompletionChunk(
                **head,
                choices=[ChatChunkChoice(delta=ChatDelta(), finish_reason=event.finish_reason)],
            )
            if req.include_usage:
                yield ChatCompletionChunk(**head, choices=[], usage=UsageOut.of(event.usage))

    async def complete(self, req: CompletionRequest) -> Completion:
        model = self.model_id(req.model)
        gen = req.to_request()
        text, finished = await _collect(self._events(req, gen))
        if req.echo:
            text = (gen.prompt or "") + text
        return Completion(
            id=new_id("cmpl"), created=now(), model=model,
            choices=[CompletionChoice(text=text, finish_reason=finished.finish_reason)],
            usage=UsageOut.of(finished.usage),
        )  # fmt: skip

    async def complete_stream(self, req: CompletionRequest) -> AsyncIterator[Completion]:
        model = self.model_id(req.model)
        gen = req.to_request()
        head: dict[str, Any] = {"id": new_id("cmpl"), "created": now(), "model": model}
        first = True
        async for event in self._events(req, gen):
            if first and req.echo:
                yield Completion(
                    **head, choices=[CompletionChoice(text=gen.prompt or "", finish_reason=None)]
                )
            first = False
            if isinstance(event, TextDelta):
                yield Completion(
                    **head, choices=[CompletionChoice(text=event.text, finish_reason=None)]
                )
                continue
            yield Completion(
                **head, choices=[CompletionChoice(text="", finish_reason=event.finish_reason)]
            )
            if req.include_usage:
                yield Completion(**head, choices=[], usage=UsageOut.of(event.usage))


async def _collect(events: AsyncIterator[Event]) -> tuple[str, Finished]:
    """Drain the stream to its end (so the lease is released here, not at garbage collection)."""
    parts: list[str] = []
    finished: Finished | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            finished = event
    if finished is None:
        raise RuntimeError("generation ended without a finish event")
    return "".join(parts), finished
