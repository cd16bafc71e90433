"""Constrained decoding: the generated text must match a JSON schema, a regex or a Lark grammar
(`types.Constraint`). One llguidance matcher per sequence, so every slot of a batch has its own
constraint; the tokenizer it needs is built once per model, on the first constrained request
(0.3 s for SmolLM2's 49k tokens, 1.9 s for Gemma's 262k, measured here).

How a token is chosen under a constraint, in every engine: the matcher computes the set of
allowed tokens (a bitmask, 25-45 us). With greedy decoding the argmax is taken first and kept
when allowed, the common case; otherwise (and always when sampling) the disallowed tokens get
-inf added to their logits before the engine's own sampler runs. An additive bias from a lookup
table costs ~0.14 ms on Gemma's 262k logits where boolean indexing costs 1.1-1.3 ms
(../shared/research/structured-output.md). The sampler itself is unchanged, so temperature,
top-k/p and penalties mean what they mean without a constraint.

llguidance is imported here only, lazily: a server that is never asked for structured output
never loads it."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import BadRequest, EngineError
from ..types import Constraint

__all__ = ["Grammars", "Matcher", "compile_grammar"]

# JSON written without free whitespace (none the model chooses): a tiny model can otherwise loop
# on spaces and newlines until max_tokens. Separators as Python's json.dumps writes them, which
# tool_calls.ToolParser reads.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
# Schemas a client does not mark strict are compiled leniently: `oneOf` read as `anyOf`, unknown
# keywords and formats ignored (llguidance otherwise refuses ~4% of real-world schemas).
LENIENT: dict[str, Any] = {"coerce_one_of": True, "lenient": True}
GRAMMAR_CACHE = 64  # compiled grammars kept per model (a client tends to reuse its schemas)


def compile_grammar(c: Constraint) -> str:
    """The llguidance grammar (its JSON form) of a constraint; not yet validated."""
    from llguidance import LLMatcher

    if c.kind == "json":
        try:
            schema = json.loads(c.source)
        except ValueError as exc:
            raise BadRequest(f"the JSON schema is not valid JSON: {exc}", param=c.param) from None
        if not isinstance(schema, dict | bool):
            raise BadRequest("a JSON schema must be an object", param=c.param)
        options: Any = JSON_OPTIONS if c.strict else {**JSON_OPTIONS, **LENIENT}
        try:
            return str(
                LLMatcher.grammar_from_json_schema(bounded_numbers(schema), defaults=options)
            )
        except ValueError as exc:
            raise BadRequest(f"invalid JSON schema: {exc}", param=c.param) from None
    if c.kind == "regex":
        return str(LLMatcher.grammar_from_regex(c.source))
    return str(LLMatcher.grammar_from_lark(_lark(c.source)))


def _lark(source: str) -> str:
    """A `grammar` as Lark: llama.cpp's GBNF (`root ::= ...`, what llama-server's `grammar`
    field takes) is converted by llguidance's own converter; it was a Lark parse error."""
    if "::=" not in source:
        return source
    from llguidance.gbnf_to_lark import gbnf_to_lark

    try:
        return str(gbnf_to_lark(source))
    except Exception:  # not GBNF after all ("::=" in a Lark string): read as Lark
        return source


NUMBER_LIMIT = 1e15  # at most 15 integer digits...
NUMBER_STEP = 1e-8  # ...and 8 decimals, unless the schema bounds them itself
LITERAL_KEYS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas


def bounded_numbers(schema: Any) -> Any:
    """`schema` with its numbers bounded in length: a tiny model decoding greedily otherwise
    writes "0.000000..." until max_tokens, and the answer never parses. As llama.cpp's own
    schema converter does (16 digits): every answer still validates against the schema
    given, the limits only shrink the set a model may write."""
    if isinstance(schema, list):
        return [bounded_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in LITERAL_KEYS else bounded_numbers(v) for k, v in schema.items()}
    kinds = out.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if kinds & {"number", "integer"}:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -NUMBER_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = NUMBER_LIMIT
        if "number" in kinds and "multipleOf" not in out:
            out["multipleOf"] = NUMBER_STEP
    return out


