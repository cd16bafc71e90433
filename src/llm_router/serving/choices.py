"""Several choices in one request: `n` answers to one prompt, and a completion's list of
prompts (times `n`), each its own generation, routed and run side by side.

The engines batch them (each is a sequence in the same decode steps), and a llama.cpp model
evaluates a prompt shared by several of them once (the others copy its KV cache: see
engines/llamacpp.py). Each choice has its own seed, derived from the request's (`seed + j`
for its j-th answer), so `n` answers with a seed differ from each other and reproduce.

`merge` runs the choices' event streams concurrently into one, tagged with the choice's
index. It holds its first item back until every choice has produced its first event (or
failed): a refusal of any of them (unknown model, full queue, prompt too long) is raised
before a streaming response starts, as for one choice. `collect` drains them into one
`Answer` per choice, for the responses that are not streamed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from ..types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    MessageFields,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
    Usage,
)

__all__ = ["Answer", "Choice", "collect", "joined_tokens", "merge", "plan", "total_usage"]


@dataclass(frozen=True, slots=True)
class Choice:
    """One answer to produce: its `index` in the response, its request, the fields of the
    request body that differ from the client's (for a remote target), and whether it is the
    first answer to its prompt (whose prompt tokens `usage` counts)."""

    index: int
    request: GenerationRequest
    body: dict[str, Any] = field(default_factory=dict)
    first: bool = True


def plan(prompts: Sequence[tuple[GenerationRequest, dict[str, Any]]], n: int) -> list[Choice]:
    """The choices of `n` answers to each prompt, numbered as OpenAI numbers them (prompt by
    prompt, `n` each); each prompt comes with its own body fields (a completion's `prompt`)."""
    out: list[Choice] = []
    for i, (request, body) in enumerate(prompts):
        seed = request.params.seed
        for j in range(n):
            one = request
            fields = dict(body)
            if n > 1:
                fields["n"] = 1
                if seed is not None:
                    one = replace(request, params=replace(request.params, seed=seed + j))
                    fields["seed"] = seed + j
            out.append(Choice(i * n + j, one, fields, first=j == 0))
    return out


def total_usage(choices: Sequence[Choice], finished: Mapping[int, Finished | Usage]) -> Usage:
    """The request's usage: each prompt counted once, every answer's tokens."""
    prompt = completion = cached = 0
    for c in choices:
        done = finished.get(c.index)
        if done is None:
            continue
        usage = done.usage if isinstance(done, Finished) else done
        completion += usage.completion_tokens
        if c.first:
            prompt += usage.prompt_tokens
            cached += usage.cached_tokens
    return Usage(prompt, completion, cached)


_END = object()


async def merge(
    streams: Sequence[AsyncGenerator[GenerationEvent, None]],
) -> AsyncGenerator[tuple[int, GenerationEvent], None]:
    """The streams' events as (stream index, event), as they come. Raises the first error of
    any stream (cancelling the others). Each stream is drained by a task of its own, so a
    choice waiting for a free slot never waits on the consumer."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncGenerator[GenerationEvent, None]) -> None:
        try:
            async with aclosing(stream) as events:
                async for event in events:
                    queue.put_nowait((i, event))
        except BaseException as exc:  # to the consumer, which raises it
            queue.put_nowait((i, exc))
            if not isinstance(exc, Exception):
                raise
        else:
            queue.put_nowait((i, _END))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        held: list[tuple[int, Any]] = []
        started: set[int] = set()
        while len(started) < len(streams):
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            started.add(i)
            held.append((i, item))
        ended = 0
        for i, item in held:
            if item is _END:
                ended += 1
            else:
                yield i, item
        while ended < len(streams):
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _END:
                ended += 1
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def joined_tokens(tokens: tuple[TokenLogprob, ...]) -> str:
    """The text of a prompt's tokens (an echo with log-probabilities)."""
    return b"".join(t.token for t in tokens).decode("utf-8", "replace")


@dataclass
class Answer:
    """One choice's answer, collected: text, the message's other fields, log-probabilities
    (the prompt's, for echo, then the answer's), and the finish."""

    parts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    done: Finished | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> Finished:
        assert self.done is not None
        return self.done


async def collect(
    events: AsyncGenerator[tuple[int, GenerationEvent], None],
) -> dict[int, Answer]:
    """Drain the streams to their end (so the leases are released here, not at garbage
    collection): each choice's answer by index."""
    answers: dict[int, Answer] = {}
    async with aclosing(events) as closing:
        async for i, event in closing:
            a = answers.setdefault(i, Answer())
            if isinstance(event, TextDelta):
                a.parts.append(event.text)
                a.logprobs.extend(event.logprobs)
            elif isinstance(event, MessageFields):
                a.extra.update(event.fields)
            elif isinstance(event, PromptLogprobs):
                a.prompt_logprobs = event.tokens
            else:
                a.done = event
    if not answers or any(a.done is None for a in answers.values()):
        raise RuntimeError("generation ended without a finish event")
    return answers
