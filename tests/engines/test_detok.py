"""Streaming detokenization over a tokenizer that only decodes whole id lists: leading spaces
kept, characters split across tokens held back until whole, nothing lost at the end."""

from __future__ import annotations

from llm_router.engines.detok import IncrementalDetokenizer

# A toy byte-level vocabulary: ids map to byte strings; decode joins and decodes them, and
# (like SentencePiece decoders) drops the space a sequence starts with.
VOCAB = {
    1: b"Hello",
    2: b" world",
    3: b"\xe6\x97",
    4: b"\xa5",
    5: b"!",
    6: b" caf",
    7: b"\xc3",
    8: b"\xa9",
    9: b" ok",
}


def decode(ids: list[int]) -> str:
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", "replace").removeprefix(" ")


def stream(tokens: list[int], context: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(decode, context)
    return [detok.feed(t) for t in tokens] + [detok.finish()]


def test_first_token_keeps_its_leading_space_after_the_prompt() -> None:
    assert stream([2, 5], context=[1]) == [" world", "!", ""]


def test_without_context_the_decoder_decides_the_first_space() -> None:
    assert "".join(stream([2, 5], context=[])) == "world!"


def test_split_characters_wait_for_their_last_byte() -> None:
    assert stream([3, 4, 5], context=[1]) == ["", "日", "!", ""]
    assert stream([6, 7, 8, 9], context=[1]) == [" caf", "", "é", " ok", ""]


def test_an_incomplete_character_at_the_end_is_flushed_as_replacement() -> None:
    out = stream([2, 3], context=[1])
    assert out[:2] == [" world", ""] and out[2] == "\ufffd"


def test_long_streams_stay_correct() -> None:
    tokens = [2, 5, 6, 7, 8] * 50
    assert "".join(stream(tokens, context=[1])) == (" world! café" * 50)
