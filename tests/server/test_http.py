"""HTTP behaviour in process (tests/inproc.py: the real app on the fake engine, milliseconds per
test): error envelopes and statuses, the guards every request passes (Host, Content-Type, body
size), CORS, and that the hot OpenAI routes pass the same middleware stack as every other."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inproc import InProcessPool, app_client, fake_models
from llm_router.config import Settings
from llm_router.lifecycle.manager import ModelManager
from llm_router.protocol import OPENAI_CHAT_FIELDS
from llm_router.server.app import create_app
from openai_schema import validate

HELLO = [{"role": "user", "content": "Hello"}]
CHAT = {"model": "chat", "messages": HELLO, "max_tokens": 3}
JSON = {"content-type": "application/json"}
POSTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/ensemble",
    "/v1/compare",
    "/models/load",
    "/models/unload",
    "/tokenize",
    "/detokenize",
    "/apply-template",
)


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(tmp_path, max_body_bytes=4096) as c:
        yield c


def error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    validate("ErrorResponse", r.json())
    body: dict[str, object] = r.json()["error"]
    return body


async def test_a_chat_is_served_in_process(inproc: httpx.AsyncClient) -> None:
    r = await inproc.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    validate("CreateChatCompletionResponse", r.json())
    assert r.json()["choices"][0]["message"]["content"] == "hello from the"
    assert r.headers["x-llm-router-model"] == "chat"


@pytest.mark.parametrize("path", POSTS)
async def test_malformed_json_is_400_on_every_route(inproc: httpx.AsyncClient, path: str) -> None:
    r = await inproc.post(path, content=b'{"model": "x", "messages": [', headers=JSON)
    assert "JSON" in str(error(r, 400)["message"])


async def test_a_body_nested_too_deep_names_the_limit_and_the_field(
    inproc: httpx.AsyncClient,
) -> None:
    """A JSON schema of ~100 nested objects was a 400 in the parser's words ("recursion limit
    exceeded at line 1 column 3666") with `param: null`; it now says the limit and names the
    field. One level less is read (and is a fake model's answer)."""
    from llm_router.server.bodies import MAX_DEPTH

    def body(levels: int) -> dict[str, Any]:
        schema: Any = {"type": "integer"}
        for _ in range(levels - 4):  # the body, response_format, json_schema, schema
            schema = {"items": schema}
        return {
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        }

    r = await inproc.post("/v1/chat/completions", json=body(MAX_DEPTH + 1))
    err = error(r, 400)
    assert err["param"] == "response_format", err
    assert f"at most {MAX_DEPTH} levels" in str(err["message"]), err
    assert "json_schema.schema.items" in str(err["message"]), err
    r = await inproc.post("/v1/chat/completions", json=body(MAX_DEPTH))
    assert r.status_code != 400 or "levels" not in r.text, r.text


async def test_a_lone_surrogate_is_invalid_json_on_every_route(inproc: httpx.AsyncClient) -> None:
    """JSON's grammar allows an escaped lone UTF-16 surrogate, which no text holds. The hot
    routes' parser refused it; FastAPI's routes took it, and /apply-template answered 500 when
    the worker's request could not be encoded (found from outside). Every route that takes a
    body, as the API document lists them, now refuses it as the hot routes do."""
    doc = (await inproc.get("/openapi.json")).json()
    taking = [
        (method, path)
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert {path for _, path in taking} >= set(POSTS)
    lone = "\\ud800"  # the escape itself: JSON text a client may send
    raw = f'{{"model":"chat","messages":[{{"role":"user","content":"{lone}"}}],"content":"{lone}"}}'
    for method, path in taking:
        r = await inproc.request(method, path, content=raw.encode(), headers=JSON)
        if path.startswith("/v1/messages"):  # Anthropic's API, its errors in its shape
            assert r.status_code == 400 and r.json()["type"] == "error", r.text
            message = str(r.json()["error"]["message"])
        else:
            message = str(error(r, 400)["message"])
        assert message.startswith("We could not parse the JSON body"), (path, message)
        assert "unpaired UTF-16 surrogate (\\ud800)" in message, (path, message)


@pytest.mark.parametrize(
    ("body", "where", "lone"),
    [
        ('{"model":"chat","prompt":"\\ud83d"}', "in `prompt`", "\\ud83d"),
        ('{"model":"chat","prompt":["a","x\\ud83dy"]}', "in `prompt.1`", "\\ud83d"),
        ('{"model":"chat","prompt":"\\ude00"}', "in `prompt`", "\\ude00"),
        ('{"model":"chat","prompt":"\\ud83d\\ud83d\\ude00"}', "in `prompt`", "\\ud83d"),
        ('{"model":"chat","prompt":"ok","stop":{"\\udfff":1}}', "in `stop`", "\\udfff"),
    ],
)
async def test_a_lone_surrogate_is_named_as_what_it_is(
    inproc: httpx.AsyncClient, body: str, where: str, lone: str
) -> None:
    """The parser's words were about an escape cut short ("unexpected end of hex escape" for
    `"\\ud83d"`), which misdescribed a well-formed escape (found from outside): the 400 now
    says a string holds an unpaired surrogate, which one, and where."""
    r = await inproc.post("/v1/completions", content=body.encode(), headers=JSON)
    message = str(error(r, 400)["message"])
    assert f"a string {where} holds an unpaired UTF-16 surrogate ({lone})" in message
    assert "hex escape" not in message
    r = await inproc.post(
        "/v1/completions", content=b'{"model": "chat", "prompt": "\\ud83', headers=JSON
    )
    assert "surrogate" not in str(error(r, 400)["message"])  # a cut escape is not one


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -5),
        ("temperature", "hot"),
        ("messages", "hi"),
        ("top_p", 3),
        ("temperature", float("nan")),
        ("top_p", float("inf")),
        ("repeat_penalty", 1e-300),
        ("model", "m" * 257),
        ("seed", 2**64),  # 64 bits, signed or not, are taken
        ("max_tokens", "3"),  # a number in a string: OpenAI refuses it, pydantic took it
        ("n", "2"),
        ("temperature", "0"),
    ],
)
async def test_wrong_values_name_the_parameter(
    inproc: httpx.AsyncClient, field: str, value: object
) -> None:
    """Non-finite numbers (JSON's NaN and Infinity, which Python's json writes), sampling values
    that break the sampler (a repeat penalty of 1e-300 is 0 in C), model names past 256
    characters: each a 400 naming the field."""
    body = json.dumps({**CHAT, field: value}).encode()  # writes NaN and Infinity as Python does
    r = await inproc.post("/v1/chat/completions", content=body, headers=JSON)
    assert error(r, 400)["param"] == field


