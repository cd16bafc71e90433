"""Per-sequence samplers built from the project's SamplingParams: llama.cpp sampler chains
(sampling in C), a direct argmax over the logits for plain greedy decoding, and the same chain
handed only the tokens that can survive its top-k when it has one.

Why the last two: `llama_sampler_sample` first fills a candidate array with every token of the
vocabulary, whatever the chain, and its top-k then sorts through all of them. With Gemma 3's
262k tokens that is ~0.3-0.6 ms a token, 5-11% of the wall time of 8 streams decoding together
(measured in-process, bench/sampling.py). An argmax over the same logits picks the greedy
token in a tenth of that; for sampling, a threshold pass over the logits finds the few tokens
near the maximum, a superset of what the top-k keeps, and the unchanged chain (penalties,
top-k, top-p, min-p, temperature, the seeded draw) runs on those alone: the same candidates,
in the same order, the same draws from the same seed (see TopKFirstSampler)."""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import llama_cpp as lc
import numpy as np

from ..types import DEFAULT_ORDER, LLAMA_DEFAULTS, LlamaSampling, SamplingParams

__all__ = ["DrySamplers", "Sampler", "make_sampler"]

# a longer penalty window takes the whole vocabulary (its tokens join the candidates)
MAX_WINDOW = 256
SPANS = (8.0, 16.0, 32.0)  # logit distances below the maximum tried for the candidates
MAX_CANDIDATES = 4096  # at most this many candidates go to the chain: the highest
MAX_TOP_K = 1024  # a wider top-k takes the whole vocabulary too
COLUMNS = 32768  # near_top reads the logits as rows of this many


