"""Structured output and tool calls on the bundled models, through the real server and the
official `openai` client: JSON schemas whose answers always validate (one at a time and eight
different ones in one batch, streaming and not, on both models), the `parse` helper with a
pydantic model, regex and Lark grammars, and tool calls in OpenAI's shapes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel, Field

from json_schemas import SCHEMAS
from json_schemas import WEATHER as FUNCTION
from servers import GEMMA, SMOL

ASK = "Answer with an example that fits the requested format."


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def _ask(
    client: openai.OpenAI, model: str, schema: dict[str, Any], stream: bool
) -> tuple[str, str]:
    """The answer's text and finish reason."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": ASK}],
        "temperature": 0,
        "max_tokens": 300,
        "response_format": _format(schema),
    }
    if not stream:
        done = client.chat.completions.create(**body)
        return done.choices[0].message.content or "", done.choices[0].finish_reason
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(**body, stream=True):
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    return final.choices[0].message.content or "", final.choices[0].finish_reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_every_schema_of_the_suite_holds_eight_at_a_time(
    client: openai.OpenAI, model: str, stream: bool
) -> None:
    """Eight requests with different schemas share the model's batch; each answer is
    complete and valid JSON for its own schema."""
    assert len(SCHEMAS) >= 50
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: _ask(client, model, s, stream), SCHEMAS))
    for schema, (text, finish) in zip(SCHEMAS, answers, strict=True):
        assert finish == "stop", (schema, text)
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_schemas_alone_streamed_and_not_agree(client: openai.OpenAI, model: str) -> None:
    for schema in SCHEMAS[::9]:
        whole, finish = _ask(client, model, schema, stream=False)
        assert finish == "stop"
        jsonschema.validate(json.loads(whole), schema)
        assert _ask(client, model, schema, stream=True) == (whole, "stop")


def _whitespace_outside_strings(text: str) -> list[str]:
    """The whitespace between a JSON text's tokens, each with the character before it."""
    found, in_string, escaped = [], False, False
    for i, ch in enumerate(text):
        if in_string:
            in_string, escaped = (escaped or ch != '"'), (not escaped and ch == "\\")
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            found.append(text[i - 1 : i + 1])
    return found


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_json_has_fixed_separators_and_no_other_whitespace(
    client: openai.OpenAI, model: str
) -> None:
    """As the README says: `", "` and `": "` (json.dumps' separators), no newline, indent or
    other space the model could choose (and loop on)."""
    for schema in SCHEMAS[::5]:
        text, _ = _ask(client, model, schema, stream=False)
        assert set(_whitespace_outside_strings(text)) <= {", ", ": "}, text


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: float = Field(ge=0, le=40)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    done = client.chat.completions.parse(
        model=SMOL,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=City,
        temperature=0,
        max_tokens=200,
    )
    parsed = done.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name


def test_json_object_mode(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Give me a JSON object about a dog."}],
        response_format={"type": "json_object"},
        temperature=0.7,
        seed=3,
        max_tokens=200,
    )
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(done.choices[0].message.content or ""), dict)
    else:  # a free-form object may run on; what there is must still be the start of one
        assert (done.choices[0].message.content or "").startswith("{")


def test_max_tokens_inside_the_json_ends_with_length(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": ASK}],
        response_format=_format(SCHEMAS[0]),
        max_tokens=3,
    )
    assert done.choices[0].finish_reason == "length"
    assert (done.choices[0].message.content or "").startswith("{")


def test_completions_take_a_schema_a_regex_and_a_grammar(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    for model in (SMOL, GEMMA):
        done = client.completions.create(
            model=model,
            prompt="A number:",
            max_tokens=40,
            temperature=0,
            extra_body={"json_schema": schema},
        )
        jsonschema.validate(json.loads(done.choices[0].text), schema)
        done = client.completions.create(
            model=model,
            prompt="Today's date:",
            max_tokens=40,
            temperature=0.9,
            extra_body={"regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"},
        )
        text = done.choices[0].text
        assert len(text) == 10 and text[4] == "-" and text[7] == "-", text
    lark = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"'
    done = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=20,
        extra_body={"grammar": lark},
    )
    assert done.choices[0].message.content in ("The answer is yes.", "The answer is no.")