@pytest.mark.parametrize(
    ("seed", "bound"),
    [
        (2**64, "less than or equal to 18446744073709551615"),
        (-(2**63) - 1, "greater than or equal to -9223372036854775808"),
    ],
)
async def test_a_seed_out_of_range_is_told_the_real_bound(
    inproc: httpx.AsyncClient, seed: int, bound: str
) -> None:
    """2^64 was told to be "less than or equal to 18446744073709552000", which it is
    (pydantic writes a bound past 2^63 through a float; found from outside)."""
    r = await inproc.post("/v1/chat/completions", json={**CHAT, "seed": seed})
    assert error(r, 400)["message"] == f"Invalid value for 'seed': Input should be {bound}"


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages.[0].content"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]},
         "messages.[0].content"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]},
         "messages.[0].tool_call_id"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": []}]},
         "messages.[0].content"),
        ("/v1/chat/completions", {"messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": []}]},
         "messages.[1].content"),
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]},
         "messages.[0].content"),  # pydantic's own errors name it the same way
        ("/v1/completions", {"prompt": "def f():", "suffix": "return 1"}, "suffix"),
        ("/v1/completions", {"prompt": "x", "best_of": 3}, "best_of"),
        ("/v1/completions", {"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
    ],
)  # fmt: skip
async def test_what_openai_refuses_is_refused_not_ignored(
    inproc: httpx.AsyncClient, path: str, extra: dict[str, object], param: str
) -> None:
    """Accepted and ignored (or rendered as an empty turn) before, where OpenAI answers a 400:
    `suffix` and `best_of` did nothing, a turn without content (or with an empty list of
    parts) was an empty one, a tool turn answered no call, `stream_options` applied to no stream (found from outside)."""
    r = await inproc.post(path, json={**CHAT, **extra})
    assert error(r, 400)["param"] == param, r.text


async def test_null_is_the_default_where_openai_allows_null(inproc: httpx.AsyncClient) -> None:
    """OpenAI's schema makes `n`, `stream`, `echo` and a completion's `max_tokens` nullable:
    null means the default (one answer, no stream, 16 tokens), never "no limit"."""
    nulls = {"n": None, "stream": None}
    r = await inproc.post("/v1/chat/completions", json={**CHAT, **nulls})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1
    completion = {"model": "chat", "prompt": "x", "max_tokens": None, "echo": None, **nulls}
    r = await inproc.post("/v1/completions", json=completion)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 16
    assert r.headers["content-type"].startswith("application/json")


async def test_llama_cpp_clients_no_limit_and_n_predict_are_understood(
    inproc: httpx.AsyncClient,
) -> None:
    """llama.cpp's web UI sends `max_tokens: -1` (no limit) by default and got a 400, so it
    could not chat; `n_predict` was ignored on /v1, a chat running to the context's end
    (found from outside, beside a real llama-server)."""
    unlimited = await inproc.post("/v1/chat/completions", json={**CHAT, "max_tokens": -1})
    assert unlimited.status_code == 200, unlimited.text
    body = {"model": "chat", "prompt": "x", "max_tokens": -1}
    completion = await inproc.post("/v1/completions", json=body)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] > 16
    for path, extra in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {})):
        body = {"model": "chat", "messages": HELLO, **extra, "n_predict": 5}
        if "prompt" in extra:
            del body["messages"]
        r = await inproc.post(path, json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5, r.text
    zero = await inproc.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0})
    assert zero.status_code == 400  # OpenAI's floor is kept
    for limit in ("max_tokens", "n_predict"):  # completions take 0 (OpenAI's floor there)
        body = {"model": "chat", "prompt": "x", limit: 0}
        done = await inproc.post("/v1/completions", json=body)
        assert done.status_code == 200, done.text
        assert done.json()["usage"]["completion_tokens"] == 0
        assert done.json()["choices"][0] | {"logprobs": None} == {
            "index": 0,
            "text": "",
            "finish_reason": "length",
            "logprobs": None,
        }


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("/v1/completions", {"prompt": "x", "n_predict": -2}, "n_predict", "-1 (no limit)"),
        ("/v1/chat/completions", {"messages": HELLO, "n_predict": "5"}, "n_predict", "-1 (no"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -2}, "max_tokens", "-1 (no limit)"),
        ("/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": 0},
         "max_completion_tokens", "-1 (no limit)"),
        ("/v1/completions", {"max_tokens": float("nan")}, "max_tokens", "finite number"),
        ("/v1/chat/completions", {"messages": HELLO, "n": True}, "n", "not a boolean"),
    ],
)  # fmt: skip
async def test_token_limits_and_validators_say_what_is_taken_and_name_their_field(
    inproc: httpx.AsyncClient, path: str, body: dict[str, object], param: str, says: str
) -> None:
    """Found from outside: `n_predict` errors named no field and began "Value error, ", as
    every validator's own did; `max_tokens: -2` said "should be >= 1", though -1 is taken;
    `max_tokens: NaN` without a prompt said "finite number; Field required", the prompt's
    reason read as max_tokens'."""
    content = json.dumps({"model": "chat", **body}).encode()  # NaN as Python writes it
    refused = error(await inproc.post(path, content=content, headers=JSON), 400)
    message = str(refused["message"])
    assert refused["param"] == param and says in message, message
    assert "Value error" not in message and "required" not in message, message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ],
)
async def test_an_image_audio_or_file_part_is_refused_saying_so(
    inproc: httpx.AsyncClient, part: dict[str, object]
) -> None:
    """It was pydantic's words for a union none matched ("Input should be a valid string;
    Input should be 'text'; Field required"), with no code (found with the openai SDK)."""
    content = [{"type": "text", "text": "Describe this."}, part]
    body = {**CHAT, "messages": [{"role": "user", "content": content}]}
    refused = error(await inproc.post("/v1/chat/completions", json=body), 400)
    assert refused["param"] == "messages.[0].content.[1].type"
    assert refused["code"] == "unsupported_value"
    message = str(refused["message"])
    assert f"'{part['type']}'" in message and "not supported by this server" in message


