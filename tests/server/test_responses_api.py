"""OpenAI's Responses API (`POST /v1/responses`) on the real server and model, driven by the
official `openai` client (`client.responses`), every answer and event checked against OpenAI's
published schema. It was a 404 saying to use /v1/chat/completions, so the clients that use it
by default (openai-agents, the AI SDK's `createOpenAI`) failed here."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from openai_schema import validate
from servers import SMOL, Server

QUESTION = "What is the capital of France?"
INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _post(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/responses", json=body, timeout=120)


def test_plain_answer(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=SMOL, input=QUESTION, instructions=INSTRUCTIONS, temperature=0, max_output_tokens=16
    )
    resp = raw.parse()
    assert "Paris" in resp.output_text
    assert resp.status == "completed" and resp.incomplete_details is None
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.model == SMOL and resp.instructions == INSTRUCTIONS
    [item] = resp.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert resp.usage is not None and resp.usage.input_tokens > 5
    assert resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert raw.headers["x-llm-router-model"] == SMOL
    validate("Response", raw.http_response.json())


def test_input_items_and_default_model(server: Server) -> None:
    """A message list with content parts, and no `model`: the server's default is not set
    here, so the 400 names `model` as chat's does."""
    body: dict[str, Any] = {
        "model": SMOL,
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": INSTRUCTIONS}]},
            {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        ],
        "temperature": 0,
        "max_output_tokens": 16,
        "metadata": {"who": "test"},
        "store": False,
        "user": "u1",
        "some_unknown_field": 1,
    }
    r = _post(server, body)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["output"][0]["content"][0]["text"]
    assert r.json()["metadata"] == {"who": "test"}
    validate("Response", r.json())
    del body["model"]
    r = _post(server, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_max_output_tokens_cut_is_incomplete(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=SMOL, input=QUESTION, temperature=0, max_output_tokens=2
    )
    resp = raw.parse()
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 2
    validate("Response", raw.http_response.json())


def test_stream_deltas_join_to_the_final_text(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": SMOL,
        "input": QUESTION,
        "instructions": INSTRUCTIONS,
        "temperature": 0,
        "max_output_tokens": 24,
    }
    whole = client.responses.create(**kwargs).output_text
    events = list(client.responses.create(**kwargs, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == whole and final.usage is not None
    assert final.usage.output_tokens > 0
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kinds.count(kind) == 1, kind
    for event in events:
        validate("ResponseStreamEvent", event.model_dump(exclude_unset=True))


def test_stream_helper_and_wire_format(client: openai.OpenAI, server: Server) -> None:
    with client.responses.stream(
        model=SMOL, input=QUESTION, temperature=0, max_output_tokens=16
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and final.output_text == text
    body = {"model": SMOL, "input": QUESTION, "max_output_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in lines[-1]  # OpenAI's Responses stream has none
    assert json.loads(lines[-1][6:])["type"] in ("response.completed", "response.incomplete")


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    raw = client.responses.with_raw_response.create(
        model=SMOL,
        input=asked,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=64,
    )
    validate("Response", raw.http_response.json())
    resp = raw.parse()
    calls = [item for item in resp.output if item.type == "function_call"]
    assert calls and resp.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments), dict)
    assert resp.tools[0].name == "get_weather"  # type: ignore[union-attr]
    answer = client.responses.create(
        model=SMOL,
        input=[
            *asked,
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        temperature=0,
        max_output_tokens=32,
    )
    assert answer.status in ("completed", "incomplete") and answer.output_text


def test_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=SMOL,
            input="What is the weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=64,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and isinstance(json.loads(done[0].arguments), dict)
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "function_call" and item.name == "get_weather"
    assert kinds[-1] == "response.completed"
    for event in events:
        validate("ResponseStreamEvent", event.model_dump(exclude_unset=True))


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    resp = client.responses.create(
        model=SMOL,
        input=QUESTION,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        temperature=0,
        max_output_tokens=32,
    )
    assert resp.status == "completed"
    answer = json.loads(resp.output_text)
    assert set(answer) == {"capital"} and isinstance(answer["capital"], str)


def test_errors(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as found:
        client.responses.create(model="no-such-model", input=QUESTION)
    validate("ErrorResponse", found.value.response.json())
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model=SMOL, input=QUESTION, previous_response_id="resp_123")
    assert stored.value.param == "previous_response_id"  # type: ignore[attr-defined]
    assert "not supported" in stored.value.message
    # a conversation or a stored prompt named: their history or instructions would be lost
    for field, value in (("conversation", "conv_123"), ("prompt", {"id": "pmpt_123"})):
        with pytest.raises(openai.BadRequestError) as stored:
            client.responses.create(model=SMOL, input=QUESTION, **{field: value})  # type: ignore[call-overload]
        assert stored.value.param == field  # type: ignore[attr-defined]
        assert "not stored here" in stored.value.message
    with pytest.raises(openai.BadRequestError) as several:  # it was one answer, silently
        client.responses.create(model=SMOL, input=QUESTION, extra_body={"n": 2})
    assert several.value.param == "n"  # type: ignore[attr-defined]
    null = client.responses.create(
        model=SMOL, input=QUESTION, max_output_tokens=4, extra_body={"conversation": None}
    )
    assert null.status in ("completed", "incomplete")
    bad = {
        "tools": [{"type": "web_search"}],
        "max_output_tokens": 0,
        "temperature": 3,
        "input": [{"type": "input_image", "image_url": "x"}],
        "text": {"format": {"type": "xml"}},
    }
    named = {
        "tools": "tools[0].type",
        "max_output_tokens": "max_output_tokens",
        "temperature": "temperature",
        "input": "input[0].type",
        "text": "text.format.type",
    }
    for field, value in bad.items():
        r = _post(server, {"model": SMOL, "input": QUESTION, field: value})
        assert r.status_code == 400, (field, r.text)
        assert r.json()["error"]["param"] == named[field], r.text
    long_input = "word " * 20000
    r = _post(server, {"model": SMOL, "input": long_input})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_item_reference_names_an_earlier_output_item(client: openai.OpenAI, server: Server) -> None:
    """The AI SDK's default OpenAI provider (`createOpenAI(...)(model)`, `store` true unless
    told otherwise) sends an earlier assistant message back as `{"type": "item_reference",
    "id": "msg_..."}`: that was a 400 here, so its conversations failed at the second turn.
    The output items are kept, for the caller that got them, unless asked with `store: false`."""
    asked = {"role": "user", "content": QUESTION}
    then = {"role": "user", "content": "And of Germany?"}

    def ask(item: dict[str, Any], c: openai.OpenAI = client) -> Any:
        return c.responses.create(
            model=SMOL, input=[asked, item, then], temperature=0, max_output_tokens=16
        )  # type: ignore[arg-type]

    whole = client.responses.create(model=SMOL, input=QUESTION, max_output_tokens=16)
    events = list(
        client.responses.create(model=SMOL, input=QUESTION, max_output_tokens=16, stream=True)
    )
    streamed = events[-1].response  # type: ignore[union-attr]
    for first in (whole, streamed):
        [message] = first.output
        inline = ask({"role": "assistant", "content": first.output_text})
        by_reference = ask({"type": "item_reference", "id": message.id})
        assert by_reference.output_text
        assert by_reference.usage.input_tokens == inline.usage.input_tokens  # the same prompt

    call = client.responses.create(
        model=SMOL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=64,
    ).output[0]
    assert call.type == "function_call"
    answer = client.responses.create(
        model=SMOL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"},
        ],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=16,
    )
    assert answer.output_text

    unkept = client.responses.create(model=SMOL, input=QUESTION, max_output_tokens=4, store=False)
    other = openai.OpenAI(base_url=server.url + "/v1", api_key="someone-else", max_retries=0)
    for c, item_id in (
        (client, unkept.output[0].id),
        (client, "msg_0123456789abcdef01234567"),
        (other, whole.output[0].id),  # another caller's item is not found
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            ask({"type": "item_reference", "id": item_id}, c)
        assert refused.value.param == "input[1].id"  # type: ignore[attr-defined]
        assert item_id in refused.value.message
    other.close()


def test_errors_name_the_responses_fields(server: Server) -> None:
    """A value refused by the chat path this request is translated to is named as the
    Responses field it came from: `param` was `messages`, `response_format` or
    `tools[0].function.parameters`, fields a Responses client never sent."""
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{**tool, "name": None}]}, "tools.[0].name"),
        ({"tools": [{**tool, "parameters": {"type": "string"}}]}, "tools[0].parameters"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wat"}}}},
            "text.format",
        ),
        ({"input": "word " * 3000}, "input"),  # over the context
    ]
    for fields, param in cases:
        for stream in (False, True):
            body = {"model": SMOL, "input": QUESTION, "max_output_tokens": 4, **fields}
            r = _post(server, {**body, "stream": stream})
            assert r.status_code == 400, (fields, stream, r.text)
            error = r.json()["error"]
            assert error["param"] == param, (fields, stream, error)
            assert ".function." not in error["message"]
            assert "response_format" not in error["message"]
            validate("ErrorResponse", r.json())
