"""Per-key limits and budgets, in process: requests and tokens per minute, requests at once,
the defaults for every key, budgets from the config's prices, and OpenAI's rate-limit headers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from gw_helpers import (
    CHAT_BODY,
    MASTER,
    Gw,
    bearer,
    gateway_app,
    window_total,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inproc import fake_models
from llm_router.config import GatewaySettings
from llm_router.errors import RateLimited
from llm_router.gateway.keys import ApiKey
from llm_router.gateway.limits import Admission, Limiter, reset_text
from openai_schema import validate
from servers import within_one_minute_window

HEADERS = ("limit", "remaining", "reset")


def assert_refused(r: object, code: str) -> dict[str, object]:
    import httpx

    assert isinstance(r, httpx.Response)
    assert r.status_code == 429, r.text
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == code
    assert int(r.headers["retry-after"]) >= 1
    body: dict[str, object] = r.json()["error"]
    return body


async def test_requests_per_minute_then_429_with_headers_on_every_answer(gw: Gw) -> None:
    secret = await gw.key("rpm3", rpm=3)
    answers = [
        await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        for _ in range(4)
    ]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
    for r in answers:
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "3 requests per minute" in str(
        assert_refused(answers[3], "rate_limit_exceeded")["message"]
    )
    # Another key, and the master key, are not held back by this one's limit.
    other = await gw.key("other-key")
    assert (
        await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(other))
    ).status_code == 200
    assert (
        "x-ratelimit-limit-requests"
        not in (
            await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(MASTER))
        ).headers
    )


async def test_refusals_before_the_limits_carry_the_headers_too(
    tmp_path: Path, master_env: str
) -> None:
    """A 404 of a key's allow-list and a 429 of its budget (refused before the limits count
    the request) had no x-ratelimit-* headers, though every inference answer to a key with
    a limit carries them: they say the windows as they are (the refusal not counted)."""
    models = fake_models(tmp_path, chat={}, other={})
    models[0].cost.input = models[0].cost.output = 1_000_000.0  # 1 per token
    async with gateway_app(tmp_path, models=models) as gw:
        auth = bearer(await gw.key("listed", rpm=5, models=["chat"], budget=1.0))
        outside = {**CHAT_BODY, "model": "other"}
        within_one_minute_window(5)
        answers = [
            await gw.client.post("/v1/chat/completions", json=body, headers=auth)
            for body in (outside, CHAT_BODY, outside, CHAT_BODY)
        ]
        assert [r.status_code for r in answers] == [404, 200, 404, 429]
        assert answers[3].json()["error"]["code"] == "insufficient_quota"
        remaining = [r.headers.get("x-ratelimit-remaining-requests") for r in answers]
        assert remaining == ["5", "4", "4", "4"]
        assert {r.headers["x-ratelimit-limit-requests"] for r in answers} == {"5"}


async def test_tokens_per_minute_count_prompt_and_completion(gw: Gw) -> None:
    """The prompt is counted by the model's tokenizer (the fake engine's: bytes of the chat
    template's text) before it runs, with the max_tokens it may generate (as OpenAI counts
    them); the window then holds the usage the answer reports (the fake engine's: words),
    the unused part of max_tokens given back."""
    within_one_minute_window(5)
    secret = await gw.key("tpm", tpm=200)
    first = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert first.status_code == 200, first.text
    counted = len("user: Hello\nassistant:") + 1 + 3  # bytes, a BOS, and max_tokens
    assert first.headers["x-ratelimit-remaining-tokens"] == str(200 - counted)
    used = first.json()["usage"]["total_tokens"]
    assert 0 < used < counted

    second = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == str(200 - used - counted)

    total = used + second.json()["usage"]["total_tokens"]
    assert await window_total(gw.gateway.limiter, 200, "tpm") == total  # the usage, exactly


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_requests_at_once_never_pass_tokens_per_minute_together(
    tmp_path: Path, master_env: str, seed: int
) -> None:
    """Only the prompt was counted before a request ran, so 20 requests at once each fitted
    and together used 10x a key's tokens per minute (found from outside). A request's
    max_tokens is now counted with its prompt and what it did not use given back: requests
    sent at once, of random prompts and max_tokens on a slow model, never hold more than the
    limit between them, and the window ends holding their usage exactly."""
    import random

    rng = random.Random(seed)
    tpm = rng.randint(150, 400)
    models = fake_models(tmp_path, chat={"token_seconds": 0.02, "reply": "w " * 40})
    async with gateway_app(tmp_path, models=models) as gw:
        within_one_minute_window(10)
        secret = await gw.key("burst", tpm=tpm)

        async def ask() -> httpx.Response:
            words = " ".join(["hi"] * rng.randint(1, 12))
            body = {**CHAT_BODY, "messages": [{"role": "user", "content": words}]}
            body["max_tokens"] = rng.randint(1, 40)
            return await gw.client.post("/v1/chat/completions", json=body, headers=bearer(secret))

        answers = await asyncio.gather(*(ask() for _ in range(20)))
        served = [r for r in answers if r.status_code == 200]
        assert served and len(served) < 20, [r.status_code for r in answers]
        assert all(r.status_code == 429 for r in answers if r.status_code != 200)
        used = sum(r.json()["usage"]["total_tokens"] for r in served)
        assert used <= tpm
        assert await window_total(gw.gateway.limiter, tpm, "burst") == used


async def test_a_prompt_longer_than_what_is_left_is_refused_before_it_runs(gw: Gw) -> None:
    """The fake engine counts a prompt a byte a token before it runs (16 words: 98 tokens
    through its template) and reports 1 prompt token and 3 completion tokens for "Hello".
    With 100 tokens a minute, the 98 fit a minute but not the 96 the first request left: a 429
    with Retry-After; 40 words (218 tokens) never fit: a 429 without it (OpenAI's "Request
    too large")."""
    within_one_minute_window(20)  # exact header values: no window slides meanwhile
    secret = await gw.key("short-tpm", tpm=100)
    first = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 4, first.text
    unbounded = {k: v for k, v in CHAT_BODY.items() if k != "max_tokens"}  # the prompt alone
    long_body = {**unbounded, "messages": [{"role": "user", "content": "word " * 16}]}
    for stream in (False, True):
        r = await gw.client.post(
            "/v1/chat/completions", json={**long_body, "stream": stream}, headers=bearer(secret)
        )
        message = str(assert_refused(r, "rate_limit_exceeded")["message"])
        assert "the prompt has 98 tokens and 96 of its 100 tokens per minute" in message
        assert r.headers["x-ratelimit-limit-tokens"] == "100"
        assert r.headers["x-ratelimit-remaining-tokens"] == "96"  # nothing was charged
    huge = {**unbounded, "messages": [{"role": "user", "content": "word " * 40}]}
    r = await gw.client.post("/v1/chat/completions", json=huge, headers=bearer(secret))
    assert r.status_code == 429 and "retry-after" not in r.headers, r.headers
    assert r.headers["x-should-retry"] == "false"
    assert "limit 100, the prompt has 218" in r.json()["error"]["message"]
    # A short prompt still fits, and nothing of the refused ones was generated or charged.
    ok = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert ok.status_code == 200, ok.text
    usage = await gw.client.get("/admin/usage?group_by=key", headers=bearer(MASTER))
    [row] = [r for r in usage.json()["data"] if r["key"] == "short-tpm"]
    assert (row["requests"], row["errors"]) == (5, 3)
    assert row["prompt_tokens"] + row["completion_tokens"] == 2 * ok.json()["usage"]["total_tokens"]


async def test_a_prompt_the_key_cannot_afford_is_not_run_by_another_target(
    tmp_path: Path, master_env: str
) -> None:
    """A key's refusal is not the target's failure: through a route it fell back to the next
    target, and /v1/compare ran the others, each without a check (the key's first refusal
    marked the prompt decided), so any prompt got past tokens per minute (found from
    outside). Now the route answers the 429, and so does every target of a comparison."""
    routes = [{"name": "auto", "strategy": "round-robin", "targets": ["chat", "other"]}]
    models = fake_models(tmp_path, chat={}, other={})
    async with gateway_app(tmp_path, models=models, routes=routes) as gw:
        secret = await gw.key("tight", tpm=100)
        huge = [{"role": "user", "content": "word " * 40}]  # 218 tokens: never fits
        for _ in range(3):  # each target first, in turn
            body = {**CHAT_BODY, "model": "auto", "messages": huge}
            r = await gw.client.post("/v1/chat/completions", json=body, headers=bearer(secret))
            assert r.status_code == 429, r.text
            message = r.json()["error"]["message"]
            assert "limit 100, the prompt (218 tokens) and max_tokens (3) need 221" in message
        ask = {"targets": ["chat", "other"], "messages": huge, "max_tokens": 3}
        r = await gw.client.post("/v1/compare", json=ask, headers=bearer(secret))
        answered = [a for a in r.json().get("data", []) if a.get("choices")]
        assert r.status_code == 429 or not answered, r.text
        usage = await gw.client.get("/admin/usage?group_by=key", headers=bearer(MASTER))
        [row] = [x for x in usage.json()["data"] if x["key"] == "tight"]
        assert row["completion_tokens"] == 0, row  # nothing was generated for the key


async def test_embedding_inputs_longer_than_what_is_left_are_refused_before_they_run(
    gw: Gw,
) -> None:
    """Embeddings are charged before they run too, with the model's own count (the fake
    engine's: one token a word): inputs over what is left of the minute get the 429 and cost
    nothing, though the 4-characters-a-token estimate would have let these in; short ones
    pass and the window then holds their usage."""
    within_one_minute_window(20)
    secret = await gw.key("embed-tpm", tpm=30)
    short = {"model": "chat", "input": "Hello there"}
    ok = await gw.client.post("/v1/embeddings", json=short, headers=bearer(secret))
    assert ok.status_code == 200, ok.text
    used = ok.json()["usage"]["prompt_tokens"]
    assert used == 2
    long_input = {"model": "chat", "input": ["a " * 15, "b " * 14]}  # 29 words, 58 characters
    r = await gw.client.post("/v1/embeddings", json=long_input, headers=bearer(secret))
    message = str(assert_refused(r, "rate_limit_exceeded")["message"])
    assert "the prompt has 29 tokens and 28 of its 30 tokens per minute" in message
    assert r.headers["x-ratelimit-remaining-tokens"] == "28"  # nothing was charged
    assert await window_total(gw.gateway.limiter, 30, "embed-tpm") == used


async def test_requests_at_once(tmp_path: Path, master_env: str) -> None:
    models = fake_models(tmp_path, chat={"token_seconds": 0.05}, other={})
    async with gateway_app(tmp_path, models=models) as gw:
        secret = await gw.key("one-at-once", max_concurrent=1)
        slow = {**CHAT_BODY, "max_tokens": 4}
        first, second = await asyncio.gather(
            gw.client.post("/v1/chat/completions", json=slow, headers=bearer(secret)),
            gw.client.post("/v1/chat/completions", json=slow, headers=bearer(secret)),
        )
        assert first.status_code == 200, first.text
        assert "1 request at once" in str(assert_refused(second, "rate_limit_exceeded")["message"])
        # The slot is given back once the first is done.
        again = await gw.client.post("/v1/chat/completions", json=slow, headers=bearer(secret))
        assert again.status_code == 200
        assert gw.gateway.limiter.in_flight == {}


async def test_the_configured_default_applies_to_keys_without_their_own(
    tmp_path: Path, master_env: str
) -> None:
    async with gateway_app(tmp_path, gateway={"rpm": 1}) as gw:
        plain = await gw.key("plain")
        generous = await gw.key("generous", rpm=100)
        codes = [
            (await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(k)))
            for k in (plain, plain, generous, generous)
        ]
        assert [r.status_code for r in codes] == [200, 429, 200, 200]


async def test_a_spent_budget_is_insufficient_quota(tmp_path: Path, master_env: str) -> None:
    models = fake_models(tmp_path, chat={}, other={})
    models[0].cost.input = models[0].cost.output = 1_000_000.0  # 1 per token
    async with gateway_app(tmp_path, models=models) as gw:
        secret = await gw.key("budgeted", budget=2.0, period="day")
        free = await gw.key("free-model-user", budget=2.0)
        r = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        assert r.status_code == 200
        assert gw.gateway.spent("budgeted") == r.json()["usage"]["total_tokens"] > 2

        r = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        message = assert_refused(r, "insufficient_quota")["message"]
        assert r.json()["error"]["type"] == "insufficient_quota"
        assert "budget of 2.0" in str(message)
        # A local model priced at 0 (the default) costs nothing but still counts tokens.
        for _ in range(3):
            r = await gw.client.post(
                "/v1/chat/completions",
                json={**CHAT_BODY, "model": "other"},
                headers=bearer(free),
            )
            assert r.status_code == 200
        usage = await gw.client.get("/admin/usage?group_by=key", headers=bearer(MASTER))
        rows = {row["key"]: row for row in usage.json()["data"]}
        assert rows["free-model-user"]["cost"] == 0
        assert rows["free-model-user"]["completion_tokens"] > 0
        # The budget is read back from the database after a flush, not only from memory.
        await gw.gateway.refresh()
        assert gw.gateway.spent("budgeted") > 2


def test_reset_text_is_openais_format() -> None:
    assert [reset_text(s) for s in (0.12, 1, 1.2, 59.6, 61, 360)] == [
        "120ms",
        "1s",
        "2s",  # rounded up: the window is whole then, not a moment before
        "1m0s",
        "1m1s",
        "6m0s",
    ]


# -- the limiter's invariants over random schedules ------------------------------------------


async def admit(limiter: Limiter, key: ApiKey) -> Admission:
    """A request let in as the gateway lets it in: on this process's view when it decides
    alone (`admit_now`), else through the storage (`admit`)."""
    return limiter.admit_now(key) or await limiter.admit(key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.integers(1, 20),
    concurrent=st.integers(1, 5),
    steps=st.lists(st.booleans(), min_size=1, max_size=60),
)
def test_the_limiter_never_lets_more_through_than_its_limits(
    rpm: int, concurrent: int, steps: list[bool]
) -> None:
    """True: a request arrives; False: the oldest one in flight ends. All at one instant, the
    first step included (a cold start with everything at once)."""

    async def run() -> None:
        limiter = Limiter(GatewaySettings())
        key = ApiKey(name="k", hash="h", scopes=frozenset(), rpm=rpm, max_concurrent=concurrent)
        held, admitted = [], 0
        for arrives in steps:
            if arrives:
                try:
                    held.append(await admit(limiter, key))
                    admitted += 1
                except RateLimited as exc:
                    assert exc.retry_after >= 1
            elif held:
                limiter.release(held.pop(0))
            assert len(held) == limiter.in_flight.get("k", 0) <= concurrent
            assert admitted <= rpm
        for admission in held:
            limiter.release(admission)
        assert limiter.in_flight == {}
        arrivals = sum(steps)
        if not any(not s for s in steps):  # nothing ended: only the limits decide
            assert admitted == min(arrivals, rpm, concurrent)

    asyncio.run(run())


@pytest.mark.parametrize("tokens", [1, 9, 10, 25])
async def test_tokens_past_the_limit_fill_the_window(tokens: int) -> None:
    """Charges count at once in this process, and in the storage once sent."""
    limiter = Limiter(GatewaySettings())
    key = ApiKey(name="t", hash="h", scopes=frozenset(), tpm=10)
    admission = await limiter.admit(key)
    await limiter.charge(admission, tokens)
    for sent in (False, True):
        if sent:
            await limiter.send_charges()
            limiter.windows.stats_ttl = 0  # read the storage itself from now on
        if tokens >= 10:
            with pytest.raises(RateLimited):
                await limiter.admit(key)
        else:
            again = await limiter.admit(key)
            remaining = dict(again.headers)[b"x-ratelimit-remaining-tokens"]
            assert remaining == str(10 - tokens).encode(), sent
    await limiter.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.integers(1, 400), min_size=0, max_size=3),  # prompts counted (attempts)
            st.integers(0, 400),  # the prompt's usage
            st.integers(0, 400),  # the completion's
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_token_window_ends_up_holding_exactly_the_usage(
    requests: list[tuple[list[int], int, int]],
) -> None:
    """Whatever the prompt counts were (an estimate above or below the usage, a fallback that
    counted it twice, none at all) and whether the first was refused, once every answer is
    charged the window holds the sum of the usage of the requests served."""

    async def run() -> None:
        tpm = 100_000
        limiter = Limiter(GatewaySettings())
        key = ApiKey(name="w", hash="h", scopes=frozenset(), tpm=tpm)
        used = 0
        for counts, prompt, completion in requests:
            admission = await limiter.admit(key)
            try:
                for count in counts:
                    await admission.admit_prompt(count)
            except RateLimited:  # cannot happen under this limit
                raise AssertionError("refused under a generous limit") from None
            await limiter.charge(admission, prompt + completion)
            used += prompt + completion
            assert admission.prompt_charged == 0
        assert await window_total(limiter, tpm, "w") == used
        await limiter.close()

    asyncio.run(run())


