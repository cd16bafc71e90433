"""What several routers share through one real Redis (tests/services.py) besides the rate
windows: requests in flight per key (leases that expire when a router dies), key revocations
told at once through pub/sub, and circuit breakers. Unit tests on two limiters first, then two
real router processes on one Redis and one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_helpers import CHAT_BODY, MASTER, bearer, two_routers
from test_gateway_shared import cli, eventually

from llm_router.config import GatewaySettings
from llm_router.errors import RateLimited
from llm_router.gateway.keys import ApiKey
from llm_router.gateway.limits import Limiter
from servers import Server, Stub

pytestmark = pytest.mark.real


def _key(**limits: int) -> ApiKey:
    return ApiKey(name=f"k-{time.time_ns()}", hash="h", scopes=frozenset(), **limits)  # type: ignore[arg-type]


async def _admitted(limiter: Limiter, key: ApiKey) -> bool:
    try:
        admission = await limiter.admit(key)
    except RateLimited as exc:
        assert " at once" in exc.message
        return False
    limiter.release(admission)
    return True


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def test_requests_at_once_are_counted_across_routers(redis_url: str) -> None:
    key = _key(max_concurrent=2)
    one, two = Limiter(GatewaySettings(), redis_url), Limiter(GatewaySettings(), redis_url)
    try:
        held = [await one.admit(key), await two.admit(key)]
        with pytest.raises(RateLimited, match="2 requests at once"):
            await one.admit(key)
        with pytest.raises(RateLimited, match="2 requests at once"):
            await two.admit(key)
        two.release(held[1])  # given back: the other router may use it
        await _eventually(lambda: _admitted(one, key), "the slot given back is free again")
        one.release(held[0])
        assert one.in_flight == two.in_flight == {}
    finally:
        await one.close()
        await two.close()


async def test_a_dead_routers_slots_expire_and_a_live_ones_are_kept(redis_url: str) -> None:
    key = _key(max_concurrent=1)
    live, dead, other = (Limiter(GatewaySettings(), redis_url) for _ in range(3))
    for limiter in (live, dead, other):
        assert limiter.slots is not None
        limiter.slots.ttl = 1.0
    try:
        long_request = await live.admit(key)
        # Held past several lease lifetimes: the live router keeps refreshing it.
        for _ in range(3):
            await asyncio.sleep(1.0)
            assert not await _admitted(other, key)
        live.release(long_request)
        await _eventually(lambda: _admitted(other, key), "a released slot is free")

        await dead.admit(key)  # then the router dies: no release, no more refreshes
        assert dead.slots is not None and dead.slots._refresher is not None
        dead.slots._refresher.cancel()
        dead.slots.held.clear()
        assert not await _admitted(other, key)
        await _eventually(lambda: _admitted(other, key), "the dead router's lease expires")
    finally:
        for limiter in (live, dead, other):
            await limiter.close()


async def test_a_router_that_starts_later_begins_with_the_open_breakers(redis_url: str) -> None:
    from llm_router.routing.breaker import BreakerConfig, BreakerState, CircuitBreaker
    from llm_router.routing.shared_breakers import BreakerSync

    target = f"t-{time.time_ns()}"
    config = BreakerConfig(failure_threshold=1, cooldown=30)
    opener = BreakerSync(redis_url, hold=1.0, cooldown=30)
    await opener.start()
    mine = CircuitBreaker(config)
    opener.attach(target, mine)
    late = BreakerSync(redis_url, hold=1.0, cooldown=30)
    try:
        mine.record_failure()  # opens, and tells
        assert mine.state is BreakerState.OPEN

        async def told() -> bool:
            return await late.client.get("llm-router:breaker:" + target) is not None

        await _eventually(told, "the open breaker is kept in Redis")
        theirs = CircuitBreaker(config)
        late.attach(target, theirs)
        await late.catch_up()
        assert theirs.state is BreakerState.OPEN and not theirs.allow()

        fresh = CircuitBreaker(config)
        other = BreakerSync(redis_url, hold=1.0, cooldown=30)
        other.attach(f"{target}-other", fresh)  # another target: not open
        await other.catch_up()
        assert fresh.state is BreakerState.CLOSED
        await other.close()
    finally:
        await opener.close()
        await late.close()


# -- two real router processes on one Redis and one PostgreSQL -------------------------------

SLOW_REPLY = " ".join(f"word{i}" for i in range(64))


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.stop()


@pytest.fixture
def routers(
    tmp_path: Path,
    redis_url: str,
    fresh_database: str,
    stub: Stub,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Server, Server, Path]]:
    """Two routers on one Redis and one PostgreSQL that re-read the keys only once a minute:
    anything the other router learns sooner came through Redis."""
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
    (tmp_path / "models").mkdir()
    script = tmp_path / "chat.json"
    script.write_text(json.dumps({"reply": SLOW_REPLY, "token_seconds": 0.1}))
    config = {
        "models": [
            {"id": "chat", "path": str(script), "engine": "fake"},
            {
                "id": "flaky",
                "provider": "openai",
                "base_url": stub.url + "/v1",
                "timeout": 5,
                "health_check_interval": 0,
            },
        ],
        "routes": [{"name": "auto", "targets": ["flaky"], "fallbacks": ["chat"]}],
        "breaker": {"failure_threshold": 2, "cooldown": 10},  # long: a busy machine is slow
        "provision_default_models": False,
        "models_dir": str(tmp_path / "models"),
        "database_url": fresh_database,
        "redis_url": redis_url,
        "gateway": {"refresh_interval": 60},
    }
    with two_routers(tmp_path, config) as routers:
        yield routers


def _chat(server: Server, secret: str, **body: Any) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json={**CHAT_BODY, **body},
        headers=bearer(secret),
        timeout=30,
    )


def test_a_revocation_reaches_the_other_router_through_redis(
    routers: tuple[Server, Server, Path],
) -> None:
    first, second, config = routers
    # Made by the CLI: both routers hear of it at once (they poll only once a minute).
    made = cli(config, "keys", "create", "team-a")
    assert made.returncode == 0, made.stderr
    by_cli = made.stdout.strip().splitlines()[-1]
    r = httpx.post(
        first.url + "/admin/keys", json={"name": "team-b"}, headers=bearer(MASTER), timeout=10
    )
    by_api = r.json()["key"]
    for server in (first, second):
        for secret in (by_cli, by_api):
            eventually(
                lambda s=server, k=secret: _chat(s, k).status_code == 200,  # type: ignore[misc]
                "both routers know both new keys",
            )

    # Revoked through the first router's API: the second refuses it too, soon.
    assert httpx.delete(first.url + "/admin/keys/team-b", headers=bearer(MASTER)).status_code == 200
    assert _chat(first, by_api).status_code == 401
    eventually(lambda: _chat(second, by_api).status_code == 401, "the second router refuses it")
    # Revoked by the CLI: both refuse it.
    assert cli(config, "keys", "revoke", "team-a").returncode == 0
    for server in (first, second):
        eventually(
            lambda s=server: _chat(s, by_cli).status_code == 401,  # type: ignore[misc]
            "every router refuses the key the CLI revoked",
        )
        assert "revoked" in _chat(server, by_cli).json()["error"]["message"]


def test_requests_at_once_hold_across_routers(routers: tuple[Server, Server, Path]) -> None:
    first, second, _ = routers
    r = httpx.post(
        first.url + "/admin/keys",
        json={"name": "one-at-once", "max_concurrent": 1},
        headers=bearer(MASTER),
        timeout=10,
    )
    secret = r.json()["key"]
    eventually(lambda: _chat(second, secret).status_code == 200, "the second router has the key")
    slow = {**CHAT_BODY, "max_tokens": 60, "stream": True}  # 6 s in flight
    with httpx.stream(
        "POST", first.url + "/v1/chat/completions", json=slow, headers=bearer(secret), timeout=30
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # in flight on `first`
        refused = _chat(second, secret)
        assert refused.status_code == 429, refused.text
        assert "1 request at once" in refused.json()["error"]["message"]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        assert any("[DONE]" in line for line in lines)  # the stream ends: its slot is given back
    eventually(lambda: _chat(second, secret).status_code == 200, "the slot is free again")


def test_a_breaker_that_opens_in_one_router_opens_in_the_other(
    routers: tuple[Server, Server, Path], stub: Stub
) -> None:
    first, second, _ = routers
    admin = bearer(MASTER)

    def breaker(server: Server) -> str:
        listing = httpx.get(server.url + "/models", headers=admin, timeout=10).json()
        state: str = {m["id"]: m for m in listing["data"]}["flaky"]["breaker"]["state"]
        return state

    assert _chat(first, MASTER, model="auto").headers["x-llm-router-model"] == "flaky"
    stub.set(mode="500")
    for _ in range(2):  # the first router's two failures open its breaker (threshold 2)
        r = _chat(first, MASTER, model="auto")
        assert r.headers["x-llm-router-model"] == "chat", r.text
    assert breaker(first) == "open"
    eventually(lambda: breaker(second) == "open", "the second router's breaker opens too")
    seen = stub.stats()["requests"]
    r = _chat(second, MASTER, model="auto")  # skipped: the upstream is not even asked
    assert r.headers["x-llm-router-model"] == "chat"
    assert "flaky: breaker open" in r.headers["x-llm-router-route"]
    assert stub.stats()["requests"] == seen

    # The target recovers; after the cooldown the first router's probe closes it for both.
    stub.set(mode="ok")
    eventually(
        lambda: _chat(first, MASTER, model="auto").headers["x-llm-router-model"] == "flaky",
        "the first router probes and closes its breaker",
        timeout=60,
    )
    eventually(lambda: breaker(second) == "closed", "the second router's breaker closes too")
    assert _chat(second, MASTER, model="auto").headers["x-llm-router-model"] == "flaky"


def test_a_remote_targets_prompt_is_estimated_before_it_is_sent(
    routers: tuple[Server, Server, Path], stub: Stub
) -> None:
    """A remote target: the prompt is estimated (4 characters a token, 4 a message, 3 to
    prime the answer) before anything is sent upstream; the upstream's usage corrects it."""
    first, _, _ = routers
    # (exact header values: in Redis a key's window starts at its first charge, in this test)
    r = httpx.post(
        first.url + "/admin/keys",
        json={"name": "remote-tpm", "tpm": 60},
        headers=bearer(MASTER),
        timeout=10,
    )
    secret = r.json()["key"]
    seen = stub.stats()["requests"]
    long_prompt = [{"role": "user", "content": "x" * 400}]  # estimated 107 tokens
    refused = _chat(first, secret, model="flaky", messages=long_prompt)
    assert refused.status_code == 429, refused.text
    message = refused.json()["error"]["message"]
    assert "tokens per minute: limit 60, the prompt (107 tokens) and max_tokens (3)" in message
    assert "retry-after" not in refused.headers  # waiting cannot make it fit
    assert stub.stats()["requests"] == seen  # nothing was sent upstream

    estimate = 3 + 4 + 2 + 3  # "Hello": one message of 5 characters; and max_tokens
    served = _chat(first, secret, model="flaky")
    assert served.status_code == 200 and served.headers["x-llm-router-model"] == "flaky"
    assert served.headers["x-ratelimit-remaining-tokens"] == str(60 - estimate)
    used = served.json()["usage"]["total_tokens"]  # the stub's count: 5 + 3
    time.sleep(0.3)  # what max_tokens left unused is given back in the next batch (50 ms)
    again = _chat(first, secret, model="flaky")
    assert again.headers["x-ratelimit-remaining-tokens"] == str(60 - used - estimate)


