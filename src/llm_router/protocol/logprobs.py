"""Log-probabilities in OpenAI's two shapes: a chat choice's `logprobs.content` (one entry per
token: `token`, `logprob`, `bytes`, `top_logprobs`) and a text completion's `logprobs`
(parallel lists `tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}, `text_offset`:
each token's character offset from the start of the prompt, as OpenAI's count them: with
`echo` its offset in the choice's text, without it that plus the prompt's length).

A chat entry's `top_logprobs` are the `top_logprobs` likeliest tokens, the chosen one apart
(its own `token`/`logprob`); a completion's dict also holds the chosen token, as OpenAI
documents it (the sampled token's logprob always: up to `logprobs` + 1 entries, the chosen
one alone for `logprobs: 0`), for an echoed prompt's tokens as for the answer's."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from ..types import TokenLogprob

__all__ = [
    "ChatLogprobs",
    "CompletionLogprobs",
    "TopLogprob",
    "chat_logprobs",
    "completion_logprobs",
]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


def _text(token: bytes) -> str:
    return token.decode("utf-8", "replace")


def chat_logprobs(tokens: Iterable[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=_text(t.token),
                logprob=t.logprob if t.logprob is not None else 0.0,
                bytes=list(t.token),
                top_logprobs=[
                    TopLogprob(token=_text(b), logprob=lp, bytes=list(b)) for b, lp in t.top
                ],
            )
            for t in tokens
        ]
    )


def completion_logprobs(
    tokens: Iterable[TokenLogprob], offset: int = 0
) -> tuple[CompletionLogprobs, int]:
    """The entries, their text offsets counted from `offset` (the characters before them,
    the prompt's included), and the offset after them."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for t in tokens:
        text = _text(t.token)
        out.tokens.append(text)
        out.token_logprobs.append(t.logprob)
        top = None
        if t.logprob is not None:
            top = {_text(b): lp for b, lp in t.top}
            top.setdefault(text, t.logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out, offset