def test_bad_schemas_are_400s_and_lenient_ones_are_read(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": ASK}]
    for fmt, param in [
        (_format({"type": "nope"}), "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format"),
        (_format({"type": "string", "format": "no-such-format"}), "response_format"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=SMOL, messages=ask, response_format=fmt)  # type: ignore[arg-type]
        assert info.value.param == param, info.value
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SMOL, messages=ask, extra_body={"regex": "(open"})
    assert info.value.param == "regex"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=SMOL,
            messages=ask,
            response_format={"type": "json_object"},
            extra_body={"regex": "a"},
        )
    assert "one answer shape" in info.value.message
    # no finite JSON satisfies it: the parser gave up at the first token, a 500 with a page
    # of its state; now a 400 on the field, in one line, streamed or not
    endless = {
        "$defs": {
            "n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}
        },
        "$ref": "#/$defs/n",
    }
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=SMOL,
                messages=ask,
                response_format=_format(endless),
                stream=stream,  # type: ignore[arg-type]
            )
        assert info.value.param == "response_format", info.value
        assert "cannot be followed" in info.value.message and "\n" not in info.value.message
    lenient = {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "no-such-format", "maxLength": 8}},
        "required": ["id"],
        "additionalProperties": False,
    }
    done = client.chat.completions.create(
        model=SMOL,
        messages=ask,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": lenient}},
    )
    jsonschema.validate(json.loads(done.choices[0].message.content or ""), lenient)


# -- tool calls ---------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": FUNCTION}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris, and what time is it there?"}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}  # type: ignore[index]


def _calls(done: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for call in done.choices[0].message.tool_calls or []:
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, PARAMS[call.function.name])
        out.append((call.function.name, arguments))
    return out


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_required_gives_exactly_one_valid_call(client: openai.OpenAI, model: str) -> None:
    """SmolLM2 (instruction-tuned) stops after one call; Gemma 270M (a base model) would
    go on calling while `parallel_tool_calls` lets it, so it is asked for one."""
    done = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=200,
        **({"parallel_tool_calls": False} if model == GEMMA else {}),
    )
    assert done.choices[0].finish_reason == "tool_calls"
    assert done.choices[0].message.content is None
    ((name, _),) = _calls(done)
    assert name == "get_weather"


def test_a_call_cut_by_max_tokens_leaks_no_wrapper_into_content(client: openai.OpenAI) -> None:
    """Cut before the answer says it calls: no content (it was '{"tool' as the message's
    text, streamed or not; found from outside), finish_reason `length`."""
    ask = {"model": SMOL, "messages": QUESTION, "tools": [WEATHER], "tool_choice": "required"}
    for max_tokens in (2, 4):
        done = client.chat.completions.create(**ask, max_tokens=max_tokens, temperature=0)  # type: ignore[call-overload]
        assert done.choices[0].finish_reason == "length"
        assert not done.choices[0].message.content, done
        chunks = client.chat.completions.create(**ask, max_tokens=max_tokens, stream=True)  # type: ignore[call-overload]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "", text


def test_a_streamed_call_has_no_content_as_a_whole_one(client: openai.OpenAI) -> None:
    """The openai client's stream helper assembled `content: ""` (the first delta's) where
    the same request unstreamed gave None (found from outside)."""
    ask = {"model": SMOL, "messages": QUESTION, "tools": [WEATHER], "tool_choice": "required"}
    whole = client.chat.completions.create(**ask, max_tokens=200, temperature=0)  # type: ignore[call-overload]
    with client.chat.completions.stream(**ask, max_tokens=200, temperature=0) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_completion()
    assert whole.choices[0].message.content is None
    assert streamed.choices[0].message.content is None
    assert streamed.choices[0].message.tool_calls and whole.choices[0].message.tool_calls
    assert [c.function.name for c in streamed.choices[0].message.tool_calls] == [
        c.function.name for c in whole.choices[0].message.tool_calls
    ]


