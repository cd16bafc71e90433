"""Sequences decoded one by one (transformers, onnxruntime-genai, the fake engine): which wait and
which run, and how a generated token's text becomes events and, at the end, a Finished.
token_seqs.py builds on it for the engines that sample from logits.

Everything here runs on the worker's loop thread, as every engine method does: nothing is
locked. llama.cpp places its sequences in KV slots itself (slots.py) and shares only
`reply_text` and `finish_text`: its per-token path stays inline in its decode loop, where a
call per token would cost."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

from ..errors import EngineError
from ..types import (
    Finished,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)
from .base import EngineEvent
from .text import TextAssembler

__all__ = [
    "Events",
    "Sequences",
    "emit",
    "finish_text",
    "out_of_room",
    "reply_text",
]

Events = list[tuple[int, EngineEvent]]


class _HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


S = TypeVar("S", bound=_HasSeq)


class Sequences(Generic[S]):
    """Waiting sequences (first in, first admitted) and running ones, at most `parallel`.
    `advance` runs the engine's per-sequence step on each; an exception of one of `errors` from
    one sequence ends that one alone with an EngineError ("<engine> failed: ..."), any other
    leaves `step` (an engine bug: the worker dies with it)."""

    def __init__(
        self, parallel: int, engine: str, errors: tuple[type[Exception], ...] = ()
    ) -> None:
        self.parallel = parallel
        self.waiting: deque[S] = deque()
        self.running: dict[int, S] = {}
        self._engine = engine
        self._errors = errors

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def counts(self) -> dict[str, int]:
        """A snapshot for the engine's `info()`."""
        return {"slots_busy": len(self.running), "requests_waiting": len(self.waiting)}

    def add(self, s: S) -> None:
        self.waiting.append(s)

    def cancel(self, seq: int) -> None:
        self.waiting = deque(s for s in self.waiting if s.seq != seq)
        self.running.pop(seq, None)

    def end(self, s: S) -> None:
        """`s` stops running; its slot is free for the next `admit`."""
        del self.running[s.seq]

    def clear(self) -> None:
        self.waiting.clear()
        self.running.clear()

    def admit(self) -> list[S]:
        """Fill the free slots from the waiting queue; the running sequences then, a snapshot
        (advancing one may end it)."""
        while self.waiting and len(self.running) < self.parallel:
            s = self.waiting.popleft()
            self.running[s.seq] = s
        return list(self.running.values())

    def advance(self, batch: list[S], advance: Callable[[S, Events], None]) -> Events:
        """`advance` each of `batch` in turn; blocks for all of them."""
        events: Events = []
        for s in batch:
            try:
                advance(s, events)
            except self._errors as exc:
                del self.running[s.seq]
                events.append((s.seq, EngineError(f"{self._engine} failed: {exc}")))
        return events

    def step(self, advance: Callable[[S, Events], None]) -> Events:
        """Admit, then advance every running sequence; blocks for all of them."""
        return self.advance(self.admit(), advance)


def reply_text(
    request: GenerationRequest, transcript_stops: tuple[str, ...]
) -> tuple[SamplingParams, TextAssembler]:
    """The request's parameters and the assembler for its reply. A chat through a template
    with `transcript_stops` (a plain "User:/Assistant:" transcript) also stops at those, and
    the whitespace before its first visible character is dropped."""
    params = request.params
    transcript = bool(request.messages is not None and transcript_stops)
    if transcript:
        params = replace(params, stop=(*params.stop, *transcript_stops))
    return params, TextAssembler(params.stop, lstrip=transcript)


def emit(events: Events, seq: int, text: TextAssembler, piece: bytes) -> bool:
    """Feed one token's bytes to `text` and add the text it releases; whether a stop string
    was hit."""
    out, stopped = text.feed(piece)
    if out:
        events.append((seq, TextDelta(out)))
    return stopped


def out_of_room(
    n_prompt: int, n_generated: int, max_tokens: int | None, context_size: int | None
) -> bool:
    """Whether a sequence has generated `max_tokens` or filled the context."""
    at_limit = max_tokens is not None and n_generated >= max_tokens
    return at_limit or (context_size is not None and n_prompt + n_generated >= context_size)


def finish_text(
    events: Events,
    seq: int,
    text: TextAssembler,
    reason: FinishReason,
    usage: Usage,
    *,
    flush: bool = True,
    held: str = "",
    logprobs: tuple[TokenLogprob, ...] = (),
) -> None:
    """Add the end of a sequence: the text still held back (`held`, a detokenizer's tail,
    then what `text` holds) unless a stop string cut it (`flush` False), with the entries of
    the tokens it completes (`logprobs`), then Finished."""
    if flush:
        out, stopped = text.feed(held.encode("utf-8"))
        tail = out if stopped else out + text.finish()
        if tail or logprobs:
            events.append((seq, TextDelta(tail, logprobs)))
    stop = text.stopped_by if reason == "stop" else None
    events.append((seq, Finished(reason, usage, stop)))
