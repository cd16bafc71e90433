"""The real server on the real bundled models, driven by the official `openai` client, with
every response checked against OpenAI's published schema."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from openai_schema import validate
from servers import GEMMA, SMOL, Server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_sensibly(client: openai.OpenAI, server: Server) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=30
    )
    chat = raw.parse()
    assert "Paris" in (chat.choices[0].message.content or "")
    assert chat.model == SMOL
    assert raw.headers["x-llm-router-model"] == SMOL
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.prompt_tokens > 5
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    validate("CreateChatCompletionResponse", raw.http_response.json())


def test_gemma_base_model_chats_too(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=GEMMA, messages=QUESTION, temperature=0, max_tokens=30
    )
    assert "Paris" in (chat.choices[0].message.content or "")


def test_chat_stream_matches_non_streaming(client: openai.OpenAI, server: Server) -> None:
    kwargs = {"model": SMOL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= len(finishes) - 2
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))


def test_sse_wire_format(server: Server) -> None:
    body = {"model": SMOL, "messages": QUESTION, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith(("data: ", ":")) for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_with_include_usage_every_chunk_but_the_last_says_usage_null(
    server: Server, path: str
) -> None:
    """As OpenAI's stream: a raw-JSON client reading `chunk["usage"]` failed on every chunk
    but the last (found from outside); without `include_usage` no chunk has the key."""
    ask = {"messages": QUESTION} if path.endswith("chat/completions") else {"prompt": "Hello"}
    for include in (True, False):
        body = {"model": SMOL, **ask, "max_tokens": 4, "stream": True, "temperature": 0}
        if include:
            body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
            data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        chunks = [json.loads(d) for d in data if d != "[DONE]"]
        if include:
            assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks
            assert chunks[-1]["usage"]["total_tokens"] > 0 and chunks[-1]["choices"] == []
        else:
            assert not any("usage" in c for c in chunks), chunks


def test_completion_and_max_tokens(client: openai.OpenAI, server: Server) -> None:
    raw = client.completions.with_raw_response.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    done = raw.parse()
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5
    assert done.choices[0].text.strip()
    validate("CreateCompletionResponse", raw.http_response.json())


def test_completion_stream(client: openai.OpenAI) -> None:
    kwargs = {"model": GEMMA, "prompt": "One, two, three,", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    parts = [
        c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices
    ]
    assert "".join(parts) == whole


def test_stop_sequence_cuts_output(client: openai.OpenAI) -> None:
    kwargs = {"model": GEMMA, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 20, "temperature": 0}
    free = client.completions.create(**kwargs).choices[0].text
    assert " 8" in free  # the model counts on
    cut = client.completions.create(**kwargs, stop=[" 8"]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free[: free.index(" 8")]
    streamed = client.completions.create(**kwargs, stop=[" 8"], stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.text


def test_seed_reproducible(client: openai.OpenAI) -> None:
    kwargs = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "temperature": 1.0,
        "max_tokens": 24,
    }
    first = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    again = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    other = [
        client.chat.completions.create(**kwargs, seed=s).choices[0].message.content
        for s in (1, 2, 3)
    ]
    assert first == again
    assert any(o != first for o in other)


@pytest.mark.parametrize("seed", [2**63 - 1, 0x3C6EF372FE94F82B, -(2**63), 2**64 - 1])
def test_a_64_bit_seed_is_taken_and_reproduces(client: openai.OpenAI, seed: int) -> None:
    """Apps draw seeds with random.getrandbits(63) (OpenAI's schema: int64); above 2^53 they
    were a 400. Each gives the same text twice, 2^63 - 1 too (its low 32 bits are what
    llama.cpp takes for "a random seed")."""
    kwargs: dict[str, Any] = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "temperature": 1.0,
        "max_tokens": 24,
        "seed": seed,
    }
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first and client.chat.completions.create(**kwargs).choices[0].message.content == first


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_logit_bias_bans_and_forces_tokens(
    client: openai.OpenAI, server: Server, model: str
) -> None:
    """OpenAI's `logit_bias` (it was accepted and ignored, found from outside): -100 keeps the
    greedy first token out, +100 makes a chosen token the answer, greedy and sampled (the
    top-k path), chat and completions; a key that is no token id or a bias past 100 is a 400
    naming the field, as is an id outside the vocabulary (a key of other text is its tokens:
    test_logit_bias_takes_llama_servers_forms)."""

    def token_of(text: str) -> int:
        body = {"model": model, "content": text}
        tokens = httpx.post(server.url + "/tokenize", json=body, timeout=60).json()["tokens"]
        assert len(tokens) == 1, (text, tokens)
        return int(tokens[0])

    # completions: their text is the tokens' (a chat's answer may be trimmed)
    ask = {"model": model, "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0}
    first = client.completions.create(**ask).choices[0].text  # type: ignore[call-overload]
    banned = client.completions.create(**ask, logit_bias={str(token_of(first)): -100})  # type: ignore[call-overload]
    assert banned.choices[0].text not in ("", first)
    forced = {str(token_of(" banana")): 100}
    for temperature, seed in ((0, None), (1.0, 1), (1.0, 2)):
        answer = client.completions.create(  # type: ignore[call-overload]
            **{**ask, "temperature": temperature}, seed=seed, logit_bias=forced
        )
        assert answer.choices[0].text == " banana", (temperature, answer)
    chat = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=1, logit_bias=forced
    )
    assert (chat.choices[0].message.content or "").strip() == "banana"
    chat_ask = {"model": model, "messages": QUESTION, "max_tokens": 1}
    for bad in ({"": 5}, {"5": 500}, {"999999999": 1}, [[-1, 5]], {"-1": 5}, {"5": True}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**chat_ask, logit_bias=bad)  # type: ignore[call-overload]
        assert info.value.param == "logit_bias", bad


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_logit_bias_takes_llama_servers_forms(server: Server, model: str) -> None:
    """llama-server's other `logit_bias` forms were a 400 (found from outside, beside
    llama-server, which gives each the text of {"id": -100}): [[id, bias]], [[id, false]]
    (false: never), and a text key (its tokens), in an object or a list. A key llama-server's
    strtol reads as a number (" 28", "+28", "028") is that id, not text; and the biases of
    one token add up, as there (the last one alone counted: found from outside)."""
    tokenize = {"model": model, "content": ","}
    body = httpx.post(server.url + "/tokenize", json=tokenize, timeout=120).json()
    (comma,) = body["tokens"]
    ask = {"model": model, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}

    def text(logit_bias: Any) -> str:
        body = {**ask, "logit_bias": logit_bias}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, (logit_bias, r.text)
        return str(r.json()["choices"][0]["text"])

    banned = text({str(comma): -100})
    assert "," not in banned and banned != text(None)  # the comma came first
    for form in ([[comma, -100]], [[comma, False]], {",": -100}, [[",", False]]):
        assert text(form) == banned, form
    for key in (f" {comma}", f"+{comma}", f"0{comma}", f"\t{comma}"):
        assert text({key: -100}) == banned, key
    for form in ({str(comma): -100, ",": 100}, [[comma, 100], [comma, -100]]):
        assert text(form) == text(None), form  # -100 and 100: no bias
    assert text([[comma, -60], [",", -40]]) == banned


def test_list_models(client: openai.OpenAI, server: Server) -> None:
    ids = {m.id for m in client.models.list()}
    assert {SMOL, GEMMA} <= ids
    validate("ListModelsResponse", httpx.get(server.url + "/v1/models").json())


def test_retrieve_a_model(client: openai.OpenAI, server: Server) -> None:
    """OpenAI's `models.retrieve` (GET /v1/models/{id}): LiteLLM and OpenAI serve it."""
    model = client.models.retrieve(SMOL)
    assert model.id == SMOL and model.object == "model" and model.created > 0
    validate("Model", httpx.get(server.url + f"/v1/models/{GEMMA}").json())
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.response.json()["error"]["code"] == "model_not_found"


