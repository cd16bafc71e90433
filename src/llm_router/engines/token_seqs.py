"""Sequences of the engines that sample from logits and decode whole id lists (transformers,
onnxruntime-genai): a sequence's state, and what a sampled token does to it. Runs on the
worker's loop thread, as the engine does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import BadRequest
from ..types import FinishReason, GenerationRequest, TextDelta, TokenLogprob, Usage
from .base import check_prompt_fits
from .constraints import Grammars, Matcher
from .detok import IncrementalDetokenizer
from .logprobs import token_entry
from .sampling import Sampler
from .sequences import Events, Sequences, emit, finish_text, out_of_room, reply_text
from .text import TextAssembler

__all__ = ["TokenSeq", "TokenSequences"]


@dataclass(slots=True)
class TokenSeq:
    seq: int
    prompt: list[int]
    text: TextAssembler
    detok: IncrementalDetokenizer
    sampler: Sampler
    generated: list[int] = field(default_factory=list)
    state: Any = None  # the engine's own, from its first step: a KV cache, a genai Generator
    matcher: Matcher | None = None  # the answer's constraint, if the request has one
    logprobs: list[TokenLogprob] | None = None  # asked for: the entries not yet sent


class TokenSequences(Sequences[TokenSeq]):
    """The engine's sequences, and what a sampled token does to one: an `eos` token ends it
    ("stop"); any other is appended and its text emitted, and it ends at a stop string
    ("stop"), at `max_tokens` or when the prompt and the tokens fill `context_size`
    ("length"). `decode` turns ids into text (for the detokenizer); a chat through a template
    with `transcript_stops` also stops at those (see `reply_text`). `tokens_generated` counts
    the appended tokens of every sequence. `tokenizer_json` gives the model's tokenizer.json
    text, for constrained decoding (read on the first constrained request)."""

    def __init__(
        self,
        parallel: int,
        engine: str,
        errors: tuple[type[Exception], ...],
        *,
        eos: set[int],
        context_size: int | None,
        decode: Callable[[list[int]], str],
        transcript_stops: tuple[str, ...],
        tokenizer_json: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(parallel, engine, errors)
        self._grammars = Grammars(self._lltokenizer)
        self._tokenizer_json = tokenizer_json
        self._eos = eos
        self._context_size = context_size
        self._decode = decode
        self._transcript_stops = transcript_stops
        self.tokens_generated = 0

    def counts(self) -> dict[str, int]:
        """A snapshot for the engine's `info()`, with the KV cache's use as llama.cpp's engine
        reports it: the tokens the running sequences hold (prompt and answer so far; these
        engines keep nothing after a request ends) and, with a context size, the room of all
        slots together."""
        out = super().counts()
        out["tokens_cached"] = sum(len(s.prompt) + len(s.generated) for s in self.running.values())
        if self._context_size:
            out["context_total"] = self._context_size * self.parallel
        return out

    def submit(self, seq: int, request: GenerationRequest, prompt: list[int]) -> None:
        """Queue `request` under `seq` with its `prompt` tokens; raises ContextLengthExceeded
        or BadRequest as check_prompt_fits."""
        check_prompt_fits(len(prompt), self._context_size, request)
        params, text = reply_text(request, self._transcript_stops)
        matcher = None
        if request.constraint is not None:
            matcher = self._grammars.matcher(request.constraint)
            params = replace(params, ignore_eos=False)  # the constraint says when it ends
        if request.echo_logprobs:
            raise BadRequest(
                "`echo` with `logprobs` (the prompt's log-probabilities) is served by GGUF "
                "models (llama.cpp) only",
                param="echo",
            )
        detok = IncrementalDetokenizer(self._decode, prompt)
        sampler = Sampler(params, self._eos, prompt)
        s = TokenSeq(seq, prompt, text, detok, sampler, matcher=matcher)
        if params.logprobs is not None:
            s.logprobs = []
        self.add(s)

    def _lltokenizer(self) -> Any:
        from llguidance import LLTokenizer

        try:
            assert self._tokenizer_json is not None, "no tokenizer.json"
            return LLTokenizer(self._tokenizer_json(), eos_token=sorted(self._eos))
        except Exception as exc:  # a slow tokenizer, a format llguidance does not read
            raise BadRequest(f"this model's tokenizer cannot constrain answers ({exc})") from None

    def pick(self, s: TokenSeq, logits: Any) -> int:
        """The next token of `s` from its logits ([vocab]), within its constraint if any: the
        greedy choice when the constraint allows it, else a choice among the allowed tokens
        (see constraints)."""
        m = s.matcher
        if m is None:
            return self._note(s, logits, s.sampler(logits, s.generated))
        m.prepare()
        if s.sampler.params.temperature <= 0:
            token = s.sampler(logits, s.generated)
            if m.allows(token):
                return self._note(s, logits, token)
        scores = np.array(logits, dtype=np.float32).reshape(-1)  # a copy: masked in place
        m.apply(scores)
        return self._note(s, scores, s.sampler(scores, s.generated))

    def _note(self, s: TokenSeq, logits: Any, token: int) -> int:
        """Keep the entry of `token` when `s` asked for log-probabilities (an end token's
        is dropped with it, as the text it ends has none)."""
        if s.logprobs is not None and token not in self._eos:
            params = s.sampler.params
            scores = np.asarray(logits, dtype=np.float32).reshape(-1)
            s.logprobs.append(
                token_entry(scores, params.temperature, token, params.logprobs or 0, self._piece)
            )
        return token

    def _piece(self, token: int) -> bytes:
        return self._decode([token]).encode("utf-8")

    def asked_none(self, s: TokenSeq, events: Events) -> bool:
        """Whether `s` asked for no tokens (`max_tokens` 0): then it has ended ("length"),
        before its prompt is evaluated (nothing of it is reported but its length)."""
        if s.sampler.params.max_tokens != 0:
            return False
        self._finish(s, "length", events)
        return True

    def take(self, s: TokenSeq, token: int, events: Events) -> bool:
        """Add `token` to running sequence `s`; False when that ended it."""
        if token in self._eos:
            self._finish(s, "stop", events)
            return False
        if s.matcher is not None:
            s.matcher.accept(token)
        s.generated.append(token)
        self.tokens_generated += 1
        if s.logprobs is not None:
            out, stopped = s.text.feed(s.detok.feed(token).encode("utf-8"))
            if out:
                events.append((s.seq, TextDelta(out, tuple(s.logprobs))))
                s.logprobs.clear()
        else:
            stopped = emit(events, s.seq, s.text, s.detok.feed(token).encode("utf-8"))
        if stopped:
            self._finish(s, "stop", events, flush=False)
            return False
        if s.matcher is not None and s.matcher.done:
            self._finish(s, "stop", events)
            return False
        limit = s.sampler.params.max_tokens
        if out_of_room(len(s.prompt), len(s.generated), limit, self._context_size):
            self._finish(s, "length", events)
            return False
        return True

    def _finish(
        self, s: TokenSeq, reason: FinishReason, events: Events, flush: bool = True
    ) -> None:
        self.end(s)
        held = s.detok.finish() if flush else ""
        usage = Usage(len(s.prompt), len(s.generated))
        pending = tuple(s.logprobs or ()) if flush else ()
        finish_text(events, s.seq, s.text, reason, usage, flush=flush, held=held, logprobs=pending)