class Grammars:
    """A model's constraint compiler: its llguidance tokenizer (built by `make_tokenizer` on
    first use) and its recently compiled grammars. `matcher` raises BadRequest, naming the
    request field, for a constraint that cannot be compiled."""

    def __init__(self, make_tokenizer: Callable[[], Any]) -> None:
        self._make_tokenizer = make_tokenizer
        self._tokenizer: Any = None
        self._compiled: OrderedDict[Constraint, str] = OrderedDict()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    def grammar(self, c: Constraint) -> str:
        """Compiled and validated against this model's tokenizer (cached)."""
        from llguidance import LLMatcher

        if (known := self._compiled.get(c)) is not None:
            self._compiled.move_to_end(c)
            return known
        grammar = compile_grammar(c)
        error = LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            what = {"json": "JSON schema", "regex": "regex", "lark": "grammar"}[c.kind]
            raise BadRequest(f"invalid {what}: {error}", param=c.param)
        self._compiled[c] = grammar
        if len(self._compiled) > GRAMMAR_CACHE:
            self._compiled.popitem(last=False)
        return grammar

    def matcher(self, c: Constraint) -> Matcher:
        from llguidance import LLMatcher

        m = LLMatcher(self.tokenizer, self.grammar(c), log_level=0)
        if m.is_error():
            raise BadRequest(f"invalid constraint: {_reason(m.get_error())}", param=c.param)
        return Matcher(m, int(self.tokenizer.vocab_size), c.param)


def _reason(error: str | None, default: str = "no token allowed") -> str:
    """llguidance's error without the parser state it dumps after the first line (a page of
    rows and items that means nothing to a client)."""
    first = (error or "").strip().split("\n", 1)[0]
    return first[:300] if first else default


_TABLE = np.array([-np.inf, 0.0], dtype=np.float32)  # bit -> additive bias


class Matcher:
    """One sequence's constraint. Per token: `prepare()` computes the allowed set, `allows` /
    `apply` use it, `accept` advances past the chosen token. `done` when the constraint is
    complete and only an end-of-generation token may follow."""

    def __init__(self, m: Any, vocab: int, param: str | None = None) -> None:
        self._m = m
        self._vocab = vocab  # tokens the mask covers; logits past it are never allowed
        self._param = param  # the request field of the constraint, for a 400
        self._mask = np.zeros((vocab + 31) // 32, dtype=np.int32)
        self._bias: npt.NDArray[np.float32] = np.empty(0, dtype=np.float32)

    def prepare(self) -> None:
        """Raises BadRequest when the parser gives up on the grammar (a schema no finite
        answer satisfies exhausts its items, say): the request's fault, a 400 naming its
        field when nothing was sent yet."""
        self._m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if self._m.is_error():
            raise self._gave_up()

    def allows(self, token: int) -> bool:
        if not 0 <= token < self._vocab:
            return False
        return bool((int(self._mask[token >> 5]) >> (token & 31)) & 1)

    def apply(self, logits: npt.NDArray[np.float32]) -> None:
        """Add -inf to the logits of every disallowed token (in place)."""
        n = min(logits.shape[0], self._vocab)
        if self._bias.shape[0] < n:
            self._bias = np.empty(n, dtype=np.float32)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little", count=n)
        np.take(_TABLE, bits, out=self._bias[:n])
        logits[:n] += self._bias[:n]
        logits[n:] = -np.inf

    def accept(self, token: int) -> None:
        """Raises BadRequest when the parser gives up past a token the mask allowed (as in
        `prepare`), EngineError for a token it did not allow (the engine's fault)."""
        if not self._m.consume_token(token):
            if self.allows(token):
                raise self._gave_up()
            raise EngineError(
                f"constraint failed: {_reason(self._m.get_error(), 'token not allowed')}"
            )

    def _gave_up(self) -> BadRequest:
        reason = _reason(self._m.get_error())
        return BadRequest(f"the constraint cannot be followed: {reason}", param=self._param)

    @property
    def done(self) -> bool:
        return bool(self._m.is_stopped())
