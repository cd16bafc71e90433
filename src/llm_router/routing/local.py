"""A local model as a target: its lifecycle is the ModelManager's (a lease per request, loading
on demand); generations and embeddings run in its worker process."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import TypeVar

from .. import tracing
from ..errors import BadRequest
from ..lifecycle.discovery import ModelSource
from ..lifecycle.manager import ModelManager
from ..lifecycle.state import Status
from ..tool_calls import ToolParser, finish_reason_for, prepare
from ..types import (
    ChatMessage,
    Embeddings,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from ..worker.client import Worker
from .admission import completion_reserve, count_local, prompt_gate
from .targets import Call, EmbedCall, Lease, Target

__all__ = ["LocalTarget", "fit_dimensions"]

E = TypeVar("E")

DEFAULT_CONTEXT = 2048


@dataclass(eq=False)
class LocalTarget(Target):
    manager: ModelManager | None = None

    @property
    def lifecycle(self) -> ModelManager:
        assert self.manager is not None, "a local target needs the model manager"
        return self.manager

    @property
    def makes_tool_calls(self) -> bool:
        """Every local chat model does (tool_calls.py), unless the config says `tools: false`."""
        return self.config.tools is not False

    def context_length(self) -> int | None:
        """The context per slot its worker reports, else the configured or default one; the
        lifecycle facts (loaded, queued, cold-load time) go into its stats meanwhile."""
        state = self.lifecycle.resolve(self.id)
        self.stats.set_loaded(state.status == Status.LOADED)
        self.stats.set_queued(len(state.waiters))
        if state.load_seconds is not None:
            self.stats.record_cold_load(state.load_seconds)
        info = state.worker.info if state.worker else {}
        trained = state.source.info.context_length if state.source.info else None
        context: int | None = (
            info.get("context_size")
            or self.config.context_size
            or min(trained or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        )
        return context

    def prepared(self, request: GenerationRequest) -> GenerationRequest:
        """`request` as the engine gets it: the configured system prompt in a chat that brings
        none, the tools and tool history written into the messages (tool_calls.prepare)."""
        system = self.config.system_prompt
        if (
            system
            and request.messages is not None
            and all(m.role != "system" for m in request.messages)
        ):
            request = replace(request, messages=(ChatMessage("system", system), *request.messages))
        return prepare(request)

    @contextlib.asynccontextmanager
    async def worker(self, lease: Lease) -> AsyncIterator[Worker]:
        """The model's worker, loaded if needed, held for the block (one lease, as a
        generation holds: the lifecycle manager's queue, autoload and keep-alive apply)."""
        began = time.perf_counter()
        async with self.lifecycle.lease(
            self.id,
            autoload=lease.autoload,
            keep_alive=lease.keep_alive,
            answers=lease.answers,
            evict=lease.evict,
        ) as worker:
            if tracing.current() is not None:
                self._trace_wait(began)
            yield worker

    def _trace_wait(self, began: float) -> None:
        """Spans of the wait for a slot and, if the model loaded meanwhile, of its load."""
        start = tracing.perf_to_ns(began)
        tracing.record("llm_router.queue", start, time.time_ns(), {"llm_router.target": self.id})
        state = self.lifecycle.resolve(self.id)
        if state.loaded_at is not None and state.loaded_at * 1e9 >= start:
            loaded = int(state.loaded_at * 1e9)
            took = int((state.load_seconds or 0.0) * 1e9)
            tracing.record(
                "llm_router.model_load", loaded - took, loaded, {"llm_router.target": self.id}
            )

    def check_generates(self) -> None:
        """BadRequest, from the model's files, before it loads (and evicts another), when it
        only makes embeddings."""
        info = self.lifecycle.resolve(self.id).source.info
        if info is not None and info.task == "embed":
            raise BadRequest(
                f"model '{self.id}' only makes embeddings; ask it through /v1/embeddings, or "
                "pick a model that generates text",
                param="model",
            )

    async def stream(self, call: Call) -> AsyncGenerator[GenerationEvent, None]:
        self.check_generates()
        tools = call.request.tools
        parser = None
        if tools is not None and tools.choice != "none" and tools.functions:
            parser = ToolParser(stream=call.stream)
        request = self.prepared(call.request)
        async with self.worker(call.lease) as worker:
            gate = prompt_gate.get()
            if gate is not None:  # a limit counts the prompt's tokens before it runs
                context = self.context_length()
                prompt = await count_local(worker, request, context)
                await gate.admit_prompt(prompt, completion_reserve(call.body))
            events = worker.generate(request)
            if tracing.current() is not None:
                events = _timed(events, time.perf_counter())
            async for event in events:
                if parser is None:
                    yield event
                elif isinstance(event, TextDelta):
                    for out in parser.feed(event.text):
                        yield out
                elif isinstance(event, Finished):
                    for out in parser.finish():
                        yield out
                    reason = finish_reason_for(parser, event.finish_reason)
                    yield Finished(reason, event.usage, event.stop if reason == "stop" else None)
                else:
                    yield event

    async def embed(self, call: EmbedCall) -> Embeddings:
        """Refused before anything loads when the model's files say it cannot: it generates
        text, or cannot give `dimensions`."""
        source = self.lifecycle.resolve(self.id).source
        _check(source, call.dimensions)
        gate = prompt_gate.get()
        async with self.worker(call.lease) as worker:  # traced: its queue wait, its load
            if gate is not None:  # a limit counts the inputs' tokens before they are embedded
                await gate.admit_prompt(await worker.embedding_tokens(call.inputs))
            out = await worker.embed(call.inputs)
            window = worker.info.get("context_size")  # where the engine cuts an input
        matryoshka = bool(source.info and source.info.matryoshka)
        vectors = fit_dimensions(out.vectors, call.dimensions, matryoshka=matryoshka, model=self.id)
        return Embeddings(vectors, out.prompt_tokens, window if isinstance(window, int) else None)

    async def health(self) -> bool:
        state = self.lifecycle.resolve(self.id)
        return not (state.status == Status.ERROR and state.sticky)


async def _timed(events: AsyncIterator[E], since: float) -> AsyncIterator[E]:
    """`events`, recording the worker's prefill (until the first event) and decode spans. A
    decode cut short (the client left, the worker failed) ends where it was cut, with the
    error, or `cancelled` (the close may come from outside the attempt's span: the decode's
    is made at the first event, under it)."""
    decode: tracing.Span | None = None
    failed: BaseException | None = None
    try:
        async for event in events:
            if decode is None:
                first = time.time_ns()
                tracing.record("llm_router.prefill", tracing.perf_to_ns(since), first)
                decode = tracing.start("llm_router.decode", start_ns=first)
            if isinstance(event, Finished) and decode is not None:
                attributes = {
                    "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                    "gen_ai.response.finish_reasons": (event.finish_reason,),
                }
                tracing.end(decode, attributes)
            yield event
    except Exception as exc:
        failed = exc
        raise
    finally:
        if decode is not None and not decode.end_ns:
            if failed is None:
                decode.attributes["error.type"] = "cancelled"
                decode.set_error("cancelled")
            tracing.end(decode, error=failed)
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


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