async def test_a_refused_prompt_charges_nothing_and_says_what_is_left() -> None:
    limiter = Limiter(GatewaySettings())
    key = ApiKey(name="p", hash="h", scopes=frozenset(), tpm=100)
    first = await limiter.admit(key)
    await first.admit_prompt(60)
    assert dict(first.headers)[b"x-ratelimit-remaining-tokens"] == b"40"
    second = await limiter.admit(key)
    with pytest.raises(RateLimited, match="prompt has 50 tokens and 40 of its 100") as info:
        await second.admit_prompt(50)
    assert info.value.retry_after >= 1
    assert dict(second.headers)[b"x-ratelimit-remaining-tokens"] == b"40"
    assert second.prompt_charged == 0
    await limiter.charge(second, 0)  # its (empty) usage: nothing given back, nothing charged
    await first.admit_prompt(30)  # a later attempt of an admitted request is not refused
    await limiter.charge(first, 70)  # the usage: 20 of the 90 charged come back
    await limiter.send_charges()
    limiter.windows.stats_ttl = 0
    third = await limiter.admit(key)
    assert dict(third.headers)[b"x-ratelimit-remaining-tokens"] == b"30"
    with pytest.raises(RateLimited, match="limit 100, the prompt has 101") as too_large:
        await third.admit_prompt(101)
    assert too_large.value.retry_after is None  # no wait makes it fit: no Retry-After
    await limiter.close()


