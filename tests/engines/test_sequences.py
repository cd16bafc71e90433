"""The scheduler the one-by-one engines share (Sequences) under random schedules (hypothesis,
derandomized), and what a sampled token does to a sequence (TokenSequences).

Checked after every step: never more than `parallel` run; a sequence waits only while every
slot is taken; sequences start in the order they came; a cancelled one says nothing more; one
whose step raises an isolated error ends alone with an EngineError. Checked at the end: every
sequence neither cancelled nor failed finished exactly once, with all of its text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_router.engines.sequences import Events, Sequences
from llm_router.engines.token_seqs import TokenSeq, TokenSequences
from llm_router.errors import EngineError
from llm_router.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    Usage,
)


class Broken(Exception):
    pass


@dataclass
class Script:
    seq: int
    steps: int  # steps until it finishes
    fail_at: int | None = None  # the step at which advancing it raises Broken
    done: int = 0


def _advance(seqs: Sequences[Script]) -> Callable[[Script, Events], None]:
    def advance(s: Script, events: Events) -> None:
        if s.fail_at == s.done:
            raise Broken(f"seq {s.seq}")
        s.done += 1
        events.append((s.seq, TextDelta(f"{s.seq}.{s.done}")))
        if s.done == s.steps:
            seqs.end(s)
            events.append((s.seq, Finished("stop", Usage(0, s.done))))

    return advance


op = st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 5), st.none() | st.integers(0, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 40), st.none()),
    st.tuples(st.just("step"), st.none(), st.none()),
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    parallel=st.integers(1, 4),
    cold_start=st.integers(0, 12),
    ops=st.lists(op, max_size=60),
)
def test_random_schedules_keep_the_invariants(
    parallel: int, cold_start: int, ops: list[tuple[str, int | None, int | None]]
) -> None:
    seqs: Sequences[Script] = Sequences(parallel, "test", (Broken,))
    advance = _advance(seqs)
    scripts: list[Script] = []
    cancelled: set[int] = set()
    started: list[int] = []  # seq ids in the order they first ran
    ended: dict[int, list[str]] = {}
    text: dict[int, list[str]] = {}

    def submit(steps: int, fail_at: int | None) -> None:
        s = Script(
            len(scripts), steps, fail_at if fail_at is not None and fail_at < steps else None
        )
        scripts.append(s)
        seqs.add(s)

    def step() -> None:
        batch = seqs.admit()  # what `step` does before advancing them
        assert len(batch) == len(seqs.running) <= parallel
        assert not seqs.waiting or len(seqs.running) == parallel
        events = seqs.advance(batch, advance)
        for seq, event in events:
            assert seq not in cancelled and seq not in ended
            if seq not in started:
                started.append(seq)
            if isinstance(event, TextDelta):
                text.setdefault(seq, []).append(event.text)
            else:
                ended.setdefault(seq, []).append(type(event).__name__)
                if isinstance(event, EngineError):
                    assert event.message == f"test failed: seq {seq}"
                    assert scripts[seq].fail_at is not None

    for _ in range(cold_start):  # everything arriving at once before the first step
        submit(2, None)
    for name, a, b in ops:
        if name == "submit":
            assert a is not None
            submit(a, b)
        elif name == "cancel":
            assert a is not None
            seqs.cancel(a)
            if a < len(scripts) and a not in ended:
                cancelled.add(a)
        else:
            step()
        assert seqs.busy == bool(seqs.waiting or seqs.running)
    for _ in range(len(scripts) * 5):
        if seqs.busy:
            step()
    assert not seqs.busy

    assert started == sorted(started)  # first in, first started
    for s in scripts:
        if s.seq in cancelled:
            continue
        if s.fail_at is not None:
            assert ended[s.seq] == ["EngineError"]
            assert len(text.get(s.seq, [])) == s.fail_at
        else:
            assert ended[s.seq] == ["Finished"]
            assert text[s.seq] == [f"{s.seq}.{i}" for i in range(1, s.steps + 1)]
    assert seqs.counts() == {"slots_busy": 0, "requests_waiting": 0}


def test_an_error_not_isolated_leaves_step() -> None:
    seqs: Sequences[Script] = Sequences(2, "test", (Broken,))
    seqs.add(Script(0, 3))

    def advance(s: Script, events: Events) -> None:
        raise KeyError("an engine bug")

    with pytest.raises(KeyError):
        seqs.step(advance)


# -- TokenSequences ---------------------------------------------------------------------------

VOCAB = {1: "Hello", 2: " world", 3: "!", 4: "\n", 5: "User", 6: ":", 9: "</s>"}
EOS = 9


def _decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def _run(
    tokens: list[int],
    params: SamplingParams,
    *,
    chat: bool = False,
    context_size: int | None = None,
) -> tuple[str, Finished, int]:
    """Feed `tokens` as if sampled, one step each, until the sequence ends."""
    seqs = TokenSequences(
        1,
        "test",
        (),
        eos={EOS},
        context_size=context_size,
        decode=_decode,
        transcript_stops=("\nUser:",),
    )
    messages = (ChatMessage("user", "hi"),) if chat else None
    seqs.submit(7, GenerationRequest(params, messages=messages, prompt=None if chat else "x"), [1])
    feed = iter(tokens)
    events: Events = []

    def advance(s: TokenSeq, out: Events) -> None:  # as the engines' own
        if seqs.asked_none(s, out):
            return
        assert s.sampler(np.zeros(10, dtype=np.float32), s.generated) == 0  # greedy on zeros
        seqs.take(s, next(feed), out)

    while seqs.busy:
        events += seqs.step(advance)
    deltas = "".join(e.text for _, e in events if isinstance(e, TextDelta))
    finished = events[-1][1]
    assert isinstance(finished, Finished) and all(seq == 7 for seq, _ in events)
    return deltas, finished, seqs.tokens_generated


GREEDY = SamplingParams(temperature=0.0)


def test_an_eos_token_stops_without_counting() -> None:
    text, finished, generated = _run([2, 3, EOS], GREEDY)
    assert (text, finished.finish_reason, generated) == (" world!", "stop", 2)
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (1, 2)


def test_a_stop_string_cuts_the_text() -> None:
    text, finished, _ = _run([2, 4, 5, 6, 2], SamplingParams(temperature=0.0, stop=("\nUser",)))
    assert (text, finished.finish_reason) == (" world", "stop")


def test_a_chat_through_a_transcript_stops_at_its_turn_and_drops_leading_space() -> None:
    text, finished, _ = _run([2, 3, 4, 5, 6, 2], GREEDY, chat=True)
    assert (text, finished.finish_reason) == ("world!", "stop")


def test_max_tokens_and_the_context_end_with_length() -> None:
    text, finished, _ = _run([2, 3, 2], SamplingParams(temperature=0.0, max_tokens=2))
    assert (text, finished.finish_reason, finished.usage.completion_tokens) == (
        " world!",
        "length",
        2,
    )
    text, finished, _ = _run([2, 3, 2], GREEDY, context_size=3)
    assert (text, finished.finish_reason) == (" world!", "length")
    text, finished, generated = _run([2], SamplingParams(temperature=0.0, max_tokens=0))
    assert (text, finished.finish_reason, generated) == ("", "length", 0)
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (1, 0)


def test_a_prompt_filling_the_context_is_refused_saying_why() -> None:
    """A prompt of exactly the context's length fits, but leaves no room to answer: the
    400 said "maximum context length is 2048 tokens, but the prompt has 2048 tokens"."""
    from llm_router.engines.base import check_prompt_fits
    from llm_router.errors import ContextLengthExceeded
    from llm_router.types import GenerationRequest

    request = GenerationRequest(prompt="x")
    with pytest.raises(ContextLengthExceeded, match="has 2048 tokens, which leaves no room"):
        check_prompt_fits(2048, 2048, request)
    with pytest.raises(ContextLengthExceeded, match=r"has 2049 tokens\.$"):
        check_prompt_fits(2049, 2048, request)
    check_prompt_fits(2047, 2048, request)