class Sampler(Protocol):
    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch position `index` of the last decode."""
        ...

    def prime(self, tokens: list[int]) -> None:
        """The prompt's tokens join the history the penalties and DRY look at, as
        llama-server feeds a prompt to its sampler before the first draw."""
        ...

    def free(self) -> None: ...


class ChainSampler:
    """A llama.cpp sampler chain; `free` releases it (once)."""

    def __init__(self, chain: Any, history: int = 0) -> None:
        self._chain = chain
        self._history = history  # the prompt's last tokens the chain looks at

    def sample(self, ctx: Any, index: int) -> int:
        return int(lc.llama_sampler_sample(self._chain, ctx, index))

    def prime(self, tokens: list[int]) -> None:
        for token in tokens[-self._history :] if self._history else ():
            lc.llama_sampler_accept(self._chain, token)

    def free(self) -> None:
        if self._chain is not None:
            lc.llama_sampler_free(self._chain)
            self._chain = None


class GreedySampler:
    """The most likely token, `banned` ones (end-of-generation, for `ignore_eos`) excluded."""

    def __init__(self, n_vocab: int, banned: list[int]) -> None:
        self._n_vocab = n_vocab
        self._banned = np.asarray(banned, dtype=np.intp) if banned else None

    def sample(self, ctx: Any, index: int) -> int:
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        if self._banned is not None:
            logits[self._banned] = -np.inf  # llama.cpp's output buffer, rewritten next decode
        return int(logits.argmax())

    def prime(self, tokens: list[int]) -> None:
        pass

    def free(self) -> None:
        pass


class TopKFirstSampler:
    """llama.cpp's chain, applied to the tokens that can survive its top-k instead of all.

    With the chain's order (penalties, then top-k of `k`), the tokens it keeps are among the
    `k + h` of highest raw logit, `h` being how many distinct tokens the penalty window holds
    (penalties touch only those), together with those `h` (a negative penalty can raise them).
    Every token at least as high as a threshold below the maximum is taken, the threshold
    widened until there are `k + h`; the chain's top-k then sorts that short array as it would
    the whole vocabulary, so the rest of the chain sees the same tokens in the same order
    (equal logits aside: their order is the sort's choice) and the same seed draws the same
    token. Banned tokens (`ignore_eos`) are written as -inf into
    llama.cpp's logits first, as the greedy sampler does. When even the widest threshold finds
    too few (a constraint masked nearly everything), the whole chain runs on the whole
    vocabulary as before."""

    def __init__(
        self, chain: Any, top_k: int, n_vocab: int, banned: list[int], window: int
    ) -> None:
        self._chain = chain
        self._k = top_k
        self._n_vocab = n_vocab
        self._banned = np.asarray(banned, dtype=np.intp) if banned else None
        self._recent: deque[int] | None = deque(maxlen=window) if window else None
        self._data = (lc.llama_token_data * (MAX_CANDIDATES + window))()
        self._view = np.ctypeslib.as_array(self._data)
        self._array = lc.llama_token_data_array(data=self._data, size=0, selected=-1, sorted=False)
        self._array_ref = ctypes.byref(self._array)
        self._width = min(COLUMNS, n_vocab)
        self.whole_vocabulary = 0  # tokens sampled the slow way, over every token

    def sample(self, ctx: Any, index: int) -> int:
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        token = self.pick(logits)  # llama.cpp's output buffer, rewritten by the next decode
        if token is None:
            self.whole_vocabulary += 1
            token = int(lc.llama_sampler_sample(self._chain, ctx, index))
            self._accepted(token)
        return token

    def pick(self, logits: np.ndarray) -> int | None:
        """The chain's token from `logits` (banned ones set to -inf in place), or None when
        the candidates are not found near the maximum (nothing drawn, nothing accepted)."""
        if self._banned is not None:
            logits[self._banned] = -np.inf
        ids = self._candidates(logits)
        if ids is None:
            return None
        n = len(ids)
        view = self._view[:n]
        view["id"] = ids
        view["logit"] = logits[ids]
        a = self._array
        a.data, a.size, a.selected, a.sorted = self._data, n, -1, False
        lc.llama_sampler_apply(self._chain, self._array_ref)
        token = int(a.data[a.selected].id)  # XTC moves the array's start past what it cuts
        self.accept(token)
        return token

    def prime(self, tokens: list[int]) -> None:
        if self._recent is not None:
            for token in tokens[-(self._recent.maxlen or 0) :]:
                self.accept(token)

    def accept(self, token: int) -> None:
        """`token` joins the history the penalties count (as after every draw)."""
        lc.llama_sampler_accept(self._chain, token)
        self._accepted(token)

    def _accepted(self, token: int) -> None:
        if self._recent is not None:
            self._recent.append(token)

    def _candidates(self, logits: np.ndarray) -> np.ndarray | None:
        """Token ids that hold the chain's top-k whatever the penalties do, or None."""
        touched = np.unique(np.fromiter(self._recent, np.int64)) if self._recent else None
        need = self._k + (len(touched) if touched is not None else 0)
        ids = near_top(logits, need, self._width)
        if ids is None:
            return None
        if len(ids) > MAX_CANDIDATES:  # the highest of them (need <= MAX_TOP_K + the window)
            cut = len(ids) - MAX_CANDIDATES
            ids = ids[np.argpartition(logits[ids], cut)[cut:]]
        return ids if touched is None else np.union1d(ids, touched)

    def free(self) -> None:
        if self._chain is not None:
            lc.llama_sampler_free(self._chain)
            self._chain = None


def near_top(logits: np.ndarray, need: int, width: int) -> np.ndarray | None:
    """The ids, ascending, of the logits at least as high as the maximum less the first of
    SPANS that takes `need` of them; None when the maximum is not finite or even the widest
    takes fewer.

    The logits are read as rows of `width` (a partial last row apart): one pass takes each
    column's maximum, and only the columns whose maximum is near the top are looked at
    again. Passes over the whole vocabulary (its maximum, the threshold, the count, the ids)
    were most of a sampled token's cost, each reading the logits the decode has just written
    from memory: on Gemma's 262k real logits this takes 114 us where they took 163 (a plain
    maximum alone: 66), and sampling 8 streams 1.78 ms a step instead of 2.00
    (bench/sampling.py). Narrower rows gather more scattered columns and are slower."""
    end = len(logits) - len(logits) % width
    rows = logits[:end].reshape(-1, width)
    peaks = rows.max(axis=0)
    tail = logits[end:]
    top = np.maximum(peaks.max(), tail.max()) if len(tail) else peaks.max()
    if not np.isfinite(top):
        return None
    for span in SPANS:
        floor = float(top) - span
        hot = np.flatnonzero(peaks >= floor)
        row, col = np.nonzero(np.take(rows, hot, axis=1) >= floor)
        ids = row * width + hot[col]  # row by row, each row's columns ascending: ascending
        if len(tail):
            ids = np.concatenate((ids, np.flatnonzero(tail >= floor) + end))
        if len(ids) >= need:
            return ids
    return None


def plain_greedy(p: SamplingParams) -> bool:
    """Greedy with nothing that needs the token history (penalties, DRY) or can take the
    most likely token away (XTC): a pure argmax."""
    x = p.llama
    return (
        p.temperature <= 0
        and not penalized(p)
        and (
            x is None
            or (
                not (x.dry or x.xtc_probability or x.mirostat)
                and x.default_order  # another order is run as it is
            )
        )
    )


def make_sampler(
    p: SamplingParams,
    vocab: Any,
    eog_tokens: Callable[[], list[int]],
    n_ctx: int,
    dry: DrySamplers | None = None,
) -> Sampler:
    """The sampler for one sequence: an argmax for plain greedy, else llama.cpp's chain
    (build_chain), run on the top-k's candidates alone when its other samplers allow
    (TopKFirstSampler); its DRY samplers cloned from `dry`'s when given. The caller primes
    it with the prompt (`prime`) and calls `free()` when the sequence ends."""
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    banned = eog_tokens() if p.ignore_eos else []
    if plain_greedy(p):
        return GreedySampler(n_vocab, banned)
    x = p.llama or LLAMA_DEFAULTS
    window = penalty_window(p, n_ctx) if penalized(p) else 0
    if (
        p.temperature > 0
        and 0 < p.top_k <= MAX_TOP_K
        and window <= MAX_WINDOW
        and not (x.mirostat or x.dry or x.top_n_sigma > 0)  # these read the whole vocabulary
        and x.default_order  # top-k first after the penalties
    ):
        chain = build_chain(p, n_vocab, vocab=vocab, n_ctx=n_ctx, dry=dry)  # banned: -inf
        return TopKFirstSampler(chain, p.top_k, n_vocab, banned, window)
    history = 0 if x.mirostat else max(window, dry_window(x, n_ctx) if x.dry else 0)
    chain = build_chain(p, n_vocab, banned, vocab=vocab, n_ctx=n_ctx, dry=dry)
    return ChainSampler(chain, history)


def penalized(p: SamplingParams) -> bool:
    return p.penalty_last_n != 0 and (
        p.repeat_penalty != 1.0 or bool(p.frequency_penalty or p.presence_penalty)
    )


def penalty_window(p: SamplingParams, n_ctx: int) -> int:
    """The tokens the penalties look back over: `repeat_last_n`, -1 (and any longer window)
    being the sequence's context, `n_ctx`. llama.cpp allocates the window whole for each
    sequence: `repeat_last_n` 2^31-1 was an 8 GiB buffer that killed the worker (and every
    stream on it), though a sequence never holds more than its context."""
    return n_ctx if p.penalty_last_n < 0 else min(p.penalty_last_n, n_ctx)


def dry_window(x: LlamaSampling, n_ctx: int) -> int:
    """DRY's window, bounded by the context as the penalties' is (see penalty_window)."""
    return n_ctx if x.dry_penalty_last_n < 0 else min(x.dry_penalty_last_n, n_ctx)


def build_chain(
    p: SamplingParams,
    n_vocab: int,
    banned: list[int] | tuple[int, ...] = (),
    *,
    vocab: Any = None,
    n_ctx: int,
    dry: DrySamplers | None = None,
) -> Any:
    """llama.cpp's sampler chain for `p`, as llama-server builds it (common/sampling.cpp),
    leaving out what is switched off: `banned` tokens (end-of-generation, for `ignore_eos`)
    biased to -inf; then with Mirostat only temperature and Mirostat; else the request's
    `samplers` in their order, by default penalties, DRY, top-n-sigma, top-k, typical, top-p,
    min-p, XTC, temperature (dynamic with a range); then a seeded draw (a fresh seed when
    `p.seed` is None). Greedy (temperature 0) in the default order ends in an argmax after
    the penalties and DRY. DRY needs the model's `vocab` (or `dry`, whose samplers it clones);
    the penalties' and DRY's windows are at most `n_ctx` tokens, a sequence's context (-1 is
    all of it)."""
    x = p.llama or LLAMA_DEFAULTS
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lc.llama_sampler_chain_add
    seed = p.seed32()
    if banned:
        biases = (lc.llama_logit_bias * len(banned))()
        for i, token in enumerate(banned):
            biases[i].token, biases[i].bias = token, float("-inf")  # type: ignore[assignment]
        add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(banned), biases))
    if x.mirostat:
        add(chain, lc.llama_sampler_init_temp(p.temperature))
        if x.mirostat == 1:
            add(
                chain,
                lc.llama_sampler_init_mirostat(n_vocab, seed, x.mirostat_tau, x.mirostat_eta, 100),
            )
        else:
            add(chain, lc.llama_sampler_init_mirostat_v2(seed, x.mirostat_tau, x.mirostat_eta))
        return chain
    # greedy in the default order: the argmax after the penalties and DRY, which every later
    # filter but XTC keeps (another order is run as it is, as llama-server runs it)
    greedy = p.temperature <= 0 and x.default_order and not x.xtc_probability
    order = ("penalties", "dry") if greedy else DEFAULT_ORDER if x.samplers is None else x.samplers
    for name in order:
        sampler = _sampler(name, p, x, dry or vocab, n_vocab, n_ctx, seed)
        if sampler is not None:
            add(chain, sampler)
    if greedy:
        add(chain, lc.llama_sampler_init_greedy())
        return chain
    add(chain, lc.llama_sampler_init_dist(seed))
    return chain


