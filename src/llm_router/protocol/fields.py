"""What the fields of a request may hold, shared by the requests of every endpoint: the names
OpenAI's API defines (what alone goes to a remote target), the bounds (the engines' C ints, what
one request may ask), and the field types with their own checks and schema (`keep_alive`,
`logit_bias`, a null that means the default)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from ..errors import BadRequest
from ..units import parse_duration
from .llama_sampling import LLAMA_SAMPLING_FIELDS
from .numbers import Float, Int

__all__ = [
    "EXAMPLE_MODEL",
    "MAX_BIASED",
    "MAX_BIAS_TEXT",
    "MAX_MODEL_NAME",
    "MAX_N",
    "MAX_PROMPTS",
    "MAX_STOPS",
    "MAX_TOKENS",
    "MAX_TOKEN_ID",
    "MAX_TOP_LOGPROBS",
    "OPENAI_CHAT_FIELDS",
    "OPENAI_COMPLETION_FIELDS",
    "OPENAI_EMBEDDING_FIELDS",
    "SAMPLING_EXTENSIONS",
    "SEED_MAX",
    "SEED_MIN",
    "TEMPLATE_FIELDS",
    "TOKEN_ID_KEY",
    "KeepAlive",
    "LogitBias",
    "null_is",
    "nullable",
    "nullable_or_no_limit",
    "one_answer",
]

# Request fields OpenAI's API defines (tests/data/openai_schemas.json, vendored from its
# openapi.yaml; a test keeps these equal), and the llama.cpp sampling fields this API models:
# the only fields of a request passed on to a remote target (plus `forward_fields` from the
# configuration), so that nothing unknown reaches a paid upstream.
OPENAI_CHAT_FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
OPENAI_COMPLETION_FIELDS = frozenset(
    {
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "model",
        "n",
        "presence_penalty",
        "prompt",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    }
)
# llama-server's (and vLLM's) ways to render a chat, passed on to a remote target too
TEMPLATE_FIELDS = frozenset({"add_generation_prompt", "chat_template_kwargs"})
OPENAI_EMBEDDING_FIELDS = frozenset({"dimensions", "encoding_format", "input", "model", "user"})
SAMPLING_EXTENSIONS = frozenset({"top_k", "min_p", "repeat_penalty"}) | LLAMA_SAMPLING_FIELDS

MAX_MODEL_NAME = 256
EXAMPLE_MODEL = "SmolLM2-135M-Instruct.Q4_1"  # the bundled chat model, for the API document
MAX_TOKENS = 2**31 - 1  # the engines' token counts are C ints
# any 64-bit seed, signed (OpenAI's int64) or not; the samplers take 32 bits of it
# (SamplingParams.seed32)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MAX_TOKEN_ID = 2**31 - 1  # token ids are C ints (an engine checks its own vocabulary)
MAX_N = 128  # the schema's bound on `n`; the configuration's `max_n` (default 8) is lower
MAX_PROMPTS = 128  # prompts in one completion request
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on `top_logprobs`
MAX_BIASED = 1024  # tokens one request's `logit_bias` may name
MAX_BIAS_TEXT = 256  # characters of a `logit_bias` text key (llama-server's: its tokens)
MAX_STOPS = 64  # stop strings one request may give
# an object's key llama-server reads as a token id (strtol, base 10, the whole key): C's
# white space first, a sign, ASCII digits; any other key is text (its tokens)
TOKEN_ID_KEY = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+", re.ASCII)


def _duration(value: str | float | None) -> str | float | None:
    """A `keep_alive` (seconds, "5m", -1 or 0) is checked with the rest of the body: it was
    checked as a model was leased, which a cached answer never is, so a hit took anything."""
    if value is not None:
        parse_duration(value)  # ValueError: a 400 naming the field
    return value


KeepAlive = Annotated[str | Float | None, AfterValidator(_duration)]


def _never(value: object) -> object:
    """llama-server's `false` bias (never this token): -100, OpenAI's ban."""
    return -100.0 if value is False else value


# `logit_bias`: OpenAI's {"token id": bias}, and llama-server's other forms: a text key (its
# tokens), [[id or text, bias], ...], and `false` for a bias
Bias = Annotated[
    Float,
    BeforeValidator(_never),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "boolean", "enum": [False]}]}),
]
BiasKey = Annotated[str, Field(max_length=MAX_BIAS_TEXT)]
LogitBias = (
    Annotated[dict[BiasKey, Bias], Field(max_length=MAX_BIASED)]
    | Annotated[list[tuple[Int | BiasKey, Bias]], Field(max_length=MAX_BIASED)]
)


def null_is(default: object) -> BeforeValidator:
    """A field OpenAI's schema makes nullable, where null means its default (`"n": null`);
    its Field takes `json_schema_extra=nullable`, so the API document says so too."""
    return BeforeValidator(lambda value: default if value is None else value)


def nullable(schema: dict[str, Any]) -> None:
    """A field's JSON schema, null allowed besides (see `null_is`)."""
    kept = ("title", "description", "default", "examples")
    inner = {k: schema.pop(k) for k in [k for k in schema if k not in kept]}
    schema["anyOf"] = [inner, {"type": "null"}]


def nullable_or_no_limit(schema: dict[str, Any]) -> None:
    """`nullable`, and -1 (no limit, as llama-server takes it) besides the token counts: a
    schema whose minimum was 0 said a -1 it takes was invalid."""
    nullable(schema)
    schema["anyOf"][0]["minimum"] = -1


def one_answer(extra: dict[str, Any]) -> None:
    """An API served as a translation onto chat (Responses, Messages) answers one output:
    chat's `n` asking for more, passed along with the other fields, gave one answer where
    several were asked. A 400 naming `n` instead."""
    if extra.get("n") not in (None, 1):
        raise BadRequest(
            "`n` is not supported here: this API answers one output; "
            "/v1/chat/completions answers several (`n`)",
            param="n",
        )
