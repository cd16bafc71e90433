"""GGUF models through llama.cpp's low-level API (llama-cpp-python's ctypes bindings).

One decode loop per model: every `step()` gathers one token from each generating sequence plus
prompt chunks of newly admitted ones into one `llama_batch` (a `seq_id` per slot) and calls
`llama_decode` once. Sampling runs in C through llama.cpp's sampler chains, one per sequence,
except plain greedy decoding: an argmax over the logits (see llamacpp_sampler).
The high-level `Llama.create_completion` is not used: it costs ~5 ms of Python per token.

This module is the decode loop and what feeds it (slots, batch, sampling, finishing), kept in
one place because its per-token path is the hot path and reads best inline; its decisions are
in slots.py (applied to llama.cpp's memory by llamacpp_slots.py), llamacpp_sampler.py and
constraints.py; the model's text side (vocabulary, chat template, a request's prompt tokens,
prompts refused as too long) is llamacpp_text.py's."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import llama_cpp as lc
import numpy as np

from ..errors import BadRequest, EngineError, RouterError
from ..types import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TemplateOptions,
    TextDelta,
    TokenLogprob,
    Usage,
)
from .base import (
    EngineEvent,
    LoadSpec,
    check_prompt_fits,
    check_token_ids,
    cpu_cores,
    logit_bias,
)
from .constraints import Grammars, Matcher
from .llamacpp_load import (
    context_params,
    load_model,
    model_params,
    new_context,
)
from .llamacpp_sampler import DrySamplers, GreedySampler, Sampler, make_sampler
from .llamacpp_slots import KvSlots
from .llamacpp_text import LlamaText
from .logprobs import PROMPT_CHUNK, prompt_entry, token_entry
from .sequences import Events, finish_text, reply_text
from .slots import MIN_SHARED_PREFIX, common_prefix
from .text import TextAssembler

__all__ = ["LlamaCppEngine", "model_params"]

DEFAULT_CONTEXT = 2048
DEFAULT_PARALLEL = 4
DEFAULT_BATCH = 512


@dataclass(slots=True)
class _Seq:
    seq: int
    tokens: list[int]
    params: SamplingParams
    sampler: Sampler
    text: TextAssembler
    slot: int = -1
    n_past: int = 0
    generated: int = 0
    next_token: int = -1
    logits_index: int = -1
    cached: int = 0
    matcher: Matcher | None = None  # the answer's constraint, if the request has one
    logprobs: list[TokenLogprob] | None = None  # asked for: the entries not yet sent
    echo: list[TokenLogprob] | None = None  # a prompt's entries, while it is evaluated
    chunk: tuple[int, int] = (-1, 0)  # this step's prompt chunk: batch index, position
    prior: Any = None  # the logits before the next prompt chunk's first token (echo)
    bias: tuple[Any, Any] | None = None  # logit_bias: ids and what is added to their logits


def _by_slot(s: _Seq) -> int:
    return s.slot


class LlamaCppEngine:
    """Engine for GGUF files. Each of `parallel` slots has its own KV stream of `context_size`
    cells. A slot keeps its tokens after a request ends; a new request takes a free slot by
    `slots.choose_slot` (packed low, or the one holding its prefix), gets a longer prefix
    copied from another slot when one holds it, and only the rest is evaluated."""

    def __init__(self, spec: LoadSpec) -> None:
        opts = spec.options
        self._model = model = load_model(spec)
        self._vocab = lc.llama_model_get_vocab(model)  # read per token (end of generation)
        self._dry = DrySamplers(self._vocab)
        n_train = lc.llama_model_n_ctx_train(model)
        self.context_size = min(opts.get("context_size") or min(n_train, DEFAULT_CONTEXT), n_train)
        self.parallel = opts.get("parallel") or DEFAULT_PARALLEL
        self.threads = opts.get("threads") or cpu_cores()
        self.batch_size = opts.get("batch_size") or DEFAULT_BATCH
        cparams = context_params(self.threads)
        cparams.n_ctx = self.context_size * self.parallel
        cparams.n_batch = cparams.n_ubatch = self.batch_size
        cparams.n_seq_max = self.parallel
        # Per-slot KV streams: attention cost follows the slot's length, not the total.
        cparams.kv_unified = False
        self._ctx = new_context(model, cparams, spec.path)
        self._batch = lc.llama_batch_init(self.batch_size, 0, 1)
        self._text = text = LlamaText(model, spec, self.context_size)  # vocabulary, prompts
        self._bos, self._n_vocab, self._template = text.bos, text.n_vocab, text.template
        self._piece, self._piece_special = text.piece, text.special_piece  # per token: bound
        self._eog_tokens = text.eog_tokens
        self._prompt_tokens = text.prompt_tokens  # as the other engines name it
        self._grammars = Grammars(text.lltokenizer)
        self._waiting: deque[_Seq] = deque()
        self._running: dict[int, _Seq] = {}
        self._stats = {
            "decode_steps": 0,
            "batch_sequences": 0,
            "prompt_tokens_evaluated": 0,
            "prompt_tokens_reused": 0,
            "prompt_prefix_copies": 0,
            "slot_moves": 0,
            "tokens_generated": 0,
        }
        self._slots = KvSlots(lc.llama_get_memory(self._ctx), self.parallel, self._stats)

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "engine": "llama.cpp",
            "context_size": self.context_size,
            "context_total": self.context_size * self.parallel,
            "parallel": self.parallel,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "chat_template": self._template is not None,
            "slots_busy": len(self._running),
            "slots_idle": self.parallel - len(self._running),
            "requests_waiting": len(self._waiting),
            "tokens_cached": sum(len(t) for t in self._slots.tokens),
            **self._stats,
        }

    def set_threads(self, threads: int) -> None:
        """Share of the machine's cores this model may use now (the router's thread budget)."""
        self.threads = threads
        lc.llama_set_n_threads(self._ctx, threads, threads)

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting)

    def submit(self, seq: int, request: GenerationRequest) -> None:
        self._text.refuse_surely_too_long(request)
        if request.prompt_tokens is not None:
            tokens = list(request.prompt_tokens)
            check_token_ids(tokens, self._n_vocab, param="prompt")
        else:
            tokens = self._prompt_tokens(request)
        if not tokens and self._bos >= 0:
            tokens = [self._bos]  # an empty prompt continues from the start of a text
        check_prompt_fits(len(tokens), self.context_size, request, self.parallel)
        params, text = reply_text(request, self._template.stops if self._template else ())
        matcher = None
        if request.constraint is not None:
            matcher = self._grammars.matcher(request.constraint)
            params = replace(params, ignore_eos=False)  # the constraint says when it ends
        bias = logit_bias(params, self._n_vocab, self._bias_tokens)
        sampler = self._make_sampler(params)
        sampler.prime(tokens)
        s = _Seq(seq, tokens, params, sampler, text, matcher=matcher, bias=bias)
        if params.logprobs is not None:
            s.logprobs = []
            if request.echo_logprobs:
                s.echo = []
        self._waiting.append(s)

    def cancel(self, seq: int) -> None:
        for s in list(self._waiting):
            if s.seq == seq:
                self._waiting.remove(s)
                s.sampler.free()
        if seq in self._running:
            self._release(self._running.pop(seq))

    def step(self) -> list[tuple[int, EngineEvent]]:
        self._admit()
        self._close_gaps()
        batch_seqs = self._fill_batch()
        if not batch_seqs:
            return []
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            return self._fail_all(f"llama_decode failed with code {rc}")
        events: list[tuple[int, EngineEvent]] = []
        for s in batch_seqs:
            if s.echo is not None and s.chunk[0] >= 0:
                self._echo_chunk(s, events)
            if s.logits_index >= 0:
                try:
                    self._sample(s, events)
                except Exception as exc:  # this sequence fails, the others go on
                    failed = exc if isinstance(exc, RouterError) else None
                    events.append((s.seq, failed or EngineError(f"sampling failed: {exc}")))
                    self.cancel(s.seq)
        return events

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """A generative GGUF makes no embeddings here; embedding GGUFs (a `pooling_type` in the
        header) get LlamaCppEmbeddingEngine instead (see `open_gguf`)."""
        raise BadRequest("this model does not make embeddings", param="model")

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return self.embed(inputs)[1]  # refused, as `embed` is

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._text.tokenize(text, add_bos=add_special, special=parse_special)

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        check_token_ids(tokens, self._n_vocab)
        return [self._piece(t, special=True) for t in tokens]

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        return self._text.chat_prompt(messages, options)

    def template_info(self) -> dict[str, str]:
        return self._text.template_info()

    def close(self) -> None:
        for s in [*self._waiting, *self._running.values()]:
            s.sampler.free()
        self._waiting.clear()
        self._running.clear()
        self._dry.free()
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    # -- sampling --------------------------------------------------------------------------

    def _make_sampler(self, p: SamplingParams) -> Sampler:
        return make_sampler(p, self._vocab, self._eog_tokens, self.context_size, self._dry)

    def _bias_tokens(self, text: str) -> list[int]:
        """A `logit_bias` text key's tokens, as llama-server takes them (no special tokens)."""
        return self._text.tokenize(text, add_bos=False, special=False)

    # -- the decode loop -------------------------------------------------------------------

    def _admit(self) -> None:
        deferred: list[_Seq] = []
        while self._waiting and self._slots.free:
            s = self._waiting.popleft()
            if s.echo is None and self._twin_prefilling(s):
                deferred.append(s)
                continue
            # with echo every prompt token's logits are needed: nothing is reused
            s.slot, s.n_past = self._slots.take(s.tokens, reuse=s.echo is None)
            s.cached = s.n_past
            self._running[s.seq] = s
        self._waiting.extendleft(reversed(deferred))

    def _twin_prefilling(self, s: _Seq) -> bool:
        """Whether a sequence still evaluating its prompt shares at least MIN_SHARED_PREFIX
        more of `s`'s prompt than any slot holds now (the `n` answers of one request, or the
        same system prompt arriving at once): `s` then waits the step or two until that
        prompt is in, and gets it copied (KvSlots.take) instead of evaluating it again."""
        prefilling = [r.tokens for r in self._running.values() if r.n_past < len(r.tokens)]
        if not prefilling:
            return False  # the common case: nothing to wait for, no prefix compared
        held = self._slots.held(s.tokens)
        return any(common_prefix(t, s.tokens) - held >= MIN_SHARED_PREFIX for t in prefilling)

    def _close_gaps(self) -> None:
        """Busy slots kept consecutive (KvSlots.close_gaps): llama.cpp splits a batch where
        its sequence ids stop being consecutive and runs the model once per piece."""
        if not self._slots.free:
            return
        by_slot = {s.slot: s for s in self._running.values()}
        for src, dst in self._slots.close_gaps(list(by_slot)):
            s = by_slot.pop(src)
            s.slot = dst
            by_slot[dst] = s

    def _fill_batch(self) -> list[_Seq]:
        """Decode tokens first (one per generating sequence), then prompt chunks in the room
        left (in order of arrival), so a long prompt never stalls the streams already
        generating. Each part goes into the batch in slot order: with one KV stream per slot,
        llama.cpp decodes a batch whose sequences are out of order ~2.4x slower (measured
        here: 133 ms against 55 ms a step at 8 sequences)."""
        b = self._batch
        held = self._slots.tokens
        n = 0
        decoding: list[_Seq] = []
        prefilling: list[_Seq] = []
        for s in self._running.values():
            s.logits_index = -1
            (prefilling if s.n_past < len(s.tokens) else decoding).append(s)
        decoding.sort(key=_by_slot)
        for s in decoding:
            self._put(b, n, s.next_token, s.n_past, s.slot, True)
            held[s.slot].append(s.next_token)
            s.logits_index = n
            s.n_past += 1
            n += 1
        chunks: list[tuple[_Seq, int]] = []
        room = self.batch_size - n
        for s in prefilling:
            if room <= 0:
                break
            take = min(room, len(s.tokens) - s.n_past)
            if s.echo is not None:
                take = min(take, PROMPT_CHUNK)
            chunks.append((s, take))
            room -= take
        chunks.sort(key=lambda c: c[0].slot)
        for s, take in chunks:
            chunk = s.tokens[s.n_past : s.n_past + take]
            last = s.n_past + take == len(s.tokens)
            every = s.echo is not None
            s.chunk = (n, s.n_past) if every else (-1, 0)
            for i, tok in enumerate(chunk):
                self._put(b, n, tok, s.n_past + i, s.slot, every or (last and i == take - 1))
                n += 1
            held[s.slot].extend(chunk)
            self._stats["prompt_tokens_evaluated"] += take
            s.n_past += take
            if last:
                s.logits_index = n - 1
        used = decoding + [s for s, _ in chunks]
        b.n_tokens = n
        if used:
            self._stats["decode_steps"] += 1
            self._stats["batch_sequences"] += len(used)
        return used

    @staticmethod
    def _put(b: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _sample(self, s: _Seq, events: list[tuple[int, EngineEvent]]) -> None:
        """Written out rather than through sequences.emit/out_of_room: it runs once per token
        in the decode loop. The context is full when `n_past` (the sampled token not yet
        evaluated) reaches it. `max_tokens` 0 ends with the prompt (and its echo), unsampled."""
        if s.params.max_tokens == 0:
            return self._finish(s, "length", events)
        if s.bias is not None:  # once, before any sampler or mask reads the logits
            ids, values = s.bias
            self._logits(s.logits_index)[ids] += values
        m = s.matcher
        if m is None:
            token = s.sampler.sample(self._ctx, s.logits_index)
        else:
            token = self._sample_constrained(s, m)
        if lc.llama_vocab_is_eog(self._vocab, token):
            return self._finish(s, "stop", events)
        if m is not None:
            m.accept(token)
        s.generated += 1
        self._stats["tokens_generated"] += 1
        s.next_token = token
        text, stopped = s.text.feed(self._piece(token))
        if s.logprobs is not None:
            s.logprobs.append(self._entry(s, token))
            if text:
                events.append((s.seq, TextDelta(text, tuple(s.logprobs))))
                s.logprobs.clear()
        elif text:
            events.append((s.seq, TextDelta(text)))
        if stopped:
            return self._finish(s, "stop", events, flush=False)
        if m is not None and m.done:
            return self._finish(s, "stop", events)
        limit = s.params.max_tokens
        if (limit is not None and s.generated >= limit) or s.n_past >= self.context_size:
            self._finish(s, "length", events)

    def _logits(self, index: int) -> Any:
        """The logits of batch output `index`: llama.cpp's buffer, valid until the next decode."""
        ptr = lc.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(ptr, (self._n_vocab,))

    def _entry(self, s: _Seq, token: int) -> TokenLogprob:
        k = s.params.logprobs or 0
        return token_entry(
            self._logits(s.logits_index), s.params.temperature, token, k, self._piece_special
        )

    def _echo_chunk(self, s: _Seq, events: list[tuple[int, EngineEvent]]) -> None:
        """The entries of the prompt tokens this step evaluated (each from the logits of the
        position before it; the chunk's first from those the last chunk kept), sent once the
        whole prompt is in. A prompt's first token has no entry when it is the BOS, and no
        log-probability otherwise (nothing predicts it)."""
        assert s.echo is not None
        index, pos = s.chunk
        k = s.params.logprobs or 0
        for i in range(pos, s.n_past):
            if i == 0 and s.tokens[0] == self._bos:
                continue  # the BOS is not the prompt's text; what it predicts is
            before = s.prior if i == pos else self._logits(index + i - pos - 1)
            s.echo.append(prompt_entry(before, s.tokens[i], k, self._piece_special))
        s.chunk = (-1, 0)
        if s.n_past < len(s.tokens):
            s.prior = np.array(self._logits(index + s.n_past - pos - 1))
            return
        s.prior = None
        events.append((s.seq, PromptLogprobs(tuple(s.echo))))
        s.echo = None

    def _sample_constrained(self, s: _Seq, m: Matcher) -> int:
        """Greedy: the argmax when the constraint allows it (most tokens), else the argmax of
        the masked logits. Sampling: the chain runs on the masked logits (see constraints)."""
        m.prepare()
        if isinstance(s.sampler, GreedySampler):
            token = s.sampler.sample(self._ctx, s.logits_index)
            if m.allows(token):
                return token
        ptr = lc.llama_get_logits_ith(self._ctx, s.logits_index)
        m.apply(np.ctypeslib.as_array(ptr, (self._n_vocab,)))  # llama.cpp's buffer, in place
        return s.sampler.sample(self._ctx, s.logits_index)

    def _finish(self, s: _Seq, reason: FinishReason, events: Events, flush: bool = True) -> None:
        usage = Usage(len(s.tokens), s.generated, s.cached)
        pending = tuple(s.logprobs or ()) if flush else ()
        finish_text(events, s.seq, s.text, reason, usage, flush=flush, logprobs=pending)
        del self._running[s.seq]
        self._release(s)

    def _release(self, s: _Seq) -> None:
        """Free the slot; its KV cells stay, for the next request sharing the prefix."""
        s.sampler.free()
        self._slots.release(s.slot)

    def _fail_all(self, message: str) -> list[tuple[int, EngineEvent]]:
        failed = list(self._running.values())
        for s in failed:
            del self._running[s.seq]
            self._release(s)
            self._slots.clear(s.slot)
        return [(s.seq, EngineError(message)) for s in failed]