def _sampler(
    name: str, p: SamplingParams, x: LlamaSampling, vocab: Any, n_vocab: int, n_ctx: int, seed: int
) -> Any:
    """llama.cpp's sampler called `name` (llama-server's names) for `p`, or None when its
    values switch it off. `vocab`: the model's, or its DrySamplers."""
    if name == "penalties":
        if not penalized(p):
            return None
        window = penalty_window(p, n_ctx)
        return lc.llama_sampler_init_penalties(
            n_vocab, window, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
        )
    if name == "dry":
        if not x.dry:
            return None
        assert vocab is not None, "DRY needs the model's vocabulary"
        if isinstance(vocab, DrySamplers):
            return vocab.clone(x, dry_window(x, n_ctx))
        return _dry(vocab, x, dry_window(x, n_ctx))
    if name == "top_n_sigma":
        return lc.llama_sampler_init_top_n_sigma(x.top_n_sigma) if x.top_n_sigma > 0 else None
    if name == "top_k":
        return lc.llama_sampler_init_top_k(p.top_k) if p.top_k > 0 else None
    if name == "typ_p":
        return lc.llama_sampler_init_typical(x.typical_p, x.min_keep) if x.typical_p < 1 else None
    if name == "top_p":
        return lc.llama_sampler_init_top_p(p.top_p, x.min_keep) if p.top_p < 1 else None
    if name == "min_p":
        return lc.llama_sampler_init_min_p(p.min_p, x.min_keep) if p.min_p > 0 else None
    if name == "xtc":
        if not x.xtc_probability:
            return None
        return lc.llama_sampler_init_xtc(x.xtc_probability, x.xtc_threshold, x.min_keep, seed)
    assert name == "temperature", name
    return lc.llama_sampler_init_temp_ext(p.temperature, x.dynatemp_range, x.dynatemp_exponent)