async def test_an_assistants_refusal_part_is_taken_as_its_text(
    inproc: httpx.AsyncClient,
) -> None:
    """OpenAI's schema allows a `refusal` part in an assistant's content; it was a 400."""
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}
    body = {**CHAT, "messages": [*HELLO, refusal, {"role": "user", "content": "Why?"}]}
    r = await inproc.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    prompt = await inproc.post("/apply-template", json={**body, "max_tokens": None})
    assert "assistant: I cannot.\n" in prompt.json()["prompt"]
    body["messages"] = [{"role": "user", "content": [{"type": "refusal", "refusal": "No."}]}]
    refused = error(await inproc.post("/v1/chat/completions", json=body), 400)
    assert refused["param"] == "messages.[0].content.[0].type"


IGNORED = {
    "store": True,
    "metadata": {"app": "test"},
    "service_tier": "auto",
    "safety_identifier": "user-1",
    "prompt_cache_key": "k",
    "prompt_cache_options": {},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "verbosity": "low",
    "prediction": {"type": "content", "content": "Hello"},
    "modalities": ["text"],
    "audio": {"voice": "alloy", "format": "wav"},
    "web_search_options": {},
    "moderation": {},
}


async def test_the_fields_the_readme_says_are_ignored_are(inproc: httpx.AsyncClient) -> None:
    """The README's list of OpenAI fields accepted and ignored: OpenAI's own, each taken,
    the answer the same with them all."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = readme.partition("Accepted and ignored by local models")[2].partition("`user`")[0]
    assert set(re.findall(r"`(\w+)`", listed)) == set(IGNORED) <= OPENAI_CHAT_FIELDS
    plain = await inproc.post("/v1/chat/completions", json=CHAT)
    r = await inproc.post("/v1/chat/completions", json={**CHAT, **IGNORED})
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]
    assert answer == plain.json()["choices"][0]["message"]


LLAMA_IGNORED = {
    "cache_prompt": False,
    "id_slot": 2,
    "n_keep": -1,
    "return_tokens": True,
    "reasoning_format": "deepseek",
}


async def test_the_llama_server_fields_the_readme_says_are_ignored_are(
    inproc: httpx.AsyncClient,
) -> None:
    """llama-server's fields the README lists as changing nothing here (they were ignored
    without a word: found from outside): each taken, the answer the same with them all."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = readme.partition("llama-server's request fields that change nothing here")[2]
    named = set(re.findall(r"`(\w+)` \(", listed.partition("\n\n")[0]))  # each with its reason
    assert named == set(LLAMA_IGNORED), named
    plain = await inproc.post("/v1/chat/completions", json=CHAT)
    r = await inproc.post("/v1/chat/completions", json={**CHAT, **LLAMA_IGNORED})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]


async def test_v1_models_carries_llama_cpp_routers_status_and_aliases(tmp_path: Path) -> None:
    """llama.cpp's web UI, told `role: router` by /props, reads `status.value` of each entry
    of /v1/models, which had OpenAI's four fields only (found from outside)."""
    chat, other = fake_models(tmp_path, chat={}, other={})
    models = [chat.model_copy(update={"aliases": ["c"]}), other]
    async with app_client(tmp_path, models=models) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        listed = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        props = (await c.get("/props")).json()
    assert props["role"] == "router"
    assert listed["chat"]["status"] == {"value": "loaded"} and listed["chat"]["aliases"] == ["c"]
    assert listed["other"]["status"] == {"value": "unloaded"}
    validate("ListModelsResponse", {"object": "list", "data": list(listed.values())})


async def test_missing_model_field(inproc: httpx.AsyncClient) -> None:
    r = await inproc.post("/v1/completions", json={"prompt": "x"})
    assert error(r, 400)["param"] == "model"