# -- tokens: on this router's view far from the limit, by the storage near it -----------------


def _remaining_tokens(headers: list[tuple[bytes, bytes]]) -> int:
    return int(dict(headers)[b"x-ratelimit-remaining-tokens"])


async def test_a_prompt_far_from_the_limit_skips_the_storage_and_near_it_is_exact() -> None:
    """Far from the limit a prompt is let in on this router's view of the window, with no
    storage call; near it, by the storage: the prompt that would go over is refused, though
    the earlier prompts were let in on the view and had not reached the storage yet."""
    within_one_minute_window(2)
    limiter = Limiter(GatewaySettings())
    hits: list[int] = []
    hit = limiter.windows.strategy.hit

    async def counted_hit(*args: object, cost: int = 1) -> bool:
        hits.append(cost)
        return await hit(*args, cost=cost)  # type: ignore[arg-type]

    limiter.windows.strategy.hit = counted_hit  # type: ignore[method-assign]
    key = ApiKey(name="near", hash="h", scopes=frozenset(), tpm=100)
    first = await limiter.admit(key)
    await first.admit_prompt(30)  # 70 left after it: at least half the limit
    assert hits == [] and _remaining_tokens(first.headers) == 70
    await limiter.charge(first, 30)

    second = await limiter.admit(key)
    assert _remaining_tokens(second.headers) == 70
    await second.admit_prompt(25)  # 45 left after it: the storage decides
    assert hits == [30, 25]  # this router's unsent charge first, then the prompt
    assert _remaining_tokens(second.headers) == 45

    third = await limiter.admit(key)
    with pytest.raises(RateLimited, match="prompt has 46 tokens and 45 of its 100"):
        await third.admit_prompt(46)
    await limiter.charge(third, 0)
    fourth = await limiter.admit(key)
    await fourth.admit_prompt(45)  # exactly what is left
    assert _remaining_tokens(fourth.headers) == 0
    with pytest.raises(RateLimited, match="tokens per minute"):
        await limiter.admit(key)
    await limiter.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tpm=st.integers(1, 400),
    steps=st.lists(
        st.tuples(st.integers(1, 250), st.sampled_from(["", "send", "read"])),
        min_size=1,
        max_size=40,
    ),
)
def test_prompts_are_never_let_past_the_token_limit_nor_refused_under_it(
    tpm: int, steps: list[tuple[int, str]]
) -> None:
    """Each step a request whose prompt of `tokens` is also its usage; after it, this router
    sends its charges, or reads the storage afresh, or neither. All at one instant (a cold
    start with everything at once): whether a prompt was let in on the view or by the
    storage, those let in never add up to more than the limit, a prompt is refused only when
    it would go over, and the headers say exactly what is left."""

    async def run() -> None:
        within_one_minute_window(1)
        limiter = Limiter(GatewaySettings())
        key = ApiKey(name="i", hash="h", scopes=frozenset(), tpm=tpm)
        used = 0
        for tokens, then in steps:
            try:
                admission = await admit(limiter, key)
            except RateLimited:
                assert used >= tpm  # refused at the door only when nothing is left
                continue
            try:
                await admission.admit_prompt(tokens)
            except RateLimited:
                assert used + tokens > tpm
                await limiter.charge(admission, 0)
            else:
                used += tokens
                assert used <= tpm
                assert _remaining_tokens(admission.headers) == tpm - used
                await limiter.charge(admission, tokens)
            if then == "send":
                await limiter.send_charges()
            elif then == "read":
                limiter.windows.forget("tokens", tpm, "i")  # the next request reads the storage
        assert await window_total(limiter, tpm, "i") == used
        await limiter.close()

    asyncio.run(run())


