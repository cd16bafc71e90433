"""Several answers in one request (`n`, a completion's list of prompts, prompts as token ids)
and log-probabilities (`logprobs`, `top_logprobs`, `echo`), on the bundled models through a
real server and the official client, each response checked against OpenAI's schema."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from openai_schema import validate
from servers import GEMMA, SMOL, Server

QUESTION = [{"role": "user", "content": "Name a colour."}]


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    raw = client.chat.completions.with_raw_response.create(
        model=SMOL, messages=QUESTION, max_tokens=12, **kw
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    return raw.parse()


def complete(client: openai.OpenAI, **kw: Any) -> Any:
    kw = {"model": GEMMA, "max_tokens": 8, **kw}
    raw = client.completions.with_raw_response.create(**kw)
    validate("CreateCompletionResponse", raw.http_response.json())
    return raw.parse()


# -- n ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 8])
def test_n_answers_with_a_seed_are_numbered_and_differ(client: openai.OpenAI, n: int) -> None:
    one = chat(client, n=1, temperature=1.0, seed=7)
    done = chat(client, n=n, temperature=1.0, seed=7)
    assert [c.index for c in done.choices] == list(range(n))
    texts = [c.message.content for c in done.choices]
    assert all(texts)
    assert texts[0] == one.choices[0].message.content  # choice 0 keeps the request's seed
    if n == 8:
        assert len(set(texts)) > 1  # each choice its own seed
    # the prompt counted once, every answer's tokens
    assert done.usage.prompt_tokens == one.usage.prompt_tokens
    assert (
        done.usage.completion_tokens == sum(len(client_tokens(client, t)) for t in texts)
        or done.usage.completion_tokens >= n
    )


def client_tokens(client: openai.OpenAI, text: str | None) -> list[int]:
    r = httpx.post(
        str(client.base_url).replace("/v1/", "/tokenize"),
        json={"model": SMOL, "content": text or ""},
    )
    return list(r.json()["tokens"])


def test_n_at_temperature_zero_gives_equal_answers(client: openai.OpenAI) -> None:
    done = chat(client, n=4, temperature=0)
    texts = {c.message.content for c in done.choices}
    assert len(texts) == 1 and texts != {""}


def test_n_same_seed_reproduces_and_streams_the_same(client: openai.OpenAI) -> None:
    whole = chat(client, n=3, temperature=0.9, seed=123)
    again = chat(client, n=3, temperature=0.9, seed=123)
    assert [c.message.content for c in whole.choices] == [c.message.content for c in again.choices]
    parts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        max_tokens=12,
        n=3,
        temperature=0.9,
        seed=123,
        stream=True,
        stream_options={"include_usage": True},
    ):
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert parts == {c.index: c.message.content for c in whole.choices}
    assert set(finishes) == {0, 1, 2}
    assert usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completion_n_with_stream(client: openai.OpenAI) -> None:
    """Streamed or not, a seed gives the same answers, from the same prompt-cache state: a
    prompt evaluated whole, or only its tail after a reused prefix, gives logits that differ
    in rounding on some CPUs (as in llama-server), so both requests follow one that leaves
    the prompt cached."""
    complete(client, prompt="The sky is", n=2, temperature=0.8, seed=5)
    whole = complete(client, prompt="The sky is", n=2, temperature=0.8, seed=5)
    parts: dict[int, str] = {}
    for chunk in client.completions.create(
        model=GEMMA, prompt="The sky is", max_tokens=8, n=2, temperature=0.8, seed=5, stream=True
    ):
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
    assert parts == {c.index: c.text for c in whole.choices}


# -- prompt lists and token ids ---------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 16])
def test_prompt_lists_answer_each_prompt_in_order(client: openai.OpenAI, count: int) -> None:
    """Each prompt gets its own answer, in the prompts' order: every echoed answer starts with
    its own prompt, and the first token of each is the one that prompt gets alone. Only the
    first token is compared: llama.cpp's arithmetic depends on how many sequences share a
    batch, so a near-tie later in a greedy answer can go either way (llama-server's too)."""
    prompts = [f"Item {i}: the number {i} plus one is" for i in range(count)]
    echoed = complete(client, prompt=prompts, temperature=0, echo=True)
    assert [c.index for c in echoed.choices] == list(range(count))
    for prompt, choice in zip(prompts, echoed.choices, strict=True):
        assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    done = complete(client, prompt=prompts, temperature=0, max_tokens=1)
    for i in sorted({0, count // 2, count - 1}):
        alone = complete(client, prompt=prompts[i], temperature=0, max_tokens=1)
        assert done.choices[i].text == alone.choices[0].text
    singles = [complete(client, prompt=p, temperature=0).usage for p in prompts[:2]]
    if count >= 2:
        assert done.usage.prompt_tokens >= sum(u.prompt_tokens for u in singles)


def test_prompt_lists_times_n_are_numbered_prompt_by_prompt(client: openai.OpenAI) -> None:
    done = complete(client, prompt=["Red is a", "Two plus two is"], n=2, temperature=0)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert done.choices[0].text == done.choices[1].text
    assert done.choices[2].text == done.choices[3].text
    assert done.choices[0].text != done.choices[2].text


def tokenize(server: Server, model: str, text: str) -> list[int]:
    """As a text prompt is evaluated: with the model's BOS."""
    body = {"model": model, "content": text, "add_special": True}
    r = httpx.post(server.url + "/tokenize", json=body)
    return list(r.json()["tokens"])


def test_prompts_as_token_ids_answer_as_their_text(server: Server, client: openai.OpenAI) -> None:
    texts = ["The capital of France is", "One, two, three,"]
    ids = [tokenize(server, GEMMA, t) for t in texts]
    by_text = complete(client, prompt=texts, temperature=0)
    one = complete(client, prompt=ids[0], temperature=0)
    many = complete(client, prompt=ids, temperature=0)
    assert one.choices[0].text == by_text.choices[0].text
    assert [c.text for c in many.choices] == [c.text for c in by_text.choices]
    echoed = complete(client, prompt=ids[1], temperature=0, echo=True, max_tokens=2)
    plain = complete(client, prompt=ids[1], temperature=0, max_tokens=2)
    detok = httpx.post(server.url + "/detokenize", json={"model": GEMMA, "tokens": ids[1]})
    assert echoed.choices[0].text == detok.json()["content"] + plain.choices[0].text


# -- logprobs ---------------------------------------------------------------------------------


def test_chat_logprobs_greedy_pick_is_the_likeliest(client: openai.OpenAI) -> None:
    done = chat(client, temperature=0, logprobs=True, top_logprobs=5)
    content = done.choices[0].logprobs.content
    assert content, "no logprobs"
    assert "".join(t.token for t in content) == done.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 5
        assert t.logprob == pytest.approx(max(x.logprob for x in t.top_logprobs), abs=1e-5)
        assert t.token == t.top_logprobs[0].token
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-5
        assert bytes(t.bytes or []) == t.token.encode()
        assert t.logprob <= 0


def test_chat_logprobs_streamed_equal_whole(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"temperature": 0.7, "seed": 3, "logprobs": True, "top_logprobs": 2}
    whole = chat(client, **kw).choices[0].logprobs.content
    streamed = []
    for chunk in client.chat.completions.create(
        model=SMOL, messages=QUESTION, max_tokens=12, stream=True, **kw
    ):
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [
        (t.token, round(t.logprob, 4)) for t in whole
    ]


def test_chat_without_logprobs_has_none(client: openai.OpenAI) -> None:
    assert chat(client, temperature=0).choices[0].logprobs is None


def test_completion_logprobs_shape_and_offsets(client: openai.OpenAI) -> None:
    prompt = "The sky is"
    done = complete(client, prompt=prompt, temperature=0, logprobs=3)
    lp = done.choices[0].logprobs
    assert lp is not None and lp.tokens
    assert "".join(lp.tokens) == done.choices[0].text
    n = len(lp.tokens)
    assert (
        len(lp.token_logprobs or []) == len(lp.top_logprobs or []) == len(lp.text_offset or []) == n
    )
    offset = len(prompt)  # counted from the prompt's start, as OpenAI's
    for token, at, top, chosen in zip(
        lp.tokens, lp.text_offset or [], lp.top_logprobs or [], lp.token_logprobs or [], strict=True
    ):
        assert at == offset
        offset += len(token)
        assert len(top) <= 3 and chosen == pytest.approx(max(top.values()), abs=1e-5)


def offsets(done: Any) -> list[list[int]]:
    return [c.logprobs.text_offset for c in done.choices]


def streamed_offsets(client: openai.OpenAI, **kw: Any) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for chunk in client.completions.create(model=GEMMA, max_tokens=8, stream=True, **kw):
        for c in chunk.choices:
            if c.logprobs:
                out.setdefault(c.index, []).extend(c.logprobs.text_offset or [])
    return [out[i] for i in sorted(out)]


def test_text_offsets_count_from_the_prompts_start_with_echo_or_not(
    server: Server, client: openai.OpenAI
) -> None:
    """OpenAI's `text_offset` counts from the start of the prompt, echoed or not. Without
    `echo` they began at 0 (streamed too), where with it the same tokens' offsets counted the
    prompt: the two modes disagreed (found from outside)."""
    prompts = ["The capital of France is", "2+2="]
    kw: dict[str, Any] = {"prompt": prompts, "n": 2, "temperature": 0, "logprobs": 1}
    plain = complete(client, **kw)
    echoed = complete(client, **kw, echo=True)
    for i, c in enumerate(plain.choices):
        prompt = prompts[c.index // 2]
        assert c.logprobs.text_offset[0] == len(prompt)
        at = len(prompt)
        for token, offset in zip(c.logprobs.tokens, c.logprobs.text_offset, strict=True):
            assert offset == at
            at += len(token)
        # with echo, the answer's tokens are the last ones, at the same offsets
        tail = echoed.choices[i].logprobs.text_offset[-len(c.logprobs.tokens) :]
        assert tail == c.logprobs.text_offset
    assert streamed_offsets(client, **kw) == offsets(plain)
    assert streamed_offsets(client, **kw, echo=True) == offsets(echoed)
    ids = tokenize(server, GEMMA, prompts[0])  # its text is what `echo` gives back
    by_ids = complete(client, prompt=ids, temperature=0, logprobs=1)
    text = complete(client, prompt=ids, temperature=0, echo=True, max_tokens=0).choices[0].text
    assert by_ids.choices[0].logprobs.text_offset[0] == len(text) > 0
    assert streamed_offsets(client, prompt=ids, temperature=0, logprobs=1) == offsets(by_ids)


def test_completion_echo_with_logprobs_covers_the_prompt(client: openai.OpenAI) -> None:
    prompt = "Paris is the capital of"
    done = complete(client, prompt=prompt, temperature=0, logprobs=1, echo=True, max_tokens=3)
    choice = done.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt)
    assert "".join(lp.tokens) == choice.text
    prompt_part = [t for t, at in zip(lp.tokens, lp.text_offset, strict=True) if at < len(prompt)]
    assert "".join(prompt_part) == prompt
    assert all(v is None or v <= 0 for v in lp.token_logprobs)
    streamed_text = ""
    streamed_tokens: list[str] = []
    for chunk in client.completions.create(
        model=GEMMA, prompt=prompt, temperature=0, logprobs=1, echo=True, max_tokens=3, stream=True
    ):
        for c in chunk.choices:
            streamed_text += c.text
            if c.logprobs:
                streamed_tokens.extend(c.logprobs.tokens or [])
    assert streamed_text == choice.text
    assert streamed_tokens == lp.tokens


@pytest.mark.parametrize("n_probs", [0, 1, 2])
def test_completion_top_logprobs_hold_the_chosen_token(client: openai.OpenAI, n_probs: int) -> None:
    """OpenAI's `logprobs: N` gives the N likeliest tokens and always the chosen one (up to
    N + 1). An echoed prompt token outside the N likeliest was missing from its own entry
    (" capital" at -11.45: `{"-": -0.90}`), a sampled one too, and `logprobs: 0` gave empty
    entries (found from outside)."""
    prompt = "The capital of France is"
    kw: dict[str, Any] = {"model": GEMMA, "prompt": prompt, "logprobs": n_probs, "echo": True}
    done = complete(client, **kw, temperature=1.5, seed=5, max_tokens=8)
    lp = done.choices[0].logprobs
    entries = zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset, strict=True)
    beyond = {"prompt": 0, "answer": 0}  # entries whose chosen token is not among the N
    for token, chosen, top, at in entries:
        assert top[token] == pytest.approx(chosen)
        others = [v for t, v in top.items() if t != token]
        assert len(others) in (n_probs - 1, n_probs)
        if len(others) == n_probs:
            assert all(v >= chosen for v in others)
            beyond["prompt" if at < len(prompt) else "answer"] += 1
    assert all(beyond.values()), beyond  # both kinds are checked
    streamed = list(client.completions.create(**kw, temperature=0, max_tokens=3, stream=True))
    whole = complete(client, **kw, temperature=0, max_tokens=3).choices[0].logprobs.top_logprobs
    tops = [ch.logprobs.top_logprobs or [] for c in streamed for ch in c.choices if ch.logprobs]
    assert [t for top in tops for t in top] == whole


def covers(tokens: list[str], text: str) -> bool:
    """Whether `tokens` are those of `text`: each one's text is in it, the last's maybe only
    in part."""
    joined = "".join(tokens)
    return joined.startswith(text) and len(joined) - len(tokens[-1]) < len(text)


@pytest.mark.parametrize(("stop", "text", "generated"), [("ari", " P", 1), ("is.", " Par", 2)])
def test_logprobs_list_the_tokens_of_the_text_a_stop_string_leaves(
    client: openai.OpenAI, stop: str, text: str, generated: int
) -> None:
    """A stop string cuts the text, and the log-probabilities follow the text: the tokens
    listed are those whose text is in the answer (the last one's possibly in part, where the
    stop string begins inside it); a token wholly inside the stop string is left out, though
    `usage` counts it (it was generated). Streamed as whole, on chat as on completions."""
    prompt = "The capital of France is"
    kw: dict[str, Any] = {"model": SMOL, "prompt": prompt, "temperature": 0, "max_tokens": 5}
    free = complete(client, **kw, logprobs=1).choices[0].logprobs.tokens
    assert free[:2] == [" Paris", "."]  # the answer the stop strings cut
    done = complete(client, **kw, logprobs=1, stop=[stop])
    choice = done.choices[0]
    assert (choice.text, choice.logprobs.tokens) == (text, [" Paris"])
    assert done.usage.completion_tokens == generated
    streamed = list(client.completions.create(**kw, logprobs=1, stop=[stop], stream=True))
    assert "".join(ch.text for c in streamed for ch in c.choices) == text
    lps = [ch.logprobs for c in streamed for ch in c.choices if ch.logprobs]
    assert [t for lp in lps for t in lp.tokens or []] == choice.logprobs.tokens
    question = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(
        model=SMOL, messages=question, temperature=0, max_tokens=12, logprobs=True, stop=[stop]
    ).choices[0]
    assert chat.message.content and chat.message.content.endswith(text.strip())
    assert covers([t.token for t in chat.logprobs.content], chat.message.content)


def test_max_tokens_0_with_echo_and_logprobs_scores_the_prompt(client: openai.OpenAI) -> None:
    """How lm-eval-harness scores a prompt; it was a 400 (max_tokens from 1), as OpenAI's
    schema allows 0. Without echo, 0 is an empty answer, as OpenAI gives."""
    prompt = "The capital of France is Paris"
    kw: dict[str, Any] = {"model": GEMMA, "prompt": prompt, "max_tokens": 0, "logprobs": 1}
    scored = complete(client, **kw, echo=True)
    choice = scored.choices[0]
    assert (choice.text, choice.finish_reason) == (prompt, "length")
    assert "".join(choice.logprobs.tokens) == prompt
    assert all(v <= 0 for v in choice.logprobs.token_logprobs)
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens > 0
    longer = complete(client, **{**kw, "max_tokens": 2}, echo=True, temperature=0)
    n = len(choice.logprobs.tokens)
    assert longer.choices[0].logprobs.token_logprobs[:n] == pytest.approx(
        choice.logprobs.token_logprobs
    )
    streamed = list(client.completions.create(**kw, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == prompt
    assert streamed[-1].choices[0].finish_reason == "length"
    empty = complete(client, **kw)
    assert (empty.choices[0].text, empty.choices[0].finish_reason) == ("", "length")
    assert empty.usage.completion_tokens == 0


# -- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": SMOL, "messages": QUESTION, "n": 0}, "n"),
        ("/v1/chat/completions", {"model": SMOL, "messages": QUESTION, "n": 9}, "n"),
        (
            "/v1/chat/completions",
            {"model": SMOL, "messages": QUESTION, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            {"model": SMOL, "messages": QUESTION, "top_logprobs": 2},
            "top_logprobs",
        ),
        ("/v1/completions", {"model": GEMMA, "prompt": []}, "prompt"),
        ("/v1/completions", {"model": GEMMA, "prompt": [[]]}, "prompt"),
        ("/v1/completions", {"model": GEMMA, "prompt": [10**9]}, "prompt"),
        ("/v1/completions", {"model": GEMMA, "prompt": "x", "logprobs": 21}, "logprobs"),
    ],
)
def test_bad_values_are_400_naming_the_parameter(
    server: Server, path: str, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["param"] == param, r.text


def test_logprobs_of_a_constrained_answer_list_only_allowed_tokens(client: openai.OpenAI) -> None:
    """Under a JSON schema the mask is part of the distribution: where it allows few tokens,
    fewer than `top_logprobs` are listed, and every one is finite."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    done = chat(
        client,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    content = done.choices[0].logprobs.content
    assert done.choices[0].message.content.startswith('{"ok":')
    assert any(len(t.top_logprobs) < 20 for t in content)  # e.g. after '{"ok":', two tokens
    assert all(math.isfinite(x.logprob) for t in content for x in t.top_logprobs)
