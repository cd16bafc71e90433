"""Tokenizing as llama-server's /tokenize does, with a `tokenizers.Tokenizer` (the ONNX
engines'): the whole text, however long, whatever truncation or padding the engine set on the
tokenizer for its own batches. Runs on the worker's loop thread; nothing is shared."""

from __future__ import annotations

from typing import Any

from .base import check_token_ids
from .detok import decoded_pieces

__all__ = ["plain_pieces", "plain_tokens"]


def plain_tokens(tok: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """The ids of `text`: with `add_special`, what the post-processor adds (BOS, [CLS]...);
    with `parse_special`, special tokens written in the text are parsed as such."""
    truncation, padding = tok.truncation, tok.padding
    tok.no_truncation()
    tok.no_padding()
    tok.encode_special_tokens = not parse_special
    try:
        return list(tok.encode(text, add_special_tokens=add_special).ids)
    finally:
        tok.encode_special_tokens = False
        if truncation:
            tok.enable_truncation(**truncation)
        if padding:
            tok.enable_padding(**padding)


def plain_pieces(tok: Any, tokens: list[int]) -> list[bytes]:
    """Each token's share of the decoded text, special tokens written out (a 400 for an id
    outside the vocabulary)."""
    check_token_ids(tokens, tok.get_vocab_size())
    return decoded_pieces(lambda ids: str(tok.decode(ids, skip_special_tokens=False)), tokens)