async def test_a_request_without_model_gets_the_default_model(tmp_path: Path) -> None:
    """llama-server's clients (and `serve -m FILE`'s) send no `model`: it was a 400 "Field
    required" (found from outside). With `default_model` they get that model; a name they do
    give still has to exist."""
    async with app_client(tmp_path, default_model="chat") as client:
        chat = await client.post(
            "/v1/chat/completions", json={k: v for k, v in CHAT.items() if k != "model"}
        )
        assert chat.status_code == 200 and chat.json()["model"] == "chat", chat.text
        text = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert text.status_code == 200 and text.json()["model"] == "chat"
        assert error(
            await client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"}), 404
        )
        assert (
            error(await client.post("/v1/completions", json={"prompt": 5}), 400)["param"]
            == "prompt"
        )
        # llama.cpp's own routes too (they required a model; found beside a real llama-server)
        for path, body in (
            ("/tokenize", {"content": "hi"}),
            ("/detokenize", {"tokens": [1, 2]}),
            ("/apply-template", {"messages": HELLO}),
        ):
            r = await client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
    async with app_client(tmp_path) as client:  # no default: said so
        assert (
            error(await client.post("/tokenize", json={"content": "hi"}), 400)["param"] == "model"
        )


@pytest.mark.parametrize("path", POSTS)
async def test_body_over_limit_is_413_on_every_route(inproc: httpx.AsyncClient, path: str) -> None:
    r = await inproc.post(path, content=b"x" * 8192, headers=JSON)
    assert "over the limit of 4096 bytes" in str(error(r, 413)["message"])


