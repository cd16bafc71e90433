"""Streaming detokenization for engines whose tokenizer decodes whole id lists (Hugging Face
tokenizers, onnxruntime-genai) rather than handing out each token's bytes as llama.cpp does.

Each new token is decoded together with a few tokens before it and only the text it adds is
emitted: decoding a token alone loses the leading space a SentencePiece or byte-level BPE
token carries, and a token holding part of a UTF-8 character decodes to U+FFFD until the rest
arrives. The cost is two decodes of a handful of tokens per step, whatever the length."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer", "decoded_pieces"]

CONTEXT_TOKENS = 6
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """`feed` one generated token id, get the text it completes (often "", while a character
    is incomplete). `context` is the prompt's tail: the first generated token is decoded
    after it, so its leading space survives."""

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = list(context[-CONTEXT_TOKENS:])
        self._prefix = 0  # start of the window decoded for context
        self._read = len(self._ids)  # tokens up to here have been emitted

    def feed(self, token: int) -> str:
        self._ids.append(token)
        return self._delta(final=False)

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        return self._delta(final=True)

    def _delta(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if not final and (len(after) <= len(before) or after.endswith(REPLACEMENT)):
            return ""
        if not after.startswith(before):
            # The tokenizer rewrote earlier text (clean-up of spaces): emit what is new only.
            common = 0
            for a, b in zip(before, after, strict=False):
                if a != b:
                    break
                common += 1
            before = before[:common]
        self._prefix, self._read = max(self._read - CONTEXT_TOKENS, 0), len(self._ids)
        if self._prefix > 4 * CONTEXT_TOKENS:  # keep the id list short
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return after[len(before) :]


def decoded_pieces(decode: Callable[[list[int]], str], tokens: list[int]) -> list[bytes]:
    """Each token's share of `decode(tokens)`, as UTF-8: a token that ends inside a character
    gets b"" and the one completing it the whole character, so the pieces join to the text."""
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.feed(t).encode() for t in tokens]
    if pieces:
        pieces[-1] += detok.finish().encode()
    return pieces
