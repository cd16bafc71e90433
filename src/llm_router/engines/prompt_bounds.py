"""Lower bounds on a chat prompt's tokens, known before it is tokenized, so that a prompt that
cannot fit the context is refused without paying for its tokenization (which runs in the
decode loop, stalling every stream of the model).

llama.cpp parses the special tokens written in a text in time that grows with the square of
their count: a chat of 8,000 one-letter messages (two turn markers each) takes 1.2 s to
tokenize against 0.08 s for plain text of the same length, 20,000 take ~7 s and 200,000
(6 MB, under the body limit) several minutes. Every marker is a token, so a rendered chat
holds at least as many tokens as it holds markers."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["TurnMarkers"]


class TurnMarkers:
    """The special tokens a chat template writes around every turn (`<|im_start|>` and
    `<|im_end|>` for ChatML, `<start_of_turn>` and `<end_of_turn>` for Gemma), as text. Each
    match in a rendered chat is a token of its own (or part of a longer special token, which
    holds at most one: matches are disjoint), so their count is a lower bound of the chat's
    tokens."""

    def __init__(self, texts: Iterable[str]) -> None:
        found = sorted({t for t in texts if t}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, found))) if found else None
        self.shortest = min(map(len, found), default=0)

    def at_least(self, text: str, enough: int) -> int:
        """Tokens `text` surely has from its markers; counting stops at `enough`."""
        if self._pattern is None or len(text) < enough * self.shortest:
            return 0  # too short to hold `enough` markers: not worth the count
        count = 0
        for _ in self._pattern.finditer(text):
            count += 1
            if count >= enough:
                break
        return count