@pytest.mark.parametrize("path", POSTS)
async def test_chunked_body_over_limit_is_413_on_every_route(
    inproc: httpx.AsyncClient, path: str
) -> None:
    """A body without a Content-Length is counted as it arrives, on FastAPI's routes too."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    r = await inproc.post(path, content=chunks(), headers=JSON)
    assert "over the limit" in str(error(r, 413)["message"])
    assert (await inproc.post("/v1/chat/completions", json=CHAT)).status_code == 200


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_body_that_is_not_json_is_415(
    inproc: httpx.AsyncClient, path: str, content_type: str | None
) -> None:
    """The no-preflight POST any web page can send (a form, text/plain) is refused before it
    reaches a route, so a page cannot drive the server."""
    headers = {"content-type": content_type} if content_type else {}
    r = await inproc.post(
        path, content=httpx.Request("POST", "/", json=CHAT).content, headers=headers
    )
    assert "must be JSON" in str(error(r, 415)["message"])


async def test_json_with_a_charset_or_a_json_suffix_is_accepted(inproc: httpx.AsyncClient) -> None:
    body = httpx.Request("POST", "/", json=CHAT).content
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        r = await inproc.post(
            "/v1/chat/completions", content=body, headers={"content-type": content_type}
        )
        assert r.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:8080", "localhost.evil.example"])
async def test_a_foreign_host_is_421(inproc: httpx.AsyncClient, host: str) -> None:
    """DNS rebinding: a page on evil.example points its name at 127.0.0.1 and reads answers;
    the request carries its name as Host and is refused, on every route."""
    for method, path in (
        ("GET", "/v1/models"),
        ("GET", "/models"),
        ("POST", "/v1/chat/completions"),
    ):
        r = await inproc.request(method, path, json=CHAT, headers={"host": host})
        assert error(r, 421)["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8080", "127.0.0.1:9", "[::1]:8080", "10.1.2.3:8080", "LOCALHOST."],
)
async def test_loopback_names_and_addresses_are_served(
    inproc: httpx.AsyncClient, host: str
) -> None:
    r = await inproc.post("/v1/chat/completions", json=CHAT, headers={"host": host})
    assert r.status_code == 200


async def test_allowed_hosts_extend_the_list(tmp_path: Path) -> None:
    async with app_client(tmp_path, allowed_hosts=["gpu-box.lan"]) as c:
        r = await c.get("/v1/models", headers={"host": "gpu-box.lan:8080"})
        assert r.status_code == 200
        assert (await c.get("/v1/models", headers={"host": "other.lan"})).status_code == 421


async def test_cors_is_an_explicit_allow_list(tmp_path: Path) -> None:
    """No CORS headers by default (a browser keeps other origins from reading answers); the
    configured origins get them, preflight included, and others still do not."""
    origin = {"origin": "http://localhost:3000"}
    async with app_client(tmp_path) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers=origin)
        assert "access-control-allow-origin" not in r.headers
    async with app_client(tmp_path, cors_origins=["http://localhost:3000"]) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        pre = await c.options(
            "/v1/chat/completions",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,authorization",
            },
        )
        assert pre.status_code == 200
        other = await c.post(
            "/v1/chat/completions", json=CHAT, headers={"origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_cors_lets_an_allowed_page_send_and_read_the_api_s_headers(tmp_path: Path) -> None:
    """The preflight allowed only authorization, content-type and x-request-id: a page of an
    allowed origin could not send X-Api-Key or `Cache-Control: no-cache` (both in the README)
    nor the openai JS SDK's x-stainless-* headers (400 "Disallowed CORS headers")."""
    origin = {"origin": "http://localhost:3000"}
    sent = (
        "authorization,content-type,x-api-key,cache-control,x-request-id,"
        "x-stainless-arch,x-stainless-lang,x-stainless-os,x-stainless-package-version,"
        "x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,"
        "x-stainless-timeout"
    )
    async with app_client(tmp_path, cors_origins=["http://localhost:3000"]) as c:
        pre = await c.options(
            "/v1/chat/completions",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": sent,
            },
        )
        assert pre.status_code == 200, pre.text
        allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert set(sent.split(",")) <= allowed

        r = await c.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={**origin, "cache-control": "no-cache", "x-stainless-os": "Linux"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
        ours = ("x-llm-router-", "x-ratelimit-", "x-request-id", "retry-after", "x-should")
        assert {h for h in r.headers if h.startswith(ours)} <= exposed
        limits = {
            f"x-ratelimit-{w}-{k}"
            for w in ("limit", "remaining", "reset")
            for k in ("requests", "tokens")
        }
        assert {
            "x-request-id",
            "x-llm-router-model",
            "retry-after",
            "x-should-retry",
            *limits,
        } <= exposed


async def test_unknown_routes_and_methods_have_envelopes(inproc: httpx.AsyncClient) -> None:
    assert "the API is at /v1" in error(await inproc.get("/v1/nothing-here"), 404)["message"]
    error(await inproc.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/models/chat", "GET, HEAD"),
        ("DELETE", "/v1/models", "GET, HEAD"),
        ("DELETE", "/models", "GET, HEAD"),
        ("DELETE", "/admin/keys", "GET, HEAD, POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("DELETE", "/health", "GET, HEAD"),
    ],
)
async def test_a_405_allows_the_methods_the_path_serves(
    inproc: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    """`DELETE /v1/models/{id}` (the openai SDK's `models.delete`) answered 405 with an empty
    `Allow`: the routes FastAPI includes from a router name no methods of their own."""
    r = await inproc.request(method, path)
    error(r, 405)
    assert r.headers["allow"] == allow


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "POST"])
async def test_a_method_a_path_does_not_serve_is_405_not_a_body_refusal(
    inproc: httpx.AsyncClient, method: str
) -> None:
    """`curl -X TRACE` (PUT, PATCH, POST) on a GET route, with no body, was a 415 saying the
    body must be JSON (the body guard answered first, found from outside): a request with
    neither a Content-Length nor a Transfer-Encoding has no body, and gets the 405."""
    request = inproc.build_request(method, "/health")
    request.headers.pop("content-length", None)
    assert "content-length" not in request.headers and "transfer-encoding" not in request.headers
    r = await inproc.send(request)
    assert error(r, 405)["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, HEAD"


async def test_a_plain_request_to_the_websocket_is_426_saying_how_to_open_it(
    inproc: httpx.AsyncClient,
) -> None:
    """`GET /v1/ws` without an Upgrade was a 404 saying nothing is served at /v1/ws."""
    r = await inproc.get("/v1/ws")
    body = error(r, 426)
    assert body["code"] == "upgrade_required" and "WebSocket" in str(body["message"])
    assert r.headers["upgrade"] == "websocket"
    assert "nothing is served" in str(error(await inproc.get("/v1/wss"), 404)["message"])


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/models", "/metrics", "/"])
async def test_head_is_answered_wherever_get_is(inproc: httpx.AsyncClient, path: str) -> None:
    """`curl -I`, uptime monitors and Ollama's clients' `HEAD /` got a 405 on every FastAPI
    route: HEAD answers the GET's status and headers, without the body."""
    got, head = await inproc.get(path), await inproc.head(path)
    assert head.status_code == got.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""
    assert (await inproc.head("/v1/chat/completions")).status_code == 405  # POST only


async def test_head_needs_the_scope_get_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-master-0123456789")
    async with app_client(tmp_path) as c:
        assert (await c.head("/v1/models")).status_code == 401
        assert (await c.head("/health")).status_code == 200
        key = {"authorization": "Bearer sk-master-0123456789"}
        assert (await c.head("/v1/models", headers=key)).status_code == 200


async def test_other_servers_apis_are_404s_that_say_what_to_use(inproc: httpx.AsyncClient) -> None:
    """Ollama's client read a bare 'Not Found' on /api/tags as "model not found" (found from
    outside): the 404 of another server's API says so and names ours."""
    tags = error(await inproc.get("/api/tags"), 404)["message"]
    assert "Ollama's native API" in tags and "/v1" in tags
    chat = error(await inproc.post("/api/chat", json={"model": "chat"}), 404)["message"]
    assert "Ollama's native API" in chat
    native = error(await inproc.post("/completion", json={"prompt": "x"}), 404)["message"]
    assert "/v1/completions" in native and "n_predict" in native
    for path in ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking"):  # llama-server's
        rerank = error(await inproc.post(path, json={"query": "q", "documents": ["d"]}), 404)
        assert "reranking" in rerank["message"] and "/v1/embeddings" in rerank["message"], path


async def test_an_unknown_model_is_404(inproc: httpx.AsyncClient) -> None:
    r = await inproc.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert error(r, 404)["code"] == "model_not_found"


async def test_an_unexpected_error_is_logged_not_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(app: FastAPI) -> None:
        async def fail(*_: object, **__: object) -> None:
            raise RuntimeError("a bug with a secret")

        app.state.generation.chat = fail

    async with app_client(tmp_path, setup=broken) as c:
        with caplog.at_level(logging.ERROR):
            r = await c.post("/v1/chat/completions", json=CHAT)
    assert error(r, 500)["message"] == "internal server error"
    assert "a bug with a secret" in caplog.text


def _post_scope(path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The ASGI scope of a JSON POST to `path` from a loopback client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), *headers],
    }


async def _send_part_of_a_body(app: FastAPI, path: str, then: Message | None) -> list[Message]:
    """POST `path` with a Content-Length of 100 and 9 bytes of body, then `then` (None: the
    client sends nothing more and keeps the connection open); what the app sent."""
    scope = _post_scope(path, (b"content-length", b"100"))
    messages = iter([{"type": "http.request", "body": b'{"model":', "more_body": True}])

    async def receive() -> Message:
        for message in messages:
            return message
        if then is None:
            await asyncio.Event().wait()
        assert then is not None
        return then

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