def test_unknown_model_is_404_never_a_fallback(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    body = info.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION, stream=True)


def test_a_404_names_the_model_a_name_as_typed_may_mean(client: openai.OpenAI) -> None:
    """A name typed as a user reads it (lower case, no quantization, Ollama's `name:tag`) is
    a 404 that names the model it may mean; a name like no model's says where they are listed."""
    for typed in (SMOL.lower(), SMOL.rsplit(".", 1)[0], "smollm2:135m"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=typed, messages=QUESTION, max_tokens=2)
        message = info.value.response.json()["error"]["message"]
        assert message == f"The model '{typed}' does not exist; did you mean '{SMOL}'?"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(GEMMA.upper())
    assert info.value.response.json()["error"]["message"].endswith(f"did you mean '{GEMMA}'?")
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    message = info.value.response.json()["error"]["message"]
    assert message == "The model 'gpt-4o' does not exist (GET /v1/models lists the models)"


def test_an_image_is_refused_and_a_refusal_in_history_is_taken(client: openai.OpenAI) -> None:
    """Through the SDK: an image part is a BadRequestError with a code and a reason (it was
    pydantic's union message, code null); an assistant's `refusal` part is its text."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}, image]}],  # type: ignore[list-item]
            max_tokens=2,
        )
    assert refused.value.code == "unsupported_value"
    assert refused.value.param == "messages.[0].content.[1].type"
    history: list[Any] = [
        {"role": "user", "content": "Tell me a secret."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
        {"role": "user", "content": "Why not?"},
    ]
    done = client.chat.completions.create(model=SMOL, messages=history, max_tokens=2)
    assert done.choices[0].message.content


def test_models_delete_is_a_405_that_says_what_is_allowed(client: openai.OpenAI) -> None:
    """Its `Allow` header was empty."""
    with pytest.raises(openai.APIStatusError) as refused:
        client.models.delete(SMOL)
    assert refused.value.status_code == 405
    assert refused.value.response.headers["allow"] == "GET, HEAD"
