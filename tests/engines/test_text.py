"""Streamed text: stop strings cut wherever the pieces split them, UTF-8 characters whole."""

from __future__ import annotations

from llm_router.engines.text import StopMatcher, TextAssembler


def _stream(assembler: TextAssembler, pieces: list[bytes]) -> tuple[list[str], bool]:
    """What a client would see: each feed's text, then the finish() flush if no stop hit."""
    out: list[str] = []
    for piece in pieces:
        text, stopped = assembler.feed(piece)
        out.append(text)
        if stopped:
            return out, True
    out.append(assembler.finish())
    return out, False


def _chars(text: str) -> list[bytes]:
    return [c.encode() for c in text]


# -- StopMatcher ------------------------------------------------------------------------------


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("Hello") == ("Hello", False)
    assert matcher.feed(" world\nUser:") == (" world\nUser:", False)
    assert matcher.flush() == ""


def test_empty_stop_string_is_ignored() -> None:
    matcher = StopMatcher(("",))
    assert matcher.feed("abc") == ("abc", False)


def test_stop_in_one_piece_is_cut_with_what_follows() -> None:
    matcher = StopMatcher(("\nUser:",))
    assert matcher.feed("Paris.\nUser: and") == ("Paris.", True)


def test_stop_split_across_pieces_is_cut() -> None:
    matcher = StopMatcher(("\nUser:",))
    assert matcher.feed("Paris.\n") == ("Paris.", False)
    assert matcher.feed("Us") == ("", False)
    assert matcher.feed("er: next question") == ("", True)


def test_partial_prefix_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(("\nUser:",))
    assert matcher.feed("one\nUs") == ("one", False)
    assert matcher.feed("ually") == ("\nUsually", False)


def test_flush_releases_held_text() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.feed("the EN") == ("the ", False)
    assert matcher.flush() == "EN"
    assert matcher.flush() == ""


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(("world", "lo"))
    assert matcher.feed("hello world") == ("hel", True)
    assert matcher.matched == "lo"  # Anthropic's `stop_sequence` names it


def test_earliest_stop_wins_when_split_across_pieces() -> None:
    matcher = StopMatcher(("###", "\n\n"))
    assert matcher.feed("a\n") == ("a", False)
    assert matcher.matched is None
    assert matcher.feed("\n### b") == ("", True)
    assert matcher.matched == "\n\n"


def test_shorter_stop_completing_first_stops() -> None:
    matcher = StopMatcher(("ab", "abcd"))
    assert matcher.feed("xa") == ("x", False)
    assert matcher.feed("bc") == ("", True)


# -- TextAssembler ----------------------------------------------------------------------------


def test_stop_split_over_byte_pieces_cuts_everything_after() -> None:
    text = TextAssembler(("\nUser:",))
    out, stopped = _stream(text, _chars("Paris.\nUser: What else?"))
    assert stopped and text.stopped_by == "\nUser:"
    assert "".join(out) == "Paris."


def test_text_without_stop_comes_out_whole() -> None:
    out, stopped = _stream(TextAssembler(("\nUser:",)), _chars("Line one\nUsually fine\nU"))
    assert not stopped
    assert "".join(out) == "Line one\nUsually fine\nU"


def test_two_byte_character_fed_byte_by_byte() -> None:
    assembler = TextAssembler(())
    first, second = "é".encode()
    assert assembler.feed(b"caf") == ("caf", False)
    assert assembler.feed(bytes([first])) == ("", False)
    assert assembler.feed(bytes([second])) == ("é", False)
    assert assembler.finish() == ""


def test_emoji_in_four_single_byte_pieces_comes_out_whole() -> None:
    pieces = [bytes([b]) for b in "ok 👍!".encode()]
    out, stopped = _stream(TextAssembler(()), pieces)
    assert not stopped
    assert "".join(out) == "ok 👍!"
    assert "\ufffd" not in "".join(out)
    assert all(len(part) <= 1 for part in out)  # no half character was ever emitted alone


def test_multibyte_stop_string_split_inside_a_character() -> None:
    pieces = [bytes([b]) for b in "Grüße — Ende".encode()]
    out, stopped = _stream(TextAssembler(("—",)), pieces)
    assert stopped
    assert "".join(out) == "Grüße "


def test_finish_flushes_held_prefix() -> None:
    assembler = TextAssembler(("\nUser:",))
    assert assembler.feed(b"Done.\nUse") == ("Done.", False)
    assert assembler.finish() == "\nUse"


def test_finish_replaces_a_truncated_character() -> None:
    assembler = TextAssembler(())
    assert assembler.feed("a€".encode()[:-1]) == ("a", False)
    assert assembler.finish() == "\ufffd"


def test_lstrip_drops_only_the_leading_whitespace() -> None:
    text = TextAssembler((), lstrip=True)
    assert text.feed(b" ") == ("", False)
    assert text.feed(b" The") == ("The", False)
    assert text.feed(b" capital") == (" capital", False)