async def test_a_client_gone_before_its_body_is_whole_is_a_quiet_499(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closed (or half-closed) the connection while sending its body was logged
    as `ERROR unhandled error` with starlette's ClientDisconnect traceback, and counted a 500
    in the request log and the metrics (found from outside). It is a client gone: 499, nginx's
    "client closed request", as a client gone while its answer was made, and no error."""
    apps: list[FastAPI] = []
    async with app_client(tmp_path, setup=apps.append) as c:
        with caplog.at_level(logging.INFO):
            for path in POSTS:
                sent = await _send_part_of_a_body(apps[0], path, {"type": "http.disconnect"})
                assert [m["status"] for m in sent if "status" in m] == [499], path
        metrics = (await c.get("/metrics")).text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_router.requests"]
    lines = [line for line in lines if line.startswith("POST ")]  # not the GET /metrics
    assert len(lines) == len(POSTS) and all(" 499 " in line for line in lines), lines
    errors = [x for x in metrics.splitlines() if x.startswith("llm_router_http_errors_total{")]
    assert errors and all('status="499"' in x for x in errors), errors


async def test_a_client_that_stalls_sending_its_body_gets_a_408(tmp_path: Path) -> None:
    """Headers and part of a body, then nothing: the request was held open for good (found
    from outside). `body_timeout` bounds the wait, answered with the OpenAI envelope."""
    apps: list[FastAPI] = []
    async with app_client(tmp_path, setup=apps.append, body_timeout=0.05):
        for path in POSTS:
            sent = await _send_part_of_a_body(apps[0], path, None)
            assert sent[0]["status"] == 408, path
            body = json.loads(sent[1]["body"])
            validate("ErrorResponse", body)
            assert body["error"]["code"] == "request_timeout" and "body_timeout" in str(body)
            # a client still sending, slowly, did not "stop" (it was said so)
            assert "too slowly" in body["error"]["message"]


class Stamp:
    """A middleware added the documented way (`app.add_middleware`), as auth will be."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_middleware_added_to_the_app_runs_on_every_route(tmp_path: Path) -> None:
    """The hot routes are not a side door: a middleware added with `app.add_middleware` sees
    every route the app has, hot ones, FastAPI ones and unknown paths alike."""
    async with app_client(tmp_path, setup=lambda app: app.add_middleware(Stamp)) as c:
        app: FastAPI = c._transport.app  # type: ignore[attr-defined]
        paths = {getattr(route, "path", "") for route in app.routes}
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} <= paths
        for path in sorted(paths - {""}):
            method = "POST" if path in POSTS else "GET"
            if path == "/models/events":
                continue  # an endless stream; covered by the same stack
            r = await c.request(method, path.replace("{", "").replace("}", ""), json=CHAT)
            assert r.headers.get("x-stamp") == "1", (path, r.status_code)
        assert (await c.get("/nowhere")).headers.get("x-stamp") == "1"


async def test_the_api_document_resolves_and_documents_errors(inproc: httpx.AsyncClient) -> None:
    doc = (await inproc.get("/openapi.json")).json()
    refs: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.update(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert refs and all(r.split("/")[-1] in schemas for r in refs), refs
    assert not any("$defs" in r for r in refs)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "messages" in schemas[body.split("/")[-1]]["properties"]
    assert {"200", "400", "404", "413", "415", "421", "429", "503", "507"} <= set(chat["responses"])
    assert chat["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    for path in ("/v1/ensemble", "/v1/compare"):
        op = doc["paths"][path]["post"]
        assert "422" not in op["responses"] and "400" in op["responses"]
    # /docs offers "Authorize" (a bearer key) and sends it with the guarded operations only
    schemes = doc["components"]["securitySchemes"]
    assert [(s["type"], s["scheme"]) for s in schemes.values()] == [("http", "bearer")]
    guarded = [doc["paths"][p][m] for p, m in [("/v1/models", "get"), ("/models/load", "post")]]
    assert all(op["security"] == [{name: []} for name in schemes] for op in [chat, *guarded])
    assert "security" not in doc["paths"]["/health"]["get"]


async def test_client_chosen_names_never_become_metric_labels(inproc: httpx.AsyncClient) -> None:
    """A loop of random model names must not grow /metrics (or the server's memory): requests
    for unknown models are counted under `unknown`."""
    for i in range(20):
        r = await inproc.post("/v1/chat/completions", json={**CHAT, "model": f"no-such-{i}"})
        assert r.status_code == 404
    metrics = (await inproc.get("/metrics")).text
    assert "no-such" not in metrics
    assert 'model="unknown"' in metrics


async def test_unknown_names_rescan_the_models_directory_at_most_once_an_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_router.lifecycle.discovery import Scanner

    scans = 0
    real = Scanner.scan

    def counted(self: Scanner) -> object:
        nonlocal scans
        scans += 1
        return real(self)

    monkeypatch.setattr(Scanner, "scan", counted)
    async with app_client(tmp_path, watch_interval=600) as c:
        before = scans
        for i in range(30):
            await c.post("/v1/chat/completions", json={**CHAT, "model": f"no-such-{i}"})
            await c.get("/models")
        assert scans - before <= 1


async def test_a_client_that_stops_reading_frees_its_slot(tmp_path: Path) -> None:
    """A stream whose client reads nothing (its writes block once the socket's buffers are
    full) held a model slot for ever. After `send_timeout` the stream counts as gone: the
    generation is cancelled and the slot is free for others."""
    models = fake_models(tmp_path, slow={"token_seconds": 0.005, "parallel": 1})
    config = Settings(
        models_dir=tmp_path,
        watch_interval=0,
        provision_default_models=False,
        spare_workers=False,
        models=models,
        send_timeout=0.3,
    )
    manager = ModelManager(config, pool=InProcessPool())
    app = create_app(config, manager)
    body = json.dumps({"model": "slow", "prompt": "x", "max_tokens": 100_000, "stream": True})
    scope = _post_scope("/v1/completions")
    messages = iter([{"type": "http.request", "body": body.encode(), "more_body": False}])
    stuck = asyncio.Event()

    async def receive() -> Message:
        try:
            return next(messages)
        except StopIteration:
            await asyncio.Event().wait()  # never disconnects
            raise AssertionError from None

    sent = 0

    async def send(message: Message) -> None:
        nonlocal sent
        sent += 1
        if sent >= 3:  # headers, a chunk or two: then the client reads no more
            stuck.set()
            await asyncio.Event().wait()

    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), 10)
        assert stuck.is_set()
        state = manager.resolve("slow")
        assert state.active == 0
        worker = state.worker
        assert worker is not None and not worker.engine.busy  # the sequence was cancelled
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as c:
            r = await c.post(
                "/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 2}
            )
            assert r.status_code == 200  # the only slot is free again


