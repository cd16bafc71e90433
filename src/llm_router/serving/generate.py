"""Chat and text completions: OpenAI request in, OpenAI response or chunk stream out.

Knows nothing of HTTP. The router picks the target; a stream's first item is produced only
after a target has produced its first event, so every refusal (unknown model, full queue,
prompt too long, every target down) is raised before a streaming response starts. `RouteInfo`
tells the caller which target served and why, for the response headers."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import BadRequest, RouterError
from ..metrics import Metrics
from ..protocol import (
    OPENAI_CHAT_FIELDS,
    OPENAI_COMPLETION_FIELDS,
    SAMPLING_EXTENSIONS,
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
    RenderedChunk,
    TextChunks,
    UsageOut,
    _Request,
    new_id,
    now,
)
from ..routing.dispatcher import Dispatcher, Routed
from ..routing.strategies import RouteRequest
from ..routing.targets import Call, Lease
from ..tool_calls import as_function_call
from ..types import Finished, GenerationEvent, GenerationRequest, MessageFields, TextDelta
from ..units import parse_duration

__all__ = ["GenerationService", "RouteInfo"]


@dataclass
class RouteInfo:
    """The caller's side of routing: who asks (`api_key_id`, the sticky key of A/B splits when
    the request names no `user`), and, filled in once the request is committed to a target,
    which target serves and why."""

    api_key_id: str | None = None
    target: str = ""
    reason: str = ""


class GenerationService:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None = None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()
        extra = SAMPLING_EXTENSIONS | set(dispatcher.settings.forward_fields)
        self._forwarded = {
            "chat": OPENAI_CHAT_FIELDS | extra,
            "completion": OPENAI_COMPLETION_FIELDS | extra,
        }

    async def route(
        self, wire: _Request, request: GenerationRequest, api_key_id: str | None = None
    ) -> Routed:
        """Commit the request to a target (falling back as the route allows)."""
        keep_alive = None
        if wire.keep_alive is not None:
            try:
                seconds = parse_duration(wire.keep_alive)
            except ValueError as exc:
                raise BadRequest(str(exc), param="keep_alive") from None
            keep_alive = math.inf if seconds is None else seconds
        kind: Literal["chat", "completion"] = (
            "chat" if request.messages is not None else "completion"
        )
        known = self._forwarded[kind]
        body = {
            k: v
            for k, v in wire.model_dump(exclude_unset=True, by_alias=True).items()
            if k in known
        }
        call = Call(kind, request, body, Lease(wire.autoload, keep_alive), stream=wire.stream)
        text = request.prompt or "".join(m.content for m in request.messages or ())
        offered = body.get("tools") or body.get("functions")
        choice = body.get("tool_choice", body.get("function_call"))
        tools = bool(offered) and choice != "none"  # "none": no call is made
        info = RouteRequest(
            kind=kind,
            prompt_tokens=len(text) // 4,
            max_tokens=request.params.max_tokens,
            user=wire.user,
            api_key_id=api_key_id,
            tools=tools,
        )
        return await self.dispatcher.open(wire.model, call, info)

    async def _events(
        self, wire: _Request, request: GenerationRequest, route: RouteInfo
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Events of the routed request, counted in the metrics as they pass."""
        endpoint = "chat" if request.messages is not None else "completion"
        legacy = isinstance(wire, ChatCompletionRequest) and wire.legacy_functions
        started = time.perf_counter()
        model = "unknown"  # metric labels name known targets only, never a client's string
        outcome = "cancelled"
        try:
            model = name = self.dispatcher.resolve(wire.model)  # raises ModelNotFound
            routed = await self.route(wire, request, route.api_key_id)
            model = route.target = routed.target
            route.reason = routed.reason
            for target, error in routed.failures:
                self.metrics.fallbacks.labels(name, target, error).inc()
            first = True
            async with aclosing(routed.events) as events:
                async for event in events:
                    if first:
                        first = False
                        self.metrics.ttft.labels(model).observe(time.perf_counter() - started)
                    if isinstance(event, Finished):
                        outcome = event.finish_reason
                        self.metrics.tokens.labels(model, "prompt").inc(event.usage.prompt_tokens)
                        self.metrics.tokens.labels(model, "completion").inc(
                            event.usage.completion_tokens
                        )
                        self.metrics.count_cost(model, event.usage, self.dispatcher.price(model))
                    yield as_function_call(event) if legacy else event
        except RouterError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.metrics.requests.labels(model, endpoint, outcome).inc()
            self.metrics.duration.labels(model, endpoint).observe(time.perf_counter() - started)

    def _chat_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        try:
            return req.to_request()
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None

    async def text_stream(
        self, req: ChatCompletionRequest | CompletionRequest, route: RouteInfo | None = None
    ) -> AsyncIterator[str]:
        """The generated text as it comes, for callers that want no wire types (the CLI)."""
        gen = (
            self._chat_request(req)
            if isinstance(req, ChatCompletionRequest)
            else (req.to_request())
        )
        async with aclosing(self._events(req, gen, route or RouteInfo())) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield event.text

    async def chat(
        self, req: ChatCompletionRequest, route: RouteInfo | None = None
    ) -> ChatCompletion:
        route = route or RouteInfo()
        text, extra, finished = await _collect(self._events(req, self._chat_request(req), route))
        calls = extra.get("tool_calls") or extra.get("function_call")
        content = None if not text and calls else text  # OpenAI's shape
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=route.target,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=content, **extra),
                    finish_reason=finished.finish_reason,
                )
            ],
            usage=UsageOut.of(finished.usage),
        )

    async def chat_stream(
        self, req: ChatCompletionRequest, route: RouteInfo | None = None
    ) -> AsyncIterator[ChatCompletionChunk | RenderedChunk]:
        route = route or RouteInfo()
        head: dict[str, Any] = {"id": new_id("chatcmpl"), "created": now()}
        texts: TextChunks | None = None
        async with aclosing(self._events(req, self._chat_request(req), route)) as events:
            async for event in events:
                if texts is None:
                    head["model"] = route.target
                    texts = TextChunks(
                        ChatCompletionChunk(
                            **head,
                            choices=[ChatChunkChoice(delta=ChatDelta(content=TextChunks.MARK))],
                        )
                    )
                    yield ChatCompletionChunk(
                        **head,
                        choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))],
                    )
                if isinstance(event, TextDelta):
                    yield texts.chunk(event.text)
                    continue
                if isinstance(event, MessageFields):
                    yield ChatCompletionChunk(
                        **head, choices=[ChatChunkChoice(delta=ChatDelta(**event.fields))]
                    )
                    continue
                yield ChatCompletionChunk(
                    **head,
                    choices=[ChatChunkChoice(delta=ChatDelta(), finish_reason=event.finish_reason)],
                )
                if req.include_usage:
                    yield ChatCompletionChunk(**head, choices=[], usage=UsageOut.of(event.usage))

    async def complete(self, req: CompletionRequest, route: RouteInfo | None = None) -> Completion:
        route = route or RouteInfo()
        gen = req.to_request()
        text, _, finished = await _collect(self._events(req, gen, route))
        if req.echo:
            text = (gen.prompt or "") + text
        return Completion(
            id=new_id("cmpl"),
            created=now(),
            model=route.target,
            choices=[CompletionChoice(text=text, finish_reason=_text_finish(finished))],
            usage=UsageOut.of(finished.usage),
        )

    async def complete_stream(
        self, req: CompletionRequest, route: RouteInfo | None = None
    ) -> AsyncIterator[Completion | RenderedChunk]:
        route = route or RouteInfo()
        gen = req.to_request()
        head: dict[str, Any] = {"id": new_id("cmpl"), "created": now()}
        texts: TextChunks | None = None
        async with aclosing(self._events(req, gen, route)) as events:
            async for event in events:
                if texts is None:
                    head["model"] = route.target
                    texts = TextChunks(
                        Completion(
                            **head,
                            choices=[CompletionChoice(text=TextChunks.MARK, finish_reason=None)],
                        )
                    )
                    if req.echo:
                        yield texts.chunk(gen.prompt or "")
                if isinstance(event, TextDelta):
                    yield texts.chunk(event.text)
                    continue
                if isinstance(event, MessageFields):
                    continue  # a text completion has no message to carry them
                yield Completion(
                    **head, choices=[CompletionChoice(text="", finish_reason=_text_finish(event))]
                )
                if req.include_usage:
                    yield Completion(**head, choices=[], usage=UsageOut.of(event.usage))


async def _collect(
    events: AsyncGenerator[GenerationEvent, None],
) -> tuple[str, dict[str, Any], Finished]:
    """Drain the stream to its end (so the lease is released here, not at garbage collection):
    the text, the message's other fields, the finish."""
    parts: list[str] = []
    extra: dict[str, Any] = {}
    finished: Finished | None = None
    async with aclosing(events) as closing:
        async for event in closing:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, MessageFields):
                extra.update(event.fields)
            else:
                finished = event
    if finished is None:
        raise RuntimeError("generation ended without a finish event")
    return "".join(parts), extra, finished


def _text_finish(finished: Finished) -> Literal["stop", "length", "content_filter"]:
    reason = finished.finish_reason
    return reason if reason in ("length", "content_filter") else "stop"
