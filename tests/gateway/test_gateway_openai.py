"""The gateway end to end: a real server on the bundled model, driven by the official `openai`
client with API keys: each refusal is the exception the client raises for it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gw_helpers import MASTER, bearer

from llm_router import defaults
from servers import GEMMA, SMOL, Server, link_models, within_one_minute_window

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def gated(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, gemma_gguf: Path
) -> Iterator[Server]:
    """The bundled models as `make run` serves them: SmolLM2, Gemma and all-MiniLM-L6-v2."""
    workdir = tmp_path_factory.mktemp("gated")
    models = link_models(workdir / "models", smollm2_gguf, gemma_gguf)
    assert defaults.place_minilm(models) is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
        server = Server(
            workdir, {"models_dir": str(models), "data_dir": str(workdir / "data")}
        ).start()
    yield server
    server.stop()


def make_key(server: Server, name: str, **spec: object) -> str:
    r = httpx.post(
        server.url + "/admin/keys", json={"name": name, **spec}, headers=bearer(MASTER), timeout=10
    )
    assert r.status_code == 201, r.text
    secret: str = r.json()["key"]
    return secret


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_a_key_serves_chat_plain_and_streamed_and_its_usage_is_counted(gated: Server) -> None:
    key = make_key(gated, "app")
    with client(gated, key) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=HELLO,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        chat = raw.parse()
        assert chat.usage is not None and chat.choices[0].message.content
        stream = c.chat.completions.create(
            model=SMOL,
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None
    r = httpx.get(
        gated.url + "/admin/usage", params={"group_by": "key,model,target"}, headers=bearer(MASTER)
    )
    [row] = [row for row in r.json()["data"] if row["key"] == "app"]
    assert (row["model"], row["target"], row["requests"]) == (SMOL, SMOL, 2)
    assert row["prompt_tokens"] == chat.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
    assert row["completion_tokens"] == (
        chat.usage.completion_tokens + chunks[-1].usage.completion_tokens
    )


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_the_client_leaves_is_still_counted(gated: Server, n: int) -> None:
    """A client that reads part of a stream and hangs up used tokens all the same: its key's
    usage counts them (estimated from the text sent: the target never reported a usage), so
    leaving before the end is no way around a budget or a tokens-per-minute limit."""
    name = f"leaver-{n}"
    key = make_key(gated, name, tpm=1_000_000)
    texts = []
    with client(gated, key) as c:
        stream = c.chat.completions.create(
            model=SMOL,
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=400,
            temperature=0,
            stream=True,
            n=n,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
            if len(texts) == 20:
                break
        stream.close()  # hangs up with ~380 tokens to go
    sent = len("".join(texts))
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while not rows and time.monotonic() < deadline:
        time.sleep(0.2)
        r = httpx.get(gated.url + "/admin/usage", headers=bearer(MASTER), timeout=10)
        rows = [row for row in r.json()["data"] if row["key"] == name]
    assert len(rows) == 1, "the request was not recorded"
    row = rows[0]
    assert row["requests"] == 1 and row["model"] == SMOL
    assert isinstance(row["prompt_tokens"], int) and row["prompt_tokens"] > 0
    assert isinstance(row["completion_tokens"], int)
    assert sent // 4 <= row["completion_tokens"] < 400 * n, (row, sent)


def test_refusals_are_the_clients_own_exceptions(gated: Server) -> None:
    with client(gated, "sk-llmr-wrong") as c, pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    reader = make_key(gated, "reader", scopes=["read"])
    with client(gated, reader) as c:
        assert SMOL in {m.id for m in c.models.list()}
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    narrow = make_key(gated, "narrow", models=["gemma-3-270m-q4_k_m"])
    with client(gated, narrow) as c, pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_over_the_limit_is_a_rate_limit_error_with_openais_headers(gated: Server) -> None:
    key = make_key(gated, "limited", rpm=1)
    with client(gated, key) as c:
        raw = c.completions.with_raw_response.create(model=SMOL, prompt="Hi", max_tokens=2)
        assert raw.headers["x-ratelimit-limit-requests"] == "1"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model=SMOL, prompt="Hi", max_tokens=2)
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


def _events(server: Server, key: str, until: str, seen: list[dict[str, object]]) -> None:
    """Collect /models/events as `key` sees them until `until` is loaded (or 60 s)."""
    deadline = time.monotonic() + 60
    with httpx.stream("GET", server.url + "/models/events", headers=bearer(key), timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                seen.append(event)
                if event.get("model") == until and event.get("event") == "loaded":
                    return
            if time.monotonic() > deadline:
                return


def test_model_events_show_only_the_models_a_key_may_use(gated: Server) -> None:
    key = make_key(gated, "smol-watcher", scopes=["read"], models=[SMOL])
    for model in (SMOL, GEMMA):
        httpx.post(gated.url + "/models/unload", json={"model": model}, headers=bearer(MASTER))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both unloaded (the master may list them)
        data = httpx.get(gated.url + "/models", headers=bearer(MASTER), timeout=10).json()
        if all(
            m["status"]["value"] == "unloaded" for m in data["data"] if m["id"] in (SMOL, GEMMA)
        ):
            break
        time.sleep(0.1)
    mine: list[dict[str, object]] = []
    everyone: list[dict[str, object]] = []
    watchers = [
        threading.Thread(target=_events, args=(gated, key, SMOL, mine)),
        threading.Thread(target=_events, args=(gated, MASTER, SMOL, everyone)),
    ]
    for w in watchers:
        w.start()
    time.sleep(1)  # both subscribed
    for model in (GEMMA, SMOL):
        r = httpx.post(gated.url + "/models/load", json={"model": model}, headers=bearer(MASTER))
        assert r.status_code == 200, r.text
    for w in watchers:
        w.join(90)
    assert any(e["model"] == GEMMA for e in everyone)  # the master sees Gemma load
    assert {e["model"] for e in mine} == {SMOL}  # the key sees SMOL's events only
    assert any(e["event"] == "loaded" for e in mine)


def test_the_prompt_is_counted_by_the_models_tokenizer_before_it_runs(gated: Server) -> None:
    """A key with a small tokens-per-minute limit: the prompt is charged (exactly, with the
    model's own tokenizer) before it runs, a prompt longer than what is left is refused before
    anything is generated, and the window holds exactly the usage of what was served."""
    long_prompt = [{"role": "user", "content": "Tell me about the sea. " * 40}]
    rendered = httpx.post(
        gated.url + "/apply-template",
        json={"model": SMOL, "messages": long_prompt},
        headers=bearer(MASTER),
        timeout=30,
    ).json()["prompt"]
    tokenized = httpx.post(
        gated.url + "/tokenize",
        json={"model": SMOL, "content": rendered, "add_special": True},
        headers=bearer(MASTER),
        timeout=30,
    ).json()["tokens"]
    # the long prompt fits in a minute's tokens, but not in what the first request leaves
    tpm = len(tokenized) + 10
    within_one_minute_window(20)  # exact header values: no window slides meanwhile
    key = make_key(gated, "tpm-small", tpm=tpm)
    with client(gated, key) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=HELLO,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
        first = raw.parse()
        assert first.usage is not None
        # Counted before it ran: the header says what was left once its prompt and its
        # max_tokens were charged (the 4 it may generate, as OpenAI counts them).
        left_then = tpm - first.usage.prompt_tokens - 4
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(left_then)
        assert raw.headers["x-ratelimit-limit-tokens"] == str(tpm)

        assert first.usage.total_tokens > 10
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(
                model=SMOL,
                messages=long_prompt,  # type: ignore[arg-type]
                max_tokens=4,
                stream=True,
            )
        refused = info.value.response
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        message = refused.json()["error"]["message"]
        assert f"the prompt ({len(tokenized)} tokens) and max_tokens (4) need" in message
        assert int(refused.headers["retry-after"]) >= 1
        left = tpm - first.usage.total_tokens
        assert refused.headers["x-ratelimit-remaining-tokens"] == str(left)

        # one larger than a whole minute's tokens: no wait makes it fit, so no Retry-After
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(
                model=SMOL,
                messages=[{"role": "user", "content": "Tell me about the sea. " * 80}],
                max_tokens=4,
            )
        assert "Request too large" in info.value.message
        assert "retry-after" not in info.value.response.headers
        assert info.value.response.headers["x-should-retry"] == "false"  # the client gave up

        raw = c.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=HELLO,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
        third = raw.parse()
        assert third.usage is not None
        # The window holds the first request's usage exactly, and this one's prompt and
        # max_tokens.
        left_now = left - third.usage.prompt_tokens - 4
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(left_now)

    r = httpx.get(gated.url + "/admin/usage", params={"group_by": "key"}, headers=bearer(MASTER))
    [row] = [row for row in r.json()["data"] if row["key"] == "tpm-small"]
    assert (row["requests"], row["errors"]) == (4, 2)
    assert row["completion_tokens"] == first.usage.completion_tokens + third.usage.completion_tokens
    assert row["prompt_tokens"] == first.usage.prompt_tokens + third.usage.prompt_tokens


def test_embedding_inputs_are_counted_by_the_models_tokenizer_before_they_run(
    gated: Server,
) -> None:
    """A key with a small tokens-per-minute limit embeds on all-MiniLM-L6-v2: the inputs are
    charged with the model's own count before they run. 40 one-letter words (79 characters,
    ~20 tokens at 4 characters a token) are 42 WordPiece tokens with [CLS] and [SEP]: over the
    key's 30, refused before anything is embedded; a short input then passes, and the window
    holds exactly its usage."""
    tpm = 30
    within_one_minute_window(20)  # exact header values: no window slides meanwhile
    key = make_key(gated, "embed-tpm", tpm=tpm)
    letters = " ".join("abcdefghijklmnopqrstuvwxyzabcdefghijklmn")
    with client(gated, key) as c:
        with pytest.raises(openai.RateLimitError) as info:
            c.embeddings.create(model=defaults.MINILM_ID, input=letters)
        refused = info.value.response
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "limit 30, the prompt has 42" in refused.json()["error"]["message"]
        assert "retry-after" not in refused.headers  # larger than a whole minute of tokens
        assert refused.headers["x-ratelimit-remaining-tokens"] == str(tpm)  # nothing charged
        raw = c.embeddings.with_raw_response.create(model=defaults.MINILM_ID, input="Hello there")
        done = raw.parse()
        assert len(done.data[0].embedding) == 384
        assert done.usage.prompt_tokens == 4  # [CLS] hello there [SEP]
        left = tpm - done.usage.prompt_tokens
        assert raw.headers["x-ratelimit-remaining-tokens"] == str(left)