def test_none_gives_text_and_no_call(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=30,
    )
    assert not done.choices[0].message.tool_calls
    assert done.choices[0].message.content and done.choices[0].finish_reason in ("stop", "length")


CURRENCY = {
    "type": "function",
    "function": {
        "name": "convert_currency",
        "description": "Convert an amount between currencies. Only use for currency conversion.",
        "parameters": {
            "type": "object",
            "properties": {"amount": {"type": "number"}, "from": {"type": "string"}},
            "required": ["amount", "from"],
            "additionalProperties": False,
        },
    },
}


def test_auto_lets_the_model_reply_in_text_or_call(client: openai.OpenAI) -> None:
    """`auto` is a choice the model makes: with only a call shown in the instruction, SmolLM2
    called a tool for every question, a haiku's included (found from outside: an agent loop
    never ended). Greedy, so each answer is the model's likeliest."""

    def ask(question: str) -> Any:
        return client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": question}],
            tools=[CURRENCY, WEATHER],  # type: ignore[list-item]
            tool_choice="auto",
            temperature=0,
            max_tokens=48,
        ).choices[0]

    haiku = ask("Write a haiku about the sea.")
    assert not haiku.message.tool_calls and haiku.message.content
    assert haiku.finish_reason == "stop"
    convert = ask("Convert 100 US dollars to euros.")
    assert [c.function.name for c in convert.message.tool_calls or []] == ["convert_currency"]
    answered = client.chat.completions.create(  # a tool's result: answered, not called again
        model=SMOL,
        messages=CALLED_BEFORE,  # type: ignore[arg-type]
        tools=[LOOSE_WEATHER],  # type: ignore[list-item]
        tool_choice="auto",
        temperature=0,
        max_tokens=48,
    ).choices[0]
    assert not answered.message.tool_calls and answered.message.content


def test_a_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=200,
    )
    calls = _calls(done)
    assert calls and all(name == "get_time" for name, _ in calls)


def test_parallel_tool_calls_false_means_one_call(client: openai.OpenAI) -> None:
    for seed in range(3):
        done = client.chat.completions.create(
            model=SMOL,
            messages=QUESTION,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        assert len(_calls(done)) == 1
    done = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=300,
    )
    assert len(_calls(done)) >= 1  # parallel allowed: one call or more, each valid


