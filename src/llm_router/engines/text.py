"""Turning token bytes into text a client may see: whole UTF-8 characters, stop strings cut.

Pure and engine-independent, so every engine streams text the same way."""

from __future__ import annotations

import codecs

__all__ = ["StopMatcher", "TextAssembler"]


class StopMatcher:
    """Holds back text that could be the start of a stop string.

    `feed` returns the text that is safe to emit and whether a stop string was hit; on a hit the
    stop string and everything after it are dropped, as OpenAI does."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched: str | None = None  # the stop string hit, once one is

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buf = self._held + text
        found = [(i, n, s) for n, s in enumerate(self._stops) if (i := buf.find(s)) >= 0]
        if found:
            cut, _, self.matched = min(found)  # the earliest; at a tie, the first given
            self._held = ""
            return buf[:cut], True
        keep = self._longest_partial(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best


class TextAssembler:
    """Bytes of token pieces in, text out: incomplete UTF-8 sequences wait for their next byte,
    then pass through the stop matcher. With `lstrip`, whitespace before the first visible
    character is dropped (a transcript-style reply starts with the space after "Assistant:")."""

    def __init__(self, stops: tuple[str, ...], *, lstrip: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = StopMatcher(stops)
        self._lstrip = lstrip

    def feed(self, piece: bytes) -> tuple[str, bool]:
        text, stopped = self._stop.feed(self._decoder.decode(piece))
        if self._lstrip and text:
            text = text.lstrip()
            self._lstrip = not text
        return text, stopped

    def finish(self) -> str:
        tail, _ = self._stop.feed(self._decoder.decode(b"", final=True))
        return tail + self._stop.flush()

    @property
    def stopped_by(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._stop.matched
