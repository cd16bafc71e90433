"""Chat and text completions: OpenAI request in, OpenAI response or chunk stream out.

Knows nothing of HTTP. The router picks the target; a stream's first item is produced only
after a target has produced its first event, so every refusal (unknown model, full queue,
prompt too long, every target down) is raised before a streaming response starts. `RouteInfo`
(route_info.py) tells the caller which target served and why, for the response headers."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any, Literal

from ..errors import BadRequest, ModelNotFound, RouterError
from ..metrics import Metrics
from ..protocol import (
    OPENAI_CHAT_FIELDS,
    OPENAI_COMPLETION_FIELDS,
    SAMPLING_EXTENSIONS,
    TEMPLATE_FIELDS,
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
from ..protocol.logprobs import CompletionLogprobs, chat_logprobs, completion_logprobs
from ..routing.admission import CHARS_PER_TOKEN, estimate
from ..routing.dispatcher import Dispatcher, Routed
from ..routing.strategies import RouteRequest
from ..routing.targets import Call, Lease
from ..tool_calls import as_function_call
from ..types import (
    Answers,
    Finished,
    GenerationEvent,
    GenerationRequest,
    MessageFields,
    PromptLogprobs,
    TextDelta,
    Usage,
)
from .choices import Choice, collect, joined_tokens, merge, plan, total_usage
from .route_info import RouteInfo

__all__ = ["GenerationService", "RouteInfo"]


class GenerationService:
    def __init__(self, dispatcher: Dispatcher, metrics: Metrics | None = None) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()
        extra = SAMPLING_EXTENSIONS | set(dispatcher.settings.forward_fields)
        self._forwarded = {
            "chat": OPENAI_CHAT_FIELDS | TEMPLATE_FIELDS | extra,
            "completion": OPENAI_COMPLETION_FIELDS | extra,
        }

    async def route(
        self,
        wire: _Request,
        request: GenerationRequest,
        api_key_id: str | None = None,
        fields: dict[str, Any] | None = None,
        answers: Answers | None = None,
    ) -> Routed:
        """Commit the request to a target (falling back as the route allows). `answers`: the
        request's answers this one runs beside, when there are several."""
        lease = Lease.of(wire.autoload, wire.keep_alive, answers)
        kind: Literal["chat", "completion"] = (
            "chat" if request.messages is not None else "completion"
        )
        known = self._forwarded[kind]
        body = {
            k: v
            for k, v in wire.model_dump(exclude_unset=True, by_alias=True).items()
            if k in known
        }
        if fields:
            body.update(fields)  # one choice of several: its own prompt, seed, n=1
        body.pop("echo", None)  # echoed here, whatever the target
        call = Call(kind, request, body, lease, stream=wire.stream)
        text = request.prompt or "".join(m.content for m in request.messages or ())
        offered = body.get("tools") or body.get("functions")
        choice = body.get("tool_choice", body.get("function_call"))
        tools = bool(offered) and choice != "none"  # "none": no call is made
        info = RouteRequest(
            kind=kind,
            prompt_tokens=len(request.prompt_tokens or ()) or len(text) // 4,
            max_tokens=request.params.max_tokens,
            user=wire.user,
            api_key_id=api_key_id,
            tools=tools,
        )
        return await self.dispatcher.open(wire.model, call, info)

    async def _events(
        self,
        wire: _Request,
        request: GenerationRequest,
        route: RouteInfo,
        fields: dict[str, Any] | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Events of the routed request, counted in the metrics as they pass. A request cut
        after its first event (the client left, the worker or upstream failed) has no usage
        from its target: `route.usage` is then estimated (OpenAI's 4 characters a token for
        the prompt and the text sent), so keys' spend and token limits still count it."""
        endpoint = "chat" if request.messages is not None else "completion"
        legacy = isinstance(wire, ChatCompletionRequest) and wire.legacy_functions
        started = time.perf_counter()
        model = "unknown"  # metric labels name known targets only, never a client's string
        outcome = "cancelled"
        sent = 0  # characters of text generated
        route.model = wire.model
        try:
            model = name = self.dispatcher.resolve(wire.model)  # raises ModelNotFound
            try:
                routed = await self.route(wire, request, route.api_key_id, fields, route.answers)
            except RouterError as exc:
                route.reason = exc.tried  # what a route tried, for x-llm-router-route
                raise
            model = route.target = routed.target
            route.reason, route.fallback = routed.reason, routed.fallback
            for target, error in routed.failures:
                self.metrics.fallbacks.labels(name, target, error).inc()
            first = True
            async with aclosing(routed.events) as events:
                async for event in events:
                    if first:
                        first = False
                        route.ttft = time.perf_counter() - started
                        self.metrics.ttft.labels(model).observe(route.ttft)
                    if isinstance(event, TextDelta):
                        sent += len(event.text)
                    elif isinstance(event, Finished):
                        outcome = event.finish_reason
                        route.usage = event.usage
                        self._count_tokens(model, event.usage)
                        self.metrics.count_decode(
                            model, event.usage, route.ttft, time.perf_counter() - started
                        )
                    yield as_function_call(event) if legacy else event
        except RouterError as exc:
            outcome = route.error = type(exc).__name__
            raise
        finally:
            if outcome == "cancelled" and not route.error:  # the client left, or the server
                route.error = "cancelled"  # stopped it: the log says so of a 200 stream too
            if route.usage is None and route.ttft is not None:  # cut after it started
                route.usage = cut = Usage(estimate(request), math.ceil(sent / CHARS_PER_TOKEN))
                self._count_tokens(model, cut)  # as the key is charged: the same estimate
            self.metrics.requests.labels(model, endpoint, outcome).inc()
            self.metrics.duration.labels(model, endpoint).observe(time.perf_counter() - started)

    def _count_tokens(self, model: str, usage: Usage) -> None:
        """A computed answer's tokens and their cost, by the target that served (no cost for
        a local model its files' removal made unknown meanwhile)."""
        self.metrics.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(model, "completion").inc(usage.completion_tokens)
        with contextlib.suppress(ModelNotFound):
            self.metrics.count_cost(model, usage, self.dispatcher.price(model))

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

    def _plan(self, req: _Request, requests: list[GenerationRequest]) -> list[Choice]:
        limit = self.dispatcher.settings.max_n
        if req.n > limit:
            raise BadRequest(f"`n` is at most {limit} on this server", param="n")
        if isinstance(req, CompletionRequest) and len(requests) > 1:
            prompts = [(r, {"prompt": p}) for r, p in zip(requests, req.prompts(), strict=True)]
        else:
            prompts = [(r, {}) for r in requests]
        return plan(prompts, req.n)

    async def _choices(
        self, wire: _Request, choices: list[Choice], route: RouteInfo
    ) -> AsyncGenerator[tuple[int, GenerationEvent], None]:
        """The events of every choice, tagged with its index. One choice (nearly every
        request) runs as it is; several run side by side (see choices.merge), and `route`
        ends up with the first's target and everyone's usage."""
        if len(choices) == 1:
            c = choices[0]
            async with aclosing(self._events(wire, c.request, route, c.body)) as events:
                async for event in events:
                    yield c.index, event
            return
        together = Answers(len(choices))  # one slot each: the model's queue knows them
        # who asks, and the cache directives
        routes = [replace(route, answers=together) for _ in choices]
        streams = [
            self._events(wire, c.request, r, c.body) for c, r in zip(choices, routes, strict=True)
        ]
        try:
            async with aclosing(merge(streams)) as events:
                async for i, event in events:
                    if not route.target:
                        route.target, route.reason = routes[i].target, routes[i].reason
                        route.ttft = routes[i].ttft
                        # a stream's headers go with its first event: a choice not answered
                        # from the cache by then counts as a miss (the final value is logged)
                        route.cache = _cache_of(routes)
                    yield choices[i].index, event
        finally:
            route.model = wire.model
            # what ended the request: the others are cut by it (cancelled), unless the client
            # left (a 400 for `n` was logged `cancelled`, its first answer's: found from outside)
            errors = [r.error for r in routes if r.error]
            route.error = next((e for e in errors if e != "cancelled"), errors[0] if errors else "")
            usages = {c.index: r.usage for c, r in zip(choices, routes, strict=True) if r.usage}
            if usages:  # the finished ones', and the estimates of those cut short
                route.usage = total_usage(choices, usages)
            route.cache = _cache_of(routes)

    def _chat_choices(self, req: ChatCompletionRequest) -> list[Choice]:
        return self._plan(req, [self._chat_request(req)])

    async def chat(
        self, req: ChatCompletionRequest, route: RouteInfo | None = None
    ) -> ChatCompletion:
        route = route or RouteInfo()
        choices = self._chat_choices(req)
        answers = await collect(self._choices(req, choices, route))
        out = []
        for c in choices:
            a = answers[c.index]
            calls = a.extra.get("tool_calls") or a.extra.get("function_call")
            content = None if not a.text and calls else a.text  # OpenAI's shape
            out.append(
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=content, **a.extra),
                    finish_reason=a.finished.finish_reason,
                    logprobs=chat_logprobs(a.logprobs) if req.logprobs else None,
                    stopped_by=a.finished.stop,
                )
            )
        return ChatCompletion(
            id=new_id("chatcmpl"),
            created=now(),
            model=route.target,
            choices=out,
            usage=UsageOut.of(total_usage(choices, {i: a.finished for i, a in answers.items()})),
        )

    async def chat_stream(
        self, req: ChatCompletionRequest, route: RouteInfo | None = None
    ) -> AsyncIterator[ChatCompletionChunk | RenderedChunk]:
        route = route or RouteInfo()
        choices = self._chat_choices(req)
        head: dict[str, Any] = {"id": new_id("chatcmpl"), "created": now()}
        if req.include_usage:  # as OpenAI's: `"usage": null` on every chunk but the last
            head["usage"] = None
        texts: dict[int, TextChunks] = {}
        finished: dict[int, Finished] = {}
        async with aclosing(self._choices(req, choices, route)) as events:
            async for i, event in events:
                if i not in texts:
                    head["model"] = route.target
                    texts[i] = TextChunks(
                        ChatCompletionChunk(
                            **head,
                            choices=[
                                ChatChunkChoice(index=i, delta=ChatDelta(content=TextChunks.MARK))
                            ],
                        )
                    )
                    calls = isinstance(event, MessageFields) and "tool_calls" in event.fields
                    # an answer of tool calls has no content (null, as OpenAI's: the openai
                    # client's stream helper assembled "" where a plain request gave None)
                    delta = ChatDelta(role="assistant", content=None if calls else "")
                    yield ChatCompletionChunk(
                        **head, choices=[ChatChunkChoice(index=i, delta=delta)]
                    )
                if isinstance(event, TextDelta):
                    if event.logprobs and req.logprobs:
                        yield ChatCompletionChunk(
                            **head,
                            choices=[
                                ChatChunkChoice(
                                    index=i,
                                    delta=ChatDelta(content=event.text),
                                    logprobs=chat_logprobs(event.logprobs),
                                )
                            ],
                        )
                    else:
                        yield texts[i].chunk(event.text)
                    continue
                if isinstance(event, MessageFields):
                    yield ChatCompletionChunk(
                        **head, choices=[ChatChunkChoice(index=i, delta=ChatDelta(**event.fields))]
                    )
                    continue
                if isinstance(event, PromptLogprobs):
                    continue  # a chat echoes no prompt
                finished[i] = event
                yield ChatCompletionChunk(
                    **head,
                    choices=[
                        ChatChunkChoice(
                            index=i,
                            delta=ChatDelta(),
                            finish_reason=event.finish_reason,
                            stopped_by=event.stop,
                        )
                    ],
                )
        if req.include_usage and finished:
            usage = UsageOut.of(total_usage(choices, finished))
            yield ChatCompletionChunk(**{**head, "usage": usage}, choices=[])

    async def complete(self, req: CompletionRequest, route: RouteInfo | None = None) -> Completion:
        route = route or RouteInfo()
        requests = req.to_requests()
        choices = self._plan(req, requests)
        answers = await collect(self._choices(req, choices, route))
        out = []
        for c in choices:
            a = answers[c.index]
            text, logprobs, prompt = a.text, None, ""
            if a.prompt_logprobs:
                prompt = joined_tokens(a.prompt_logprobs)
            elif req.echo or a.logprobs:  # the answer's offsets count the prompt's characters
                prompt = await self._prompt_text(c.request, route)
            if req.echo:
                text = prompt + text
            if req.logprobs is not None:
                start = 0 if a.prompt_logprobs else len(prompt)
                logprobs, _ = completion_logprobs([*a.prompt_logprobs, *a.logprobs], start)
            out.append(
                CompletionChoice(
                    index=c.index,
                    text=text,
                    finish_reason=_text_finish(a.finished),
                    logprobs=logprobs,
                )
            )
        return Completion(
            id=new_id("cmpl"),
            created=now(),
            model=route.target,
            choices=out,
            usage=UsageOut.of(total_usage(choices, {i: a.finished for i, a in answers.items()})),
        )

    async def _prompt_text(self, request: GenerationRequest, route: RouteInfo) -> str:
        """The prompt as text, for `echo` and for the offsets of the answer's tokens (counted
        from the prompt's start, as OpenAI's): as given, or its token ids' text (from the
        local model that served it; only a local model gives log-probabilities)."""
        if request.prompt_tokens is None:
            return request.prompt or ""
        target = self.dispatcher.local(route.target, "`echo` of token ids")
        async with target.worker(Lease(None)) as worker:
            pieces = await worker.pieces(list(request.prompt_tokens))
        return b"".join(pieces).decode("utf-8", "replace")

    async def complete_stream(
        self, req: CompletionRequest, route: RouteInfo | None = None
    ) -> AsyncIterator[Completion | RenderedChunk]:
        route = route or RouteInfo()
        requests = req.to_requests()
        choices = self._plan(req, requests)
        by_index = {c.index: c for c in choices}
        head: dict[str, Any] = {"id": new_id("cmpl"), "created": now()}
        if req.include_usage:  # as OpenAI's: `"usage": null` on every chunk but the last
            head["usage"] = None
        texts: dict[int, TextChunks] = {}
        offsets: dict[int, int] = {}  # a choice's next text offset, once it has tokens
        finished: dict[int, Finished] = {}

        def chunk(i: int, text: str, logprobs: CompletionLogprobs | None = None) -> Completion:
            choice = CompletionChoice(index=i, text=text, finish_reason=None, logprobs=logprobs)
            return Completion(**head, choices=[choice])

        async with aclosing(self._choices(req, choices, route)) as events:
            async for i, event in events:
                if i not in texts:
                    head["model"] = route.target
                    texts[i] = TextChunks(chunk(i, TextChunks.MARK))
                    if req.echo and req.logprobs is None:
                        yield texts[i].chunk(await self._prompt_text(by_index[i].request, route))
                if isinstance(event, PromptLogprobs):
                    lp, offsets[i] = completion_logprobs(event.tokens)
                    yield chunk(i, joined_tokens(event.tokens), lp)
                elif isinstance(event, TextDelta):
                    if req.logprobs is not None:
                        if event.logprobs and i not in offsets:  # after the prompt, unechoed
                            prompt = await self._prompt_text(by_index[i].request, route)
                            offsets[i] = len(prompt)
                        lp, end = completion_logprobs(event.logprobs, offsets.get(i, 0))
                        if i in offsets:
                            offsets[i] = end
                        yield chunk(i, event.text, lp)
                    else:
                        yield texts[i].chunk(event.text)
                elif isinstance(event, Finished):
                    finished[i] = event
                    choice = CompletionChoice(index=i, text="", finish_reason=_text_finish(event))
                    yield Completion(**head, choices=[choice])
                # MessageFields: a text completion has no message to carry them
        if req.include_usage and finished:
            usage = UsageOut.of(total_usage(choices, finished))
            yield Completion(**{**head, "usage": usage}, choices=[])


def _text_finish(finished: Finished) -> Literal["stop", "length", "content_filter"]:
    reason = finished.finish_reason
    return reason if reason in ("length", "content_filter") else "stop"


def _cache_of(routes: list[RouteInfo]) -> str:
    """The response cache's word for several choices: a hit when every one was, a miss when
    any was looked up (or, while others were, is not yet); "" when none was (not cacheable)."""
    caches = {r.cache for r in routes}
    return "hit" if caches == {"hit"} else "miss" if caches & {"hit", "miss"} else ""
