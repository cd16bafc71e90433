"""Per-key limits and budgets, in process: requests and tokens per minute, requests at once,
the defaults for every key, budgets from the config's prices, and OpenAI's rate-limit headers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gw_helpers import CHAT_BODY, MASTER, Gw, bearer, gateway_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inproc import fake_models
from llm_router.config import GatewaySettings
from llm_router.errors import RateLimited
from llm_router.gateway.keys import ApiKey
from llm_router.gateway.limits import Limiter, reset_text
from openai_schema import validate

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


async def test_tokens_per_minute_count_prompt_and_completion(gw: Gw) -> None:
    secret = await gw.key("tpm", tpm=10)
    first = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining-tokens"] == "10"  # before it ran
    used = first.json()["usage"]["total_tokens"]
    assert used > 0

    second = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    if used >= 10:
        assert_refused(second, "rate_limit_exceeded")
        assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    else:
        assert second.headers["x-ratelimit-remaining-tokens"] == str(10 - used)


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
        assert "1 requests at once" in str(assert_refused(second, "rate_limit_exceeded")["message"])
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
    assert [reset_text(s) for s in (0.12, 1, 59.6, 61, 360)] == [
        "120ms",
        "1s",
        "1m0s",
        "1m1s",
        "6m0s",
    ]


# -- the limiter's invariants over random schedules ------------------------------------------


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
                    held.append(await limiter.admit(key))
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
            limiter.stats_ttl = 0  # read the storage itself from now on
        if tokens >= 10:
            with pytest.raises(RateLimited):
                await limiter.admit(key)
        else:
            again = await limiter.admit(key)
            remaining = dict(again.headers)[b"x-ratelimit-remaining-tokens"]
            assert remaining == str(10 - tokens).encode(), sent
    await limiter.close()
