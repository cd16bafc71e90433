"""The llama.cpp engine's decode batch: one token per generating sequence, then prompt chunks,
each part in slot order whatever order the requests came in (with one KV stream per slot,
llama.cpp decodes an out-of-order batch about 2.4x slower; that figure is the benchmark's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import LlamaCppEngine
from llm_router.errors import ContextLengthExceeded, EngineError
from llm_router.types import ChatMessage, Finished, GenerationRequest, SamplingParams, TextDelta


@pytest.fixture(scope="module")
def engine(smollm2_gguf: Path) -> Iterator[LlamaCppEngine]:
    e = LlamaCppEngine(LoadSpec(str(smollm2_gguf), {"threads": 2, "parallel": 4}, "llama"))
    yield e
    e.close()


def _request(i: int, tokens: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    return GenerationRequest(prompt=f"Story {i}: once upon a time", params=params)


def _step(engine: LlamaCppEngine) -> tuple[list[int], list[int]]:
    """One step; the slots of its decode tokens and of its prompt chunks, in batch order."""
    decoding = sum(1 for s in engine._running.values() if s.n_past >= len(s.tokens))
    engine.step()
    b = engine._batch
    slots = [b.seq_id[i][0] for i in range(b.n_tokens)]
    prompt: list[int] = []
    for slot in slots[decoding:]:
        if not prompt or prompt[-1] != slot:
            prompt.append(slot)
    return slots[:decoding], prompt


def test_sequences_join_out_of_slot_order_yet_each_batch_is_in_slot_order(
    engine: LlamaCppEngine,
) -> None:
    for i, tokens in enumerate((2, 2, 14, 14)):  # slots 0 and 1 free up first
        engine.submit(i, _request(i, tokens))
    while len(engine._running) + len(engine._waiting) > 2:
        engine.step()
    for seq in (10, 11):  # they take slots 0 and 1 while 2 and 3 still generate
        engine.submit(seq, _request(seq, 6))
        decode, prompt = _step(engine)
        assert decode == sorted(decode) and prompt == sorted(prompt)
    arrival = [s.slot for s in engine._running.values()]
    assert arrival != sorted(arrival)  # the case that was slow: slots taken out of order
    while engine.busy:
        decode, _ = _step(engine)
        assert decode == sorted(decode)


SYSTEM = " ".join(f"Rule {i}: answer briefly and precisely." for i in range(40))  # ~330 tokens


def _greedy(engine: LlamaCppEngine, questions: list[str], base: int) -> list[str]:
    """Chats sharing one long system prompt, answered greedily."""
    params = SamplingParams(max_tokens=8, temperature=0)
    texts = {base + i: "" for i in range(len(questions))}
    for i, question in enumerate(questions):
        chat = (ChatMessage("system", SYSTEM), ChatMessage("user", question))
        engine.submit(base + i, GenerationRequest(messages=chat, params=params))
    while engine.busy:
        for seq, event in engine.step():
            texts[seq] += getattr(event, "text", "")
    return list(texts.values())


def test_a_shared_prefix_is_copied_from_the_slot_that_holds_it_with_the_same_answers(
    engine: LlamaCppEngine,
) -> None:
    prompts = [f"What is the capital of {c}?" for c in ("France", "Italy", "Japan", "Egypt")]
    cold = [_greedy(engine, [p], 100 + i)[0] for i, p in enumerate(prompts)]  # each alone
    for i in range(4):  # no slot holds the prefix any more...
        engine.submit(200 + i, GenerationRequest(prompt="Unrelated.", params=SamplingParams()))
    while engine.busy:
        engine.step()
    _greedy(engine, prompts[:1], 300)  # ...but one
    copies = engine.info()["prompt_prefix_copies"]
    evaluated = engine.info()["prompt_tokens_evaluated"]
    together = _greedy(engine, prompts, 400)
    assert together == cold and "Paris" in cold[0]
    assert engine.info()["prompt_prefix_copies"] - copies >= 2  # the free slots got a copy
    per_prompt = (engine.info()["prompt_tokens_evaluated"] - evaluated) / len(prompts)
    assert per_prompt < 30  # only each question was evaluated, not the ~330-token prefix


def _run(engine: LlamaCppEngine, order: list[int], short: int) -> tuple[dict[int, str], int]:
    """Four stories submitted in `order` (so they take slots in that order); story `short`
    stops after 3 tokens. Asserts each decode is one consecutive run of slots."""
    texts = {i: "" for i in order}
    moves = engine.info()["slot_moves"]
    for i in order:
        params = SamplingParams(max_tokens=3 if i == short else 24, temperature=0, ignore_eos=True)
        engine.submit(
            500 + i, GenerationRequest(prompt=f"Story {i}: once upon a time", params=params)
        )
    while engine.busy:
        for seq, event in engine.step():
            texts[seq - 500] += getattr(event, "text", "")
        b = engine._batch
        slots = sorted({b.seq_id[i][0] for i in range(b.n_tokens)})
        assert slots == list(range(slots[0], slots[0] + len(slots))), slots
    return texts, engine.info()["slot_moves"] - moves


def test_a_gap_left_by_a_finished_request_is_closed_and_the_answers_are_kept(
    engine: LlamaCppEngine,
) -> None:
    """With story 1 ending first in slot 1, story 3 moves from slot 3 into it; the texts are
    those of the same stories when the early one sat in the top slot and nothing moved."""
    moved, n_moved = _run(engine, [0, 1, 2, 3], short=1)
    still, n_still = _run(engine, [0, 2, 3, 1], short=1)
    assert (n_moved, n_still) == (1, 0)
    assert moved == still and all(moved.values())


def test_a_failing_sequence_fails_alone(engine: LlamaCppEngine) -> None:
    """One sequence whose sampling raises ends with an error; the others decode on."""
    for i in range(3):
        engine.submit(100 + i, _request(i, 8))
    engine.step()  # admitted, prompts evaluated, first tokens sampled

    class Broken:
        def sample(self, ctx: object, index: int) -> int:
            raise RuntimeError("a sampler bug")

        def free(self) -> None:
            pass

    engine._running[101].sampler = Broken()  # type: ignore[assignment]
    finished: dict[int, object] = {}
    while engine.busy:
        for seq, event in engine.step():
            if not isinstance(event, TextDelta):
                finished[seq] = event
    assert isinstance(finished[101], EngineError) and "a sampler bug" in finished[101].message
    assert isinstance(finished[100], Finished) and finished[100].usage.completion_tokens == 8
    assert isinstance(finished[102], Finished) and finished[102].usage.completion_tokens == 8
    assert engine._slots.free and len(engine._slots.free) == engine.parallel


def test_a_prompt_surely_too_long_is_refused_without_tokenizing(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Megabytes of prompt would be tokenized inside the decode loop, stalling every stream;
    a prompt longer in bytes than the context holds even in the longest tokens is refused
    first. Shorter ones are tokenized (and counted) as before."""
    calls = 0
    real = engine._text.tokenize

    def counted(*args: object, **kwargs: object) -> list[int]:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine._text, "tokenize", counted)
    huge = GenerationRequest(prompt="apple " * 1_500_000, params=SamplingParams(max_tokens=1))
    with pytest.raises(ContextLengthExceeded, match="at least") as caught:
        engine.submit(500, huge)
    assert calls == 0 and caught.value.param == "prompt"
    long = GenerationRequest(prompt="apple " * 3000, params=SamplingParams(max_tokens=1))
    with pytest.raises(ContextLengthExceeded, match="but the prompt has 3"):
        engine.submit(501, long)
    assert calls == 1