async def test_a_pinned_model_is_unloaded_only_by_force(tmp_path: Path) -> None:
    models = fake_models(tmp_path, keep={})
    models[0] = models[0].model_copy(update={"pin": True})
    async with app_client(tmp_path, models=models) as c:
        r = await c.post("/models/unload", json={"model": "keep"})
        assert "pinned" in str(error(r, 400)["message"])
        r = await c.post("/models/unload", json={"model": "keep", "force": True})
        assert r.status_code == 200 and r.json()["success"] is True


async def test_a_requests_lifecycle_options_cannot_override_the_operator(tmp_path: Path) -> None:
    """A request's `autoload: true` does not beat `autoload: false` in the configuration."""
    async with app_client(tmp_path, autoload=False) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "autoload": True})
        assert error(r, 400)["code"] == "model_not_loaded"


async def test_autoload_false_in_the_query_string_holds_on_every_route(tmp_path: Path) -> None:
    """llama-server's router reads `?autoload=false` on every route; it was read on GET
    /props only, and a POST loaded the model (found from outside)."""
    async with app_client(tmp_path) as c:
        for path, body in (
            ("/v1/chat/completions", CHAT),
            ("/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": 2}),
            ("/tokenize", {"model": "chat", "content": "hi"}),
            ("/detokenize", {"model": "chat", "tokens": [1]}),
        ):
            r = await c.post(path + "?autoload=false", json=body)
            assert error(r, 400)["code"] == "model_not_loaded", path
        assert (await c.post("/v1/chat/completions?autoload=true", json=CHAT)).status_code == 200


async def test_ensemble_and_compare_refuse_a_stream_they_would_not_send(
    inproc: httpx.AsyncClient,
) -> None:
    """Their answers come together in one JSON body: `stream: true` is a 400 naming it, not a
    JSON body an SSE client waits on for events."""
    ask = {"targets": ["chat", "chat2"], "messages": CHAT["messages"], "stream": True}
    for path in ("/v1/ensemble", "/v1/compare"):
        r = await inproc.post(path, json=ask)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "stream" and "one JSON body" in r.text


async def test_ensemble_and_compare_refuse_n_answers_they_would_drop(tmp_path: Path) -> None:
    """Each target's answer is one text: `n: 3` was generated (and charged) three times and
    all but the first choice dropped."""
    ask = {"targets": ["chat", "chat2"], "messages": CHAT["messages"]}
    async with app_client(tmp_path, models=fake_models(tmp_path, chat={}, chat2={})) as c:
        for path in ("/v1/ensemble", "/v1/compare"):
            assert error(await c.post(path, json={**ask, "n": 3}), 400)["param"] == "n"
            empty = {**ask, "messages": [{"role": "user", "content": []}]}  # each target's error
            assert error(await c.post(path, json=empty), 400)["param"] == "messages.[0].content"
            assert (await c.post(path, json={**ask, "n": 1})).status_code == 200


async def test_more_answers_than_a_model_can_ever_hold_is_a_400_naming_n(tmp_path: Path) -> None:
    """Each of `n` answers takes a slot or a place in the model's queue. More than its slots
    and queue hold together was a 429 "retry later" with Retry-After, on an idle model, which
    the openai client retried for nothing (found from outside)."""
    models = [m.model_copy(update={"parallel": 2}) for m in fake_models(tmp_path, chat={})]
    async with app_client(tmp_path, models=models, queue_per_model=3) as c:
        assert (await c.post("/models/load", json={"model": "chat"})).status_code == 200
        ask = {**CHAT, "temperature": 0.7}
        r = await c.post("/v1/chat/completions", json={**ask, "n": 8})
        refused = error(r, 400)
        assert refused["param"] == "n" and "retry-after" not in r.headers
        assert "at most 5" in str(refused["message"]) and "queue_per_model" in str(refused)
        r = await c.post("/v1/chat/completions", json={**ask, "n": 5})  # 2 slots + 3 waiting
        assert r.status_code == 200 and len(r.json()["choices"]) == 5


