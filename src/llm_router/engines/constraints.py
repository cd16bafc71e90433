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
# llguidance's default is 1_000_000 (~850 integer properties); this much more only tells a
# grammar refused for its size from one refused for its content
ROOMY_LEXER_FUEL = 10_000_000
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
        if c.strict and (why := repeatable_min_properties(schema)):
            raise BadRequest(why, param=c.param)
        schema = bounded_numbers(schema)
        if (big := wide_integer(schema)) is not None:
            key, value = big
            raise BadRequest(
                f"the JSON schema's `{key}` holds {value}, an integer beyond 64 bits, "
                "which the constraint compiler cannot take",
                param=c.param,
            )
        try:
            return str(LLMatcher.grammar_from_json_schema(schema, defaults=options))
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
    given, the limits only shrink the set a model may write. A bound the schema sets beyond
    the limit is the limit too (`maximum: 2**64`, `minimum: -1e30`: llguidance refused
    integers past 64 bits and integer or number ranges that wide)."""
    if isinstance(schema, list):
        return [bounded_numbers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in LITERAL_KEYS else bounded_numbers(v) for k, v in schema.items()}
    kinds = _kinds(out)
    if kinds & {"number", "integer"}:
        low = _bound(out, "minimum", "exclusiveMinimum")
        high = _bound(out, "maximum", "exclusiveMaximum")
        if (low is None or low <= NUMBER_LIMIT) and (high is None or high > NUMBER_LIMIT):
            out.pop("exclusiveMaximum", None)
            out["maximum"] = NUMBER_LIMIT
        if (high is None or high >= -NUMBER_LIMIT) and (low is None or low < -NUMBER_LIMIT):
            out.pop("exclusiveMinimum", None)
            out["minimum"] = -NUMBER_LIMIT
        if "number" in kinds and "multipleOf" not in out:
            out["multipleOf"] = NUMBER_STEP
    return out


def _kinds(schema: dict[str, Any]) -> set[Any]:
    kinds = schema.get("type")
    return set(kinds) if isinstance(kinds, list) else {kinds}


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> float | None:
    """The tighter of a schema's two bounds on one side (a draft-4 boolean
    `exclusiveMaximum` is no bound); None when it has neither."""
    found = [
        v
        for v in (schema.get(inclusive), schema.get(exclusive))
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if not found:
        return None
    return max(found) if inclusive == "minimum" else min(found)


INT_RANGE = (-(2**63), 2**64)  # what llguidance reads as a JSON integer (i64 or u64)


def wide_integer(schema: Any, key: str = "schema") -> tuple[str, int] | None:
    """The first integer in `schema` that llguidance cannot read (a value of `enum` or
    `const`, say: its Python binding failed with "Value is not JSON serializable"), with the
    keyword it is under."""
    if isinstance(schema, dict):
        items: Any = schema.items()
        if "integer" in _kinds(schema):  # a bound past i64 left by bounded_numbers (both past)
            for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
                v = schema.get(k)
                if isinstance(v, float) and not -(2.0**63) <= v < 2.0**63:
                    return k, int(v)
    elif isinstance(schema, list):
        items = ((key, v) for v in schema)
    else:
        low, high = INT_RANGE
        wide = isinstance(schema, int) and not low <= schema < high
        return (key, schema) if wide else None
    for k, v in items:
        if (found := wide_integer(v, k)) is not None:
            return found
    return None


def repeatable_min_properties(schema: Any) -> str | None:
    """Why a strict schema cannot be honoured, when one of its objects asks for more keys
    (`minProperties`) than it names in `required` plus one. The keys beyond `properties`
    (those `additionalProperties` or `patternProperties` allow) are not made unique by
    llguidance (docs/json_schema.md, "Departures"): a model may repeat one, `{"x_a": 1,
    "x_a": 2}`, which a parser reads as one key, and the object then has fewer than asked."""
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
        if not isinstance(node, dict):
            continue
        todo.extend(v for k, v in node.items() if k not in LITERAL_KEYS)
        least = node.get("minProperties")
        required = node.get("required")
        named = len(set(required)) if isinstance(required, list) else 0
        extra = node.get("additionalProperties", True) is not False or node.get("patternProperties")
        if isinstance(least, int) and extra and least > named + 1:
            return (
                f"`minProperties: {least}` cannot be guaranteed under `strict`: keys that "
                "`additionalProperties` or `patternProperties` allow are not made unique, so "
                "an answer may repeat one, which counts once; name the keys in `properties` "
                "and `required`, or send the schema without `strict`"
            )
    return None


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
            if self._too_big(grammar):
                raise BadRequest(
                    f"the {what} is too large: its grammar is over the constraint compiler's "
                    f"size limit ({_reason(error)}); a JSON schema compiles with up to about "
                    "800 properties in all",
                    param=c.param,
                )
            raise BadRequest(f"invalid {what}: {error}", param=c.param)
        self._compiled[c] = grammar
        if len(self._compiled) > GRAMMAR_CACHE:
            self._compiled.popitem(last=False)
        return grammar

    def _too_big(self, grammar: str) -> bool:
        """Whether a grammar that failed validation passes with more room for its lexer: then
        only its size failed. On the error path alone; the larger limit bounds its time too
        (~1 s for a schema of 3000 properties)."""
        from llguidance import LLMatcher, LLParserLimits

        roomy = LLParserLimits(initial_lexer_fuel=ROOMY_LEXER_FUEL)
        return not LLMatcher.validate_grammar(grammar, self.tokenizer, limits=roomy)

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