def _dry(vocab: Any, x: LlamaSampling, last_n: int) -> Any:
    """llama.cpp's DRY sampler: it scans the whole vocabulary for each sequence breaker (a
    breaker given twice is the same breaker: once)."""
    breakers = [b.encode() for b in dict.fromkeys(x.dry_sequence_breakers)]
    array = (ctypes.c_char_p * len(breakers))(*breakers)
    return lc.llama_sampler_init_dry(
        vocab, x.dry_multiplier, x.dry_base, x.dry_allowed_length, last_n, array, len(breakers)
    )


class DrySamplers:
    """A model's DRY samplers, made once for each set of DRY values and cloned for each
    sequence. Making one reads every token of the vocabulary for each sequence breaker, in
    the decode loop: 64 breakers took 1.2 s on Gemma 3's 262k tokens, and a request could ask
    for DRY 32 times in its `samplers`, and again for each of its `n` answers (the default
    four breakers: 34 ms each time). A clone copies the breakers' tokens. The last KEEP
    kinds are kept; `free` releases them (once, with the model)."""

    KEEP = 8

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._made: dict[tuple[Any, ...], Any] = {}  # oldest first

    def clone(self, x: LlamaSampling, last_n: int) -> Any:
        breakers = tuple(dict.fromkeys(x.dry_sequence_breakers))
        key = (x.dry_multiplier, x.dry_base, x.dry_allowed_length, last_n, breakers)
        made = self._made.pop(key, None)
        if made is None:
            made = _dry(self._vocab, x, last_n)
            while len(self._made) >= self.KEEP:
                lc.llama_sampler_free(self._made.pop(next(iter(self._made))))
        self._made[key] = made
        return lc.llama_sampler_clone(made)

    def free(self) -> None:
        for made in self._made.values():
            lc.llama_sampler_free(made)
        self._made.clear()