async def test_answers_waiting_for_their_own_others_do_not_time_out(tmp_path: Path) -> None:
    """n=3 on a model with 2 slots: the third answer waits until one of the first two ends. It
    counted that wait against `queue_timeout` and the request failed with a 503 when its own
    first answers took longer than that, on an idle server (found from outside)."""
    models = fake_models(tmp_path, slow={"token_seconds": 0.02})  # not `chat`: app_client
    models = [m.model_copy(update={"parallel": 2}) for m in models]  # writes that one's file
    async with app_client(tmp_path, models=models, queue_timeout=0.1) as c:
        ask = {**CHAT, "model": "slow", "temperature": 0.7, "max_tokens": 20, "n": 3}
        r = await c.post("/v1/chat/completions", json=ask)
        assert r.status_code == 200, r.text
        assert [x["index"] for x in r.json()["choices"]] == [0, 1, 2]


async def test_a_route_whose_targets_do_not_exist_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """Not a 503 with Retry-After (no wait makes a target appear): a 500 naming the route and
    its targets."""
    routes = [{"name": "bad", "targets": ["nope-model", "nope-two"]}]
    async with app_client(tmp_path, routes=routes) as client:
        r = await client.post("/v1/chat/completions", json={**CHAT, "model": "bad"})
        assert r.status_code == 500 and "retry-after" not in r.headers, r.text
        error = r.json()["error"]
        assert error["code"] == "config_error" and "nope-model, nope-two" in error["message"]


async def test_loading_a_broken_file_names_the_file_not_its_directory(tmp_path: Path) -> None:
    """POST /models/load of a model whose file is broken: the answer names the file and why,
    not the directory it is in (README's Security table: no paths)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    async with app_client(models) as client:
        r = await client.post("/models/load", json={"model": "broken"})
        message = r.json()["error"]["message"]
        assert r.status_code >= 400 and "broken.safetensors" in message, message
        assert str(models) not in message
        listed = (await client.get("/models")).json()["data"]
        error = next(m for m in listed if m["id"] == "broken")["status"]["error"]
        assert "broken.safetensors" in error and str(models) not in error


async def test_metrics_count_memory_as_the_budget_does(inproc: httpx.AsyncClient) -> None:
    """`llm_router_memory_used_bytes` is what GET /models says is used (the models' workers
    and the spare workers: what the budget counts); the dashboard's memory bar reads it, and
    showed the models' sum alone to an admin, the whole to a key without `admin`."""
    from prometheus_client.parser import text_string_to_metric_families

    assert (await inproc.post("/v1/chat/completions", json=CHAT)).status_code == 200
    listing = (await inproc.get("/models")).json()
    families = {
        f.name: f for f in text_string_to_metric_families((await inproc.get("/metrics")).text)
    }
    [used] = families["llm_router_memory_used_bytes"].samples
    assert used.value == listing["memory_used_bytes"] > 0


async def test_a_model_over_the_memory_budget_is_a_507_no_client_retries(tmp_path: Path) -> None:
    """The openai client retries anything from 500 up unless told not to: a 507 that no
    retry can change was asked twice more (500 model_load_failed already said not to). Its
    message says which setting would let the model load."""
    models = fake_models(tmp_path, big={"ballast_mb": 300})
    async with app_client(tmp_path, models=models, memory_budget="200MiB") as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "big"})
        refused = error(r, 507)
        assert refused["code"] == "insufficient_memory"
        assert r.headers["x-should-retry"] == "false" and "retry-after" not in r.headers
        assert "budget is 200 MiB; to load it, raise memory_budget" in str(refused["message"])


@pytest.mark.parametrize("name", ["模型", "modèle", "50%-off"])
async def test_a_model_named_outside_ascii_answers_and_says_its_name_in_the_headers(
    tmp_path: Path, name: str
) -> None:
    """A model's id is its file's name: `模型.gguf` answered every request with a 500 after
    generating it (its id in `x-llm-router-model` is no latin-1), and `modèle` sent a raw
    0xE8 byte there (found from outside). The name goes percent-encoded now."""
    from urllib.parse import unquote

    async with app_client(tmp_path, models=fake_models(tmp_path, **{name: {}})) as c:
        body = {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 200, r.text
            sent = r.headers.raw  # as the wire has them
            model = next(v for k, v in sent if k.lower() == b"x-llm-router-model")
            assert model.isascii() and unquote(model.decode()) == name, model
            assert unquote(r.headers["x-llm-router-route"]).count(name) <= 1


@pytest.mark.parametrize("path", POSTS)
async def test_a_post_without_a_body_is_told_it_has_none(
    inproc: httpx.AsyncClient, path: str
) -> None:
    """`curl -X POST .../models/unload` was a 400 "Field required" with param null (FastAPI's
    words about the body as a whole), and the OpenAI routes said "EOF while parsing a value at
    line 1 column 0": both now say there is no body and what to send (found from outside)."""
    request = inproc.build_request("POST", path)
    request.headers.pop("content-length", None)
    for sent in (request, inproc.build_request("POST", path, content=b"", headers=JSON)):
        message = str(error(await inproc.send(sent), 400)["message"])
        assert message.startswith("the request has no body"), message


async def test_a_cors_preflight_without_cors_origins_says_how_to_allow_it(
    inproc: httpx.AsyncClient,
) -> None:
    """A page's preflight got a bare 405 "Method Not Allowed" (found from outside): it now
    names `cors_origins`. The browser still refuses the call, as it should."""
    ask = {"origin": "http://localhost:3000", "access-control-request-method": "POST"}
    for path in ("/v1/chat/completions", "/models/load"):
        body = error(await inproc.options(path, headers=ask), 405)
        assert "cors_origins" in str(body["message"]) and "localhost:3000" in str(body["message"])
    assert "cors_origins" not in str(error(await inproc.options("/v1/models"), 405)["message"])
