"""The constraint layer alone, without running a model: llguidance matchers on SmolLM2's vocabulary
(read from the GGUF with no weights). Random walks through the allowed tokens, seeded, must
always end in text that the schema accepts: integer ranges, item counts, property rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp as lc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_router.engines.constraints import Grammars, bounded_numbers
from llm_router.errors import BadRequest
from llm_router.types import Constraint


@pytest.fixture(scope="module")
def vocab(smollm2_gguf: Path) -> Iterator[tuple[Grammars, set[int]]]:
    from llm_router.engines.llamacpp_load import lltokenizer

    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(smollm2_gguf).encode(), params)
    v = lc.llama_model_get_vocab(model)
    n = lc.llama_vocab_n_tokens(v)
    eog = [t for t in range(n) if lc.llama_vocab_is_eog(v, t)]
    yield Grammars(lambda: lltokenizer(v, eog)), set(eog)
    lc.llama_model_free(model)


def walk(grammars: Grammars, eog: set[int], c: Constraint, seed: int) -> str:
    """Random allowed tokens (random logits, masked, argmax) until the constraint is done."""
    rng = np.random.default_rng(seed)
    m = grammars.matcher(c)
    tokens: list[int] = []
    for _ in range(3000):
        m.prepare()
        logits = rng.standard_normal(grammars.tokenizer.vocab_size).astype(np.float32)
        m.apply(logits)
        token = int(logits.argmax())
        assert m.allows(token)
        if token in eog:
            break
        m.accept(token)
        tokens.append(token)
        if m.done:
            break
    else:
        pytest.fail("the walk did not end")
    return str(grammars.tokenizer.decode_str(tokens))


RULES: list[dict[str, Any]] = [
    {"type": "integer", "minimum": -7, "maximum": 12},
    {"type": "integer", "minimum": 100, "maximum": 105},
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4},
    {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 3, "maxItems": 3},
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"const": "x"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"k": {"type": "string", "maxLength": 5}},
        "required": ["k"],
        "additionalProperties": False,
    },
    {"type": "string", "pattern": "^[a-c]{2,4}$"},
    {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 2}]},
    {"type": "number"},  # bounded in length by the compiler: the walk ends
    {"type": "array", "items": {"type": "number", "minimum": 0}, "maxItems": 2},
]


@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(RULES), seed=st.integers(0, 2**32 - 1))
def test_every_walk_ends_in_valid_json(
    vocab: tuple[Grammars, set[int]], rule: dict[str, Any], seed: int
) -> None:
    grammars, eog = vocab
    text = walk(grammars, eog, Constraint("json", json.dumps(rule), strict=True), seed)
    jsonschema.validate(json.loads(text), rule)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_walks_match_a_regex(vocab: tuple[Grammars, set[int]], seed: int) -> None:
    grammars, eog = vocab
    text = walk(grammars, eog, Constraint("regex", r"(yes|no) [0-9]{2}", strict=True), seed)
    assert text[:-3] in ("yes", "no") and text[-3] == " " and text[-2:].isdigit()


def test_lark_grammar(vocab: tuple[Grammars, set[int]]) -> None:
    grammars, eog = vocab
    lark = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]/'
    for seed in range(5):
        text = walk(grammars, eog, Constraint("lark", lark, strict=True), seed)
        assert text.startswith("(") and text.endswith(")")
        assert all(part.isdigit() and len(part) == 1 for part in text[1:-1].split("+"))


def test_a_gbnf_grammar_is_taken_as_llama_server_takes_it(
    vocab: tuple[Grammars, set[int]],
) -> None:
    """llama-server's `grammar` is GBNF; it was a Lark parse error here (found from outside)."""
    grammars, eog = vocab
    gbnf = 'root ::= answer "!"\nanswer ::= "yes" | "no"'
    for seed in range(5):
        assert walk(grammars, eog, Constraint("lark", gbnf, strict=True), seed) in ("yes!", "no!")


def test_mask_and_allows_agree(vocab: tuple[Grammars, set[int]]) -> None:
    grammars, _ = vocab
    m = grammars.matcher(Constraint("json", '{"type": "boolean"}', strict=True))
    m.prepare()
    logits = np.zeros(grammars.tokenizer.vocab_size, dtype=np.float32)
    m.apply(logits)
    allowed = {int(t) for t in np.flatnonzero(np.isfinite(logits))}
    assert allowed and len(allowed) < 50  # "true" and "false" and their prefixes
    assert all(m.allows(t) for t in allowed)
    assert not any(m.allows(t) for t in range(grammars.tokenizer.vocab_size) if t not in allowed)


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (Constraint("json", '{"type": "nope"}', strict=True), "invalid JSON schema"),
        (Constraint("json", "[1, 2", strict=True), "not valid JSON"),
        (Constraint("regex", "(unclosed", strict=True, param="regex"), "invalid regex"),
        (
            Constraint("lark", "start: missing_rule", strict=True, param="grammar"),
            "invalid grammar",
        ),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(
    vocab: tuple[Grammars, set[int]], constraint: Constraint, message: str
) -> None:
    grammars, _ = vocab
    with pytest.raises(BadRequest, match=message) as info:
        grammars.matcher(constraint)
    assert info.value.param == constraint.param


def test_lenient_unless_strict(vocab: tuple[Grammars, set[int]]) -> None:
    """A schema with a keyword llguidance does not implement (an unknown string format):
    refused when strict, read leniently otherwise (as OpenAI's non-strict mode accepts it)."""
    grammars, eog = vocab
    schema = {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "no-such-format", "maxLength": 8}},
        "required": ["id"],
        "additionalProperties": False,
    }
    with pytest.raises(BadRequest, match="no-such-format"):
        grammars.matcher(Constraint("json", json.dumps(schema), strict=True))
    for seed in range(3):
        text = walk(grammars, eog, Constraint("json", json.dumps(schema), strict=False), seed)
        jsonschema.validate(json.loads(text), schema)


def test_numbers_are_bounded_in_length_but_values_are_kept() -> None:
    schema = {
        "type": "object",
        "properties": {"x": {"type": ["number", "null"]}, "k": {"const": {"type": "number"}}},
        "$defs": {"n": {"type": "integer", "exclusiveMaximum": 5}},
    }
    out = bounded_numbers(schema)
    assert out["properties"]["x"] == {
        "type": ["number", "null"],
        "minimum": -1e15,
        "maximum": 1e15,
        "multipleOf": 1e-8,
    }
    assert out["properties"]["k"] == {"const": {"type": "number"}}  # a value, left alone
    assert out["$defs"]["n"] == {"type": "integer", "exclusiveMaximum": 5, "minimum": -1e15}