async def test_two_routers_near_a_token_limit_cannot_both_spend_the_last_tokens(
    redis_url: str,
) -> None:
    """Far from the limit each router lets prompts in on its own view; near it, each prompt
    is one atomic check-and-charge in Redis: of two prompts that each fit what is left but
    not together, sent at once through two routers, one is let in and one refused."""
    key = _key(tpm=100)
    one, two = Limiter(GatewaySettings(), redis_url), Limiter(GatewaySettings(), redis_url)
    try:
        first, second = await one.admit(key), await two.admit(key)
        await first.admit_prompt(30)
        await second.admit_prompt(30)
        for limiter, admission in ((one, first), (two, second)):
            await limiter.charge(admission, 30)
            await limiter.send_charges()
        third, fourth = await one.admit(key), await two.admit(key)
        results = await asyncio.gather(
            third.admit_prompt(25), fourth.admit_prompt(25), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, RateLimited)]
        assert len(refused) == 1 and results.count(None) == 1, results
        assert "25 tokens and 15 of its 100" in refused[0].message
        last = await two.admit(key)
        await last.admit_prompt(15)  # what is left, let in through either router
        assert dict(last.headers)[b"x-ratelimit-remaining-tokens"] == b"0"
        with pytest.raises(RateLimited, match="tokens per minute"):
            await (await one.admit(key)).admit_prompt(1)
    finally:
        await one.close()
        await two.close()