def test_streamed_calls_reassemble_to_the_whole_answer(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {
        "model": SMOL,
        "messages": QUESTION,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 300,
    }
    whole = client.chat.completions.create(**body)
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(**body, stream=True):
        state.handle_chunk(chunk)
    streamed = state.get_final_completion()
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason == "tool_calls"
    assert _calls(streamed) == _calls(whole)
    ids = [c.id for c in streamed.choices[0].message.tool_calls or []]
    assert len(set(ids)) == len(ids)


def test_a_round_trip_call_result_answer(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=SMOL,
        messages=ask,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=200,
    )
    (call,) = first.choices[0].message.tool_calls or []
    history = [
        *ask,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and 21 degrees."},
    ]
    final = client.chat.completions.create(
        model=SMOL, messages=history, tools=[WEATHER], temperature=0, max_tokens=60
    )
    message = final.choices[0].message
    if final.choices[0].finish_reason == "tool_calls":  # `auto` may call again; validly
        assert _calls(final)
    else:
        assert message.content and not message.tool_calls


# A tool whose arguments may hold more than its properties (no `additionalProperties: false`,
# not strict), as clients commonly declare them.
LOOSE_WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALLED_BEFORE: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
]


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_a_call_after_a_result_has_only_the_declared_arguments(
    client: openai.OpenAI, model: str
) -> None:
    """Both models, shown an earlier call with its id inside the call object, copied that
    `"id": "call_1"` into their next call's arguments (the loose schema let them)."""
    done = client.chat.completions.create(
        model=model,
        messages=CALLED_BEFORE,  # type: ignore[arg-type]
        tools=[LOOSE_WEATHER],  # type: ignore[list-item]
        tool_choice="required",  # under `auto` SmolLM2 now answers the result in text
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    (call,) = done.choices[0].message.tool_calls or []
    assert set(json.loads(call.function.arguments)) == {"city"}, call.function.arguments


def test_bad_tool_requests_are_400s(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=SMOL, messages=QUESTION, **extra)
        assert info.value.param is not None and info.value.param.startswith(param), (
            extra,
            info.value,
        )


def test_schemas_the_compiler_cannot_honour_are_400s_that_say_why(client: openai.OpenAI) -> None:
    """A strict `minProperties` over keys that only `patternProperties` allow: llguidance does
    not make those keys unique, and SmolLM2 answered `{"x_int": 12, "x_int": 0}` with `stop`,
    one property to a parser. Integers past 64 bits in `enum` or `const` were a 400 in the
    binding's words ("Value is not JSON serializable"); a schema over the compiler's size
    limit, in its words ("initial lexer configuration (grammar) too big")."""
    ask = [{"role": "user", "content": ASK}]
    pairs = {
        "type": "object",
        "patternProperties": {"^x_[a-z]+$": {"type": "integer"}},
        "additionalProperties": False,
        "minProperties": 2,
        "maxProperties": 2,
    }
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}
    for schema, words in [
        (pairs, "`minProperties: 2` cannot be guaranteed"),
        ({"enum": [1, 2**70]}, "`enum` holds 1180591620717411303424"),
        ({"const": 2**70}, "`const` holds 1180591620717411303424"),
        (wide, "too large"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=SMOL, messages=ask, max_tokens=5, response_format=_format(schema)
            )  # type: ignore[call-overload]
        assert info.value.param == "response_format", info.value
        assert words in info.value.message, info.value.message
    # without strict it is read, leniently, as before
    done = client.chat.completions.create(
        model=SMOL,
        messages=ask,
        max_tokens=5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": pairs}},
    )
    assert (done.choices[0].message.content or "").startswith("{")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 0, "maximum": 2**64},
        {"type": "integer", "minimum": -1e30, "maximum": 1e30},
        {"type": "number", "exclusiveMinimum": -(2**70)},
    ],
    ids=["max-2^64", "int-1e30", "number-2^70"],
)
def test_bounds_past_64_bits_are_read(client: openai.OpenAI, schema: dict[str, Any]) -> None:
    """Valid schemas that were 400s in the compiler's words ("Value is not JSON serializable:
    18446744073709551616", "Failed to generate regex for integer range"): bounds past the
    15 digits an answer may have anyway are read as those digits."""
    text, finish = _ask(client, SMOL, schema, stream=False)
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_json_object_with_a_schema_follows_it(client: openai.OpenAI) -> None:
    """llama-server's `{"type": "json_object", "schema": ...}` constrains to the schema; it
    was ignored here (any object)."""
    schema = {
        "type": "object",
        "properties": {"zz_count": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["zz_count"],
        "additionalProperties": False,
    }
    done = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Give me a contact record as JSON."}],
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-unknown-key]
    )
    jsonschema.validate(json.loads(done.choices[0].message.content or ""), schema)


def test_a_function_without_parameters_is_called_with_none(client: openai.OpenAI) -> None:
    """OpenAI reads a function without `parameters` as one taking none; it was free-form, and
    SmolLM2 invented arguments. Parameters that are no object are a 400, as OpenAI's (a
    `"type": "string"` schema gave a JSON string as `arguments`)."""
    done = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=[{"type": "function", "function": {"name": "get_time"}}],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    )
    (call,) = done.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {}, call.function.arguments
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=SMOL,
            messages=QUESTION,  # type: ignore[arg-type]
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ],
            tool_choice="required",
        )
    assert info.value.param == "tools[0].function.parameters", info.value