def test_a_chat_of_many_short_messages_is_refused_before_it_is_tokenized(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp parses the special tokens written in a text in time growing with the square
    of their count: 20,000 one-letter messages (a few hundred KB) took ~7 s to tokenize, and
    200,000 minutes, in the decode loop, while every other stream of the model waited. Each
    turn marker is a token, so a chat holding more of them than the context is refused before
    it is tokenized; a chat that fits is tokenized and answered as before."""
    tokenized: list[int] = []
    real = engine._text.tokenize

    def counted(text: str, **kwargs: bool) -> list[int]:
        tokenized.append(len(text))
        return real(text, **kwargs)

    monkeypatch.setattr(engine._text, "tokenize", counted)
    turns = engine.context_size  # one-letter messages: each far shorter than its markers
    many = GenerationRequest(
        messages=(ChatMessage("user", "h"),) * turns, params=SamplingParams(max_tokens=1)
    )
    with pytest.raises(ContextLengthExceeded, match="at least") as caught:
        engine.submit(600, many)
    assert caught.value.param == "messages"
    assert max(tokenized, default=0) < 1000  # at most the template's one-message sample
    fits = GenerationRequest(
        messages=(ChatMessage("user", "h"),) * 20, params=SamplingParams(max_tokens=2)
    )
    engine.submit(601, fits)
    while engine.busy:
        engine.step()
    assert max(tokenized) > 200  # the whole chat, tokenized at once


def test_one_prompt_arriving_many_times_at_once_is_evaluated_once(
    engine: LlamaCppEngine,
) -> None:
    """The `n` answers of one request (or the same long prompt sent at once): the first
    evaluates it, the others wait for it and copy its KV cache, with the same answers."""
    story = "Once more: " + SYSTEM
    for i in range(4):  # the slots hold something else
        engine.submit(600 + i, GenerationRequest(prompt=f"Unrelated {i}.", params=SamplingParams()))
    while engine.busy:
        engine.step()
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    texts = {700: ""}
    engine.submit(700, GenerationRequest(prompt=story, params=params))
    while engine.busy:
        for seq, event in engine.step():
            texts[seq] += getattr(event, "text", "")
    for i in range(4):
        engine.submit(600 + i, GenerationRequest(prompt=f"Other {i}.", params=SamplingParams()))
    while engine.busy:
        engine.step()
    evaluated = engine.info()["prompt_tokens_evaluated"]
    together = {800 + i: "" for i in range(4)}
    for seq in together:
        engine.submit(seq, GenerationRequest(prompt=story, params=params))
    while engine.busy:
        for seq, event in engine.step():
            together[seq] += getattr(event, "text", "")
    prompt_len = len(engine._text.tokenize(story, add_bos=True))
    assert set(together.values()) == {texts[700]}
    # once, plus the last token of each of the three that copied it
    assert engine.info()["prompt_tokens_evaluated"] - evaluated <= prompt_len + 3
