"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) on the real
server and model, driven by the official `anthropic` SDK, whose pydantic types parse every
answer and event. It was a 404 saying to use /v1/chat/completions, so the SDK and the tools
that speak it (Claude Code with ANTHROPIC_BASE_URL) could not use the local models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from servers import SMOL, Server, link_models

QUESTION = "What is the capital of France?"
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
WEATHER: Any = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASKED: Any = [{"role": "user", "content": QUESTION}]
GREEDY = {"temperature": 0}  # the SDK takes sampling settings in `extra_body` only


@pytest.fixture
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()


def _text(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_plain_answer_with_a_system_prompt(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model=SMOL, max_tokens=16, system=SYSTEM, messages=ASKED, extra_body=GREEDY
    )
    message = raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert "Paris" in _text(message)
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == SMOL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [b.type for b in message.content] == ["text"]
    assert message.usage.input_tokens > 5 and message.usage.output_tokens > 0
    assert raw.headers["x-llm-router-model"] == SMOL
    # the system prompt reached the model: as text blocks too, the same prompt
    blocks = claude.messages.create(
        model=SMOL,
        max_tokens=16,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
        extra_body=GREEDY,
    )
    assert blocks.usage.input_tokens == message.usage.input_tokens
    assert _text(blocks) == _text(message)
    bare = claude.messages.create(model=SMOL, max_tokens=16, messages=ASKED, extra_body=GREEDY)
    assert bare.usage.input_tokens != message.usage.input_tokens


def test_stop_reasons(claude: anthropic.Anthropic) -> None:
    cut = claude.messages.create(model=SMOL, max_tokens=2, messages=ASKED, extra_body=GREEDY)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    whole = _text(
        claude.messages.create(model=SMOL, max_tokens=24, messages=ASKED, extra_body=GREEDY)
    )
    assert "Paris" in whole
    stopped = claude.messages.create(
        model=SMOL, max_tokens=24, messages=ASKED, extra_body=GREEDY, stop_sequences=["Paris"]
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"
    assert _text(stopped) == whole[: whole.index("Paris")]


def test_stream(claude: anthropic.Anthropic, server: Server) -> None:
    kwargs: dict[str, Any] = {
        "model": SMOL,
        "max_tokens": 24,
        "system": SYSTEM,
        "messages": ASKED,
        "extra_body": GREEDY,
    }
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == _text(whole) and _text(final) == text
    assert final.stop_reason == whole.stop_reason and final.id.startswith("msg_")
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    events = list(claude.messages.create(**kwargs, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    # on the wire: each event named by an `event:` line, as Anthropic's; no [DONE]
    body = {**kwargs, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop" and [d["type"] for d in data] == names
    assert data[-2]["delta"]["stop_reason"] == "max_tokens"


def test_tool_use_round_trip(claude: anthropic.Anthropic) -> None:
    asked: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = claude.messages.create(
        model=SMOL,
        max_tokens=64,
        messages=asked,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "tool_use"
    [call] = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    assert isinstance(call.input, dict) and set(call.input) <= {"city"}
    answer = claude.messages.create(
        model=SMOL,
        max_tokens=32,
        messages=[
            *asked,
            {"role": "assistant", "content": message.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C"}
                ],
            },
        ],
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer)
    # streamed: the input arrives as input_json_delta and the SDK parses it
    with claude.messages.stream(
        model=SMOL,
        max_tokens=64,
        messages=asked,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and final.stop_reason == "tool_use"
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.name == "get_weather" and streamed.input == call.input


def test_structured_output(claude: anthropic.Anthropic) -> None:
    """`output_config.format` (a JSON schema) constrains the answer as chat's
    `response_format` does."""
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    message = claude.messages.create(
        model=SMOL,
        max_tokens=32,
        messages=ASKED,
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body=GREEDY,
    )
    assert message.stop_reason == "end_turn"
    answer = json.loads(_text(message))
    assert set(answer) == {"capital"} and isinstance(answer["capital"], str)


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    """The count is the prompt's tokens as a generation counts them: its input_tokens."""
    for tools in ([], [WEATHER]):
        counted = claude.messages.count_tokens(
            model=SMOL, system=SYSTEM, messages=ASKED, tools=tools
        )
        assert isinstance(counted, anthropic.types.MessageTokensCount)
        used = claude.messages.create(
            model=SMOL, max_tokens=1, system=SYSTEM, messages=ASKED, tools=tools
        )
        assert counted.input_tokens == used.usage.input_tokens > 5


def test_errors(claude: anthropic.Anthropic, server: Server) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=ASKED)
    assert missing.value.body == {  # Anthropic's error shape
        "type": "error",
        "error": {"type": "not_found_error", "message": missing.value.body["error"]["message"]},  # type: ignore[index]
    }
    assert "no-such-model" in missing.value.message
    r = httpx.post(server.url + "/v1/messages", json={"model": SMOL, "messages": ASKED})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as unbounded:  # the SDK's own check passed
        claude.messages.create(model=SMOL, max_tokens=anthropic.omit, messages=ASKED)
    assert "max_tokens" in unbounded.value.message
    image: Any = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError) as unreadable:
        claude.messages.create(
            model=SMOL, max_tokens=8, messages=[{"role": "user", "content": [image]}]
        )
    assert "'image' block" in unreadable.value.message
    assert "messages[0].content[0]" in unreadable.value.message
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=SMOL, max_tokens=8, messages=ASKED, extra_body={"temperature": 1.5}
        )
    assert "temperature" in bad.value.message


def test_x_api_key_with_keys_on(
    tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK sends its key as `x-api-key`, not `Authorization: Bearer`: with keys on, it
    authenticates as a bearer key does; the gateway's refusals (no key, a bad key, a model
    the key may not use, its requests per minute spent) are the SDK's error classes, with
    the gateway's words in their message."""
    master = "sk-master-anthropic-test-0123456789"
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", master)
    models = str(link_models(tmp_path / "m", smollm2_gguf))
    # its own state: a key in the session's data dir would turn auth on for later servers
    keyed = Server(tmp_path, {"models_dir": models, "data_dir": str(tmp_path / "data")})
    keyed.start()
    monkeypatch.delenv("LLM_ROUTER_MASTER_KEY")
    made: list[anthropic.Anthropic] = []

    def client(key: str | None) -> anthropic.Anthropic:
        made.append(
            anthropic.Anthropic(
                base_url=keyed.url,
                api_key=key,
                max_retries=0,
                timeout=60,
                # no key: the SDK sends none only when told that none is meant
                default_headers={"Authorization": anthropic.omit} if key is None else None,
            )
        )
        return made[-1]

    def new_key(name: str, **spec: Any) -> str:
        r = httpx.post(
            keyed.url + "/admin/keys",
            json={"name": name, **spec},
            headers={"authorization": f"Bearer {master}"},
        )
        assert r.status_code == 201, r.text
        secret: str = r.json()["key"]
        return secret

    try:
        for key in (None, "sk-wrong-0123456789"):
            with pytest.raises(anthropic.AuthenticationError) as refused:
                client(key).messages.create(model=SMOL, max_tokens=4, messages=ASKED)
            assert refused.value.status_code == 401 and "API key" in refused.value.message
        good = client(master)
        message = good.messages.create(model=SMOL, max_tokens=4, messages=ASKED)
        assert message.usage.output_tokens > 0
        assert good.messages.count_tokens(model=SMOL, messages=ASKED).input_tokens > 0
        other = client(new_key("elsewhere", models=["some-other-model"]))
        with pytest.raises(anthropic.NotFoundError) as hidden:
            other.messages.create(model=SMOL, max_tokens=4, messages=ASKED)
        assert SMOL in hidden.value.message
        once = client(new_key("once-a-minute", rpm=1))
        with pytest.raises(anthropic.RateLimitError) as limited:
            # the limit's window is the clock's minute: a third request is refused even when
            # the second fell into a new one
            for _ in range(3):
                once.messages.create(model=SMOL, max_tokens=1, messages=ASKED)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert master not in keyed.log()  # a key is never logged
    finally:
        for c in made:
            c.close()
        keyed.stop()