async def test_a_budget_holds_across_routers_within_a_fraction_of_a_second(
    redis_url: str, tmp_path: Path
) -> None:
    """Two routers, one Redis, each its own database: spend was only shared through the
    database (a refresh every ~2 s), so requests alternating between two routers spent 0.228
    of a 0.1 budget (found from outside). With the spend in Redis, what one router spends
    counts in the other's budget check within about its sync interval."""
    from dataclasses import replace as changed

    from llm_router.config import Settings
    from llm_router.errors import QuotaExceeded
    from llm_router.gateway.service import Gateway

    gateways = []
    for i in range(2):
        settings = Settings(
            data_dir=tmp_path / f"data-{i}",
            auth="on",
            redis_url=redis_url,
            models=[],
            provision_default_models=False,
            gateway={"refresh_interval": 60},  # the database's view never helps here
        )
        gateway = Gateway(settings, environ={}, cost=lambda target, p, c: 0.04)
        await gateway.start()
        gateways.append(gateway)
    one, two = gateways
    key = changed(_key(), budget=0.1, period="day")
    try:
        for g in gateways:
            g.keys[key.hash] = key
        record = dict(model="m", target="t", route="/v1/chat/completions", prompt_tokens=1,
                      completion_tokens=1, cached_tokens=0, status=200, latency=0.01, ttft=None)  # fmt: skip
        one.check_budget(key)
        one.record(key, **record)  # 0.04
        two.record(key, **record)  # 0.08: both routers under the budget still
        one.check_budget(key)
        two.record(key, **record)  # 0.12: over it

        async def refused_by_one() -> bool:
            try:
                one.check_budget(key)
            except QuotaExceeded:
                return True
            return False

        started = time.monotonic()
        await _eventually(refused_by_one, "router one sees router two's spend", timeout=5)
        assert time.monotonic() - started < 1.0
        assert abs(one.spent(key.name) - 0.12) < 1e-9
    finally:
        for g in gateways:
            await g.close()