async def test_a_keys_requests_and_tokens_are_counted_apart_when_their_limits_are_equal() -> None:
    within_one_minute_window(2)
    limiter = Limiter(GatewaySettings())
    key = ApiKey(name="eq", hash="h", scopes=frozenset(), rpm=50, tpm=50)
    first = await limiter.admit(key)
    await first.admit_prompt(40)
    await limiter.charge(first, 40)
    await limiter.send_charges()
    limiter.windows.stats_ttl = 0  # from the storage itself
    headers = dict((await limiter.admit(key)).headers)
    assert headers[b"x-ratelimit-remaining-requests"] == b"48"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"10"
    await limiter.close()


@pytest.mark.parametrize("seed", range(6))
async def test_a_client_that_waits_its_retry_after_fits_then(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Retry-After was the sliding window's time until its next unit freed, and the
    x-ratelimit-reset-* headers said 0ms on a window just charged: a client that waited
    42 s got another 429, then Retry-After: 1 twice (found from outside); then it was up to
    60 / previous count seconds too long (53 s where 34 s did). Over random charges at
    random times (a clock of the test's own, in the limits library's memory storage too):
    waiting `wait(amount)` leaves at least `amount`, as the library decides, a moment less
    does not, and the reset of a window with anything counted is when it is whole again."""
    import random
    import types

    from limits.aio.storage import MemoryStorage

    from llm_router.gateway import windows as windows_module

    rng = random.Random(seed)
    now = [1_800_000_000.0 + rng.uniform(0, 60)]
    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0])
    import limits.aio.storage.memory as memory_module

    monkeypatch.setattr(memory_module, "time", fake)
    monkeypatch.setattr(windows_module, "time", fake)
    w = windows_module.Windows(MemoryStorage(), clock=fake.time)
    limit = rng.randint(5, 300)
    for _ in range(40):
        now[0] += rng.choice([0.0, rng.uniform(0, 5), rng.uniform(0, 70)])
        amount = rng.randint(1, limit)
        _, left, reset = await w.take("tokens", limit, "k", amount)
        assert (reset > 0) == (left < limit), (left, reset)
        assert reset <= 120
        wanted = rng.randint(1, limit)
        wait = w.wait("tokens", limit, "k", wanted)
        assert 0 <= wait <= 120
        if left < wanted:
            assert wait > 0
        sooner = max(0.0, wait - 0.01)
        if sooner > 0:  # and no longer than needed: a moment sooner is too soon
            now[0] += sooner
            remaining, _ = await w.view("tokens", limit, "k", fresh=True)
            assert remaining < wanted, (limit, wanted, wait, remaining)
        now[0] += wait - sooner + 0.001
        remaining, _ = await w.view("tokens", limit, "k", fresh=True)
        assert remaining >= wanted, (limit, wanted, wait, remaining)
        assert await w.strategy.test(w.item("tokens", limit), "k", cost=wanted)


async def test_cache_hits_at_once_never_pass_tokens_per_minute_together(gw: Gw) -> None:
    """Hits of the response cache (and a single flight's followers) were let in on
    `remaining > 0` and charged when done: 10 at once used 2.9x a key's limit (found from
    outside). A hit's tokens, known exactly, are now admitted as a prompt's are."""
    within_one_minute_window(10)
    secret = await gw.key("hits", tpm=40)
    body = {**CHAT_BODY, "temperature": 0}
    first = await gw.client.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert first.status_code == 200 and first.headers["x-llm-router-cache"] == "miss"
    each = first.json()["usage"]["total_tokens"]
    left = 40 - each
    answers = await asyncio.gather(
        *(
            gw.client.post("/v1/chat/completions", json=body, headers=bearer(secret))
            for _ in range(12)
        )
    )
    hits = [r for r in answers if r.status_code == 200]
    assert all(r.headers["x-llm-router-cache"] == "hit" for r in hits)
    assert len(hits) == left // each and all(r.status_code == 429 for r in answers if r not in hits)
    assert await window_total(gw.gateway.limiter, 40, "hits") == each * (1 + len(hits))


@pytest.mark.parametrize("seed", range(4))
async def test_a_new_windows_reset_ends_where_the_memory_storage_ends_it(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A window with nothing counted was seen as ending a minute from now, as a Redis window
    (which starts at its first charge) does; the library's memory storage ends its windows
    on the clock's minutes. So a new key's first answer said x-ratelimit-reset-tokens 1m58s
    and the next, a second later, 1m30s (found from outside). Now the reset a first charge
    answers is the one the storage gives right after it."""
    import random
    import types

    import limits.aio.storage.memory as memory_module
    from limits.aio.storage import MemoryStorage

    from llm_router.gateway import windows as windows_module

    now = [1_800_000_000.0 + random.Random(seed).uniform(0, 60)]
    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0])
    monkeypatch.setattr(memory_module, "time", fake)
    monkeypatch.setattr(windows_module, "time", fake)
    w = windows_module.Windows(MemoryStorage(), clock=fake.time)
    await w.view("tokens", 1000, "k", fresh=True)  # nothing counted yet
    taken = w.local("tokens", 1000, "k", 30)
    assert taken is not None
    await w.send()
    _, stored = await w.view("tokens", 1000, "k", fresh=True)
    assert taken[2] == pytest.approx(stored, abs=0.01), (taken, stored)
