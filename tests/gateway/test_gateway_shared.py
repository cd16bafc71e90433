"""Real processes on real Redis and PostgreSQL (tests/services.py): two routers sharing one
Redis and one database hold a key's requests-per-minute across both, add up their usage, and
both refuse a key revoked on either; the CLI works on the same database while they run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_helpers import CHAT_BODY, MASTER, bearer, two_routers

from llm_router.gateway.store import DB_FILE
from servers import Server

pytestmark = pytest.mark.real


def fake_model(folder: Path) -> list[dict[str, Any]]:
    path = folder / "chat.json"
    path.write_text(json.dumps({"reply": "hello from the fake engine"}))
    return [{"id": "chat", "path": str(path), "engine": "fake"}]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.fixture
def pair(
    tmp_path: Path, redis_url: str, fresh_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Server, Server, Path]]:
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
    config = {
        "models": fake_model(tmp_path),
        "provision_default_models": False,
        "models_dir": str(tmp_path / "models"),
        "database_url": fresh_database,
        "redis_url": redis_url,
        "gateway": {"flush_interval": 0.2, "refresh_interval": 0.2},
    }
    (tmp_path / "models").mkdir()
    with two_routers(tmp_path, config) as routers:
        yield routers


def test_two_routers_share_limits_usage_and_revocations(pair: tuple[Server, Server, Path]) -> None:
    first, second, config = pair
    made = cli(config, "keys", "create", "shared", "--rpm", "5")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-llmr-")
    auth = bearer(secret)
    eventually(
        lambda: httpx.get(second.url + "/v1/models", headers=auth).status_code == 200,
        "the second router knows the key made by the CLI",
    )  # that GET is a `read`: it counts against no limit of `inference`

    codes = []
    for server in (first, second, first, second, first, second):
        r = httpx.post(
            server.url + "/v1/chat/completions", json=CHAT_BODY, headers=auth, timeout=30
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert codes == [200] * 5 + [429]  # 5 a minute, counted across both in Redis

    def usage() -> dict[str, Any]:
        r = httpx.get(
            first.url + "/admin/usage", params={"group_by": "key"}, headers=bearer(MASTER)
        )
        rows = {row["key"]: row for row in r.json()["data"]}
        return rows.get("shared", {"requests": 0})

    eventually(lambda: usage()["requests"] == 6, "usage of both routers adds up")
    assert usage()["errors"] == 1 and usage()["completion_tokens"] > 0

    # Revoked through the first router's API: the second refuses it too, soon.
    assert httpx.delete(first.url + "/admin/keys/shared", headers=bearer(MASTER)).status_code == 200
    eventually(
        lambda: httpx.get(second.url + "/v1/models", headers=auth).status_code == 401,
        "the second router refuses the revoked key",
    )
    shown = cli(config, "keys", "show", "shared")
    assert json.loads(shown.stdout)["status"] == "revoked"
    table = cli(config, "usage", "--group-by", "key", "--csv")
    assert table.returncode == 0, table.stderr
    assert "shared,6," in table.stdout


def test_the_cli_on_sqlite_while_a_server_runs(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    config: dict[str, Any] = {
        "models": fake_model(tmp_path),
        "provision_default_models": False,
        "models_dir": str(tmp_path / "models"),
        "data_dir": str(tmp_path / "data"),
        "gateway": {"refresh_interval": 0.2},
    }
    env_master = os.environ.pop("LLM_ROUTER_MASTER_KEY", None)
    server = Server(tmp_path, config).start()
    try:
        path = server.config_path
        # No key yet: served to loopback clients with no key, as before.
        assert httpx.post(server.url + "/v1/chat/completions", json=CHAT_BODY).status_code == 200
        made = cli(path, "keys", "create", "cli-key", "--scopes", "inference", "--models", "chat")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.splitlines()[-1]
        keyless = [1]  # requests served with no key: the one above, and any until auth is on

        def auth_on() -> bool:
            status = httpx.post(server.url + "/v1/chat/completions", json=CHAT_BODY).status_code
            keyless[0] += status == 200
            return status == 401

        eventually(auth_on, "the server turns auth on once a key exists")
        r = httpx.post(server.url + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        assert r.status_code == 200, r.text
        listed = cli(path, "keys", "ls", "--json")
        [entry] = json.loads(listed.stdout)
        assert (entry["name"], entry["scopes"], entry["models"]) == (
            "cli-key",
            ["inference"],
            ["chat"],
        )
        assert secret not in listed.stdout
        # the audit keeps what the CLI made as it keeps what HTTP makes (it kept the scopes)
        with sqlite3.connect(tmp_path / "data" / DB_FILE) as db:
            [(actor, detail)] = db.execute(
                "SELECT actor, detail FROM audit WHERE action = 'key.created'"
            ).fetchall()
        assert actor == "cli" and json.loads(detail)["models"] == ["chat"], detail
        assert cli(path, "keys", "revoke", "cli-key").returncode == 0
        served = [1]  # the key's requests answered: the one above, and any before the revocation

        def refused() -> bool:
            status = httpx.post(
                server.url + "/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret)
            ).status_code
            served[0] += status == 200  # the revocation reaches the server within a poll
            return status == 401

        eventually(refused, "the server refuses the key revoked by the CLI")
        again = cli(path, "keys", "revoke", "cli-key")  # said so, not "revoked" again
        assert again.returncode == 0 and again.stdout.strip() == "cli-key was revoked already"
        assert cli(path, "keys", "revoke", "nobody").returncode == 1
    finally:
        server.stop()
        if env_master is not None:
            os.environ["LLM_ROUTER_MASTER_KEY"] = env_master
    # SIGTERM: the usage still in memory was written on the way out.
    usage = cli(server.config_path, "usage", "--group-by", "key", "--json")
    rows = {r["key"]: r["requests"] for r in json.loads(usage.stdout)}
    # the first request, served before any key existed, is recorded with no key name
    assert rows == {None: keyless[0], "cli-key": served[0]}
    table = cli(server.config_path, "usage", "--group-by", "key")
    assert "(no key)" in table.stdout and "cli-key" in table.stdout


def test_a_public_address_without_keys_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    server = Server(
        tmp_path,
        {
            "models": fake_model(tmp_path),
            "provision_default_models": False,
            "models_dir": str(tmp_path / "models"),
            "data_dir": str(tmp_path / "data"),
        },
    )
    server.config_path.write_text(server.config_path.read_text().replace("127.0.0.1", "0.0.0.0"))
    with pytest.raises(RuntimeError, match="auth: off"):
        server.start(timeout=30)


async def test_two_limiters_on_one_redis_share_a_keys_window(redis_url: str) -> None:
    from llm_router.config import GatewaySettings
    from llm_router.errors import RateLimited
    from llm_router.gateway.keys import ApiKey
    from llm_router.gateway.limits import Limiter

    key = ApiKey(name=f"k-{time.time_ns()}", hash="h", scopes=frozenset(), rpm=3, tpm=100)
    one, two = Limiter(GatewaySettings(), redis_url), Limiter(GatewaySettings(), redis_url)
    try:
        admitted = [await lim.admit(key) for lim in (one, two, one)]
        with pytest.raises(RateLimited) as info:
            await two.admit(key)
        assert dict(info.value.headers)[b"x-ratelimit-remaining-requests"] == b"0"  # type: ignore[attr-defined]
        await one.charge(admitted[0], 100)
        await one.send_charges()  # sent within `send_interval` anyway
        three = Limiter(GatewaySettings(), redis_url)  # a third router, started later
        with pytest.raises(RateLimited, match="tokens per minute"):
            await three.admit(key)
        await three.close()
    finally:
        await one.close()
        await two.close()


async def test_a_redis_that_is_down_lets_requests_through() -> None:
    from llm_router.config import GatewaySettings
    from llm_router.gateway.keys import ApiKey
    from llm_router.gateway.limits import Limiter
    from servers import free_port

    limiter = Limiter(GatewaySettings(), f"redis://127.0.0.1:{free_port()}/0")
    key = ApiKey(name="k", hash="h", scopes=frozenset(), rpm=1)
    try:
        for _ in range(3):
            assert (await limiter.admit(key)).headers == []
    finally:
        await limiter.close()
