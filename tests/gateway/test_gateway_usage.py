"""Usage accounting and the audit log, in process: every request recorded (streams once done,
errors too), `GET /admin/usage` as JSON and CSV, per-key Prometheus counters, nothing lost at
shutdown, and admin actions in `GET /admin/audit`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from pathlib import Path

import pytest
from gw_helpers import CHAT_BODY, MASTER, Gw, bearer, gateway_app

from inproc import fake_models
from llm_router.config import Settings
from llm_router.gateway.store import Store
from llm_router.logs import JsonFormatter


async def test_every_request_is_recorded_with_its_tokens_target_and_status(gw: Gw) -> None:
    secret = await gw.key("counted")
    auth = bearer(secret)
    plain = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=auth)
    streamed = await gw.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "stream": True}, headers=auth
    )
    missing = await gw.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "model": "nope"}, headers=auth
    )
    assert (plain.status_code, streamed.status_code, missing.status_code) == (200, 200, 404)

    r = await gw.client.get(
        "/admin/usage", params={"group_by": "key,model,target"}, headers=bearer(MASTER)
    )
    assert r.status_code == 200, r.text
    rows = {(row["key"], row["model"], row["target"]): row for row in r.json()["data"]}
    served = rows[("counted", "chat", "chat")]
    assert served["requests"] == 2 and served["errors"] == 0
    assert served["prompt_tokens"] == 2 * plain.json()["usage"]["prompt_tokens"]
    assert served["completion_tokens"] == 2 * plain.json()["usage"]["completion_tokens"]
    assert served["avg_ttft"] is not None and served["avg_latency"] > 0
    failed = rows[("counted", "nope", "")]
    assert failed["requests"] == failed["errors"] == 1


async def test_usage_as_csv_and_by_day(gw: Gw) -> None:
    secret = await gw.key("csv-user")
    await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    r = await gw.client.get("/admin/usage", headers={**bearer(MASTER), "accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    [row] = [row for row in csv.DictReader(io.StringIO(r.text)) if row["key"] == "csv-user"]
    assert row["day"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert row["requests"] == "1" and row["model"] == "chat"


async def test_usage_range_and_grouping_are_checked(gw: Gw) -> None:
    admin = bearer(MASTER)
    r = await gw.client.get("/admin/usage", params={"group_by": "colour"}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"
    r = await gw.client.get("/admin/usage", params={"start": "yesterday"}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"] == "start"
    for param, value in [("start", "nan"), ("end", "1e400"), ("start", "-inf")]:
        r = await gw.client.get("/admin/usage", params={param: value}, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text  # nan: 500
    secret = await gw.key("ranged")
    await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    future = await gw.client.get(
        "/admin/usage", params={"start": "2999-01-01", "end": "2999-02-01"}, headers=admin
    )
    assert future.json()["data"] == []
    # a query parameter is named as the client wrote it (it read `query.limit`)
    bad = await gw.client.get("/admin/audit", params={"limit": "many"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit", bad.text
    # a group named twice is one group (it was a 500: an ambiguous column; found from outside)
    twice = await gw.client.get("/admin/usage", params={"group_by": "key,key"}, headers=admin)
    assert twice.status_code == 200, twice.text
    assert [row["requests"] for row in twice.json()["data"] if row["key"] == "ranged"] == [1]


async def test_prometheus_counts_tokens_and_spend_per_key(tmp_path: Path, master_env: str) -> None:
    models = fake_models(tmp_path, chat={}, other={})
    models[0].cost.output = 2_000_000.0  # 2 per completion token
    async with gateway_app(tmp_path, models=models) as gw:
        secret = await gw.key("metered")
        r = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        completion = r.json()["usage"]["completion_tokens"]
        text = (await gw.client.get("/metrics", headers=bearer(MASTER))).text
        assert (
            f'llm_router_key_tokens_total{{key="metered",kind="completion"}} {completion}.0' in text
        )
        assert f'llm_router_key_spend_total{{key="metered"}} {2.0 * completion}' in text
        assert 'llm_router_key_requests_total{key="metered",status="200"} 1.0' in text


async def test_usage_gathered_in_memory_is_written_at_shutdown(
    tmp_path: Path, master_env: str
) -> None:
    async with gateway_app(tmp_path, gateway={"flush_interval": 3600}) as gw:
        secret = await gw.key("last-words")
        for _ in range(3):
            await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
        url = gw.gateway.url
    store = Store(url)
    try:
        rows = await store.usage(0, time.time() + 1, ["key"])
    finally:
        await store.close()
    assert [(r["key"], r["requests"]) for r in rows] == [("last-words", 3)]


async def test_admin_actions_are_audited_with_who_and_what(gw: Gw) -> None:
    admin_key = await gw.key("ops", scopes=["admin"])
    ops = bearer(admin_key)
    assert (await gw.client.post("/models/load", json={"model": "chat"}, headers=ops)).is_success
    assert (await gw.client.post("/models/unload", json={"model": "chat"}, headers=ops)).is_success
    assert (await gw.client.delete("/admin/keys/ops", headers=bearer(MASTER))).is_success

    r = await gw.client.get("/admin/audit", headers=bearer(MASTER))
    events = [(e["actor"], e["action"], e["subject"]) for e in reversed(r.json()["data"])]
    assert events == [
        ("master", "key.created", "ops"),
        ("ops", "model.load", "chat"),
        ("ops", "model.unload", "chat"),
        ("master", "key.revoked", "ops"),
    ]
    created = r.json()["data"][-1]
    assert created["detail"]["scopes"] == ["admin"]
    assert "key" not in created["detail"] and "hash" not in str(created["detail"])


async def test_unknown_keys_revoked_twice_and_shown(gw: Gw) -> None:
    admin = bearer(MASTER)
    assert (await gw.client.delete("/admin/keys/ghost", headers=admin)).status_code == 404
    await gw.key("shown", rpm=5, budget=1.5, period="day", expires="30d", models=["chat"])
    r = await gw.client.get("/admin/keys/shown", headers=admin)
    body = r.json()
    assert (body["rpm"], body["budget"], body["period"], body["models"]) == (
        5,
        1.5,
        "day",
        ["chat"],
    )
    assert body["status"] == "active" and body["spent"] == 0
    assert body["expires_at"] - body["created_at"] == 30 * 86400
    assert (await gw.client.delete("/admin/keys/shown", headers=admin)).status_code == 200
    assert (await gw.client.delete("/admin/keys/shown", headers=admin)).status_code == 200
    assert (await gw.client.get("/admin/keys/shown", headers=admin)).json()["status"] == "revoked"
    r = await gw.client.post("/admin/keys", json={"name": "shown"}, headers=admin)
    assert r.status_code == 409 and r.json()["error"]["param"] == "name"  # exists already
    r = await gw.client.post("/admin/keys", json={"name": "x", "scopes": ["root"]}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("scopes")


def test_the_database_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    from llm_router.gateway.store import database_url

    assert (
        database_url(Settings(data_dir=tmp_path)) == f"sqlite+aiosqlite:///{tmp_path}/llm-router.db"
    )
    pg = Settings(database_url="postgresql://u:p@db:5432/x")
    assert database_url(pg) == "postgresql+asyncpg://u:p@db:5432/x"


async def test_embeddings_are_recorded_with_their_prompt_tokens(gw: Gw) -> None:
    """The second, identical request is answered from the response cache: it is recorded with
    the tokens its answer reports too, as a chat answered from the cache is."""
    secret = await gw.key("embedder")
    body = {"model": "chat", "input": "Hello there"}
    r = await gw.client.post("/v1/embeddings", json=body, headers=bearer(secret))
    assert r.status_code == 200, r.text
    again = await gw.client.post("/v1/embeddings", json=body, headers=bearer(secret))
    assert again.headers["x-llm-router-cache"] == "hit"
    assert again.json()["usage"] == r.json()["usage"]
    usage = await gw.client.get(
        "/admin/usage", params={"group_by": "key,model,route"}, headers=bearer(MASTER)
    )
    [row] = [row for row in usage.json()["data"] if row["key"] == "embedder"]
    assert (row["model"], row["route"]) == ("chat", "/v1/embeddings")
    assert row["requests"] == 2
    assert row["prompt_tokens"] == 2 * r.json()["usage"]["prompt_tokens"] > 0
    assert row["completion_tokens"] == 0


async def test_requests_without_a_key_are_recorded_with_no_key_name(tmp_path: Path) -> None:
    """`auth: off` (and loopback clients before any key exists) serve requests that carry no
    key: they are recorded too, as `null` in JSON and an empty key in CSV; no keyed row
    holds them."""
    async with gateway_app(tmp_path, auth="off") as gw:
        ok = await gw.client.post("/v1/chat/completions", json=CHAT_BODY)
        streamed = await gw.client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
        missing = await gw.client.post("/v1/chat/completions", json={**CHAT_BODY, "model": "x"})
        assert (ok.status_code, streamed.status_code, missing.status_code) == (200, 200, 404)
        assert (await gw.client.get("/v1/models")).status_code == 200  # not inference: not usage
        r = await gw.client.get("/admin/usage", params={"group_by": "key,model"})
        rows = {(row["key"], row["model"]): row for row in r.json()["data"]}
        assert set(rows) == {(None, "chat"), (None, "x")}
        served = rows[(None, "chat")]
        assert (served["requests"], served["errors"]) == (2, 0)
        assert served["completion_tokens"] == 2 * ok.json()["usage"]["completion_tokens"]
        assert rows[(None, "x")]["errors"] == 1
        r = await gw.client.get(
            "/admin/usage", params={"group_by": "key"}, headers={"accept": "text/csv"}
        )
        [row] = list(csv.DictReader(io.StringIO(r.text)))
        assert (row["key"], row["requests"]) == ("", "3")


async def test_a_shutdown_during_a_flush_waits_for_it_and_loses_nothing(tmp_path: Path) -> None:
    """The periodic flush is under way (its write held back here) when the server stops: the
    stop waits for it, then writes what came after; every row arrives."""
    import asyncio

    from llm_router.gateway.service import Gateway

    settings = Settings(
        data_dir=tmp_path / "data",
        auth="on",
        models=[],
        provision_default_models=False,
        gateway={"refresh_interval": 0.01, "flush_interval": 0.01},
    )
    gateway = Gateway(settings, environ={})
    await gateway.start()
    store = gateway.store
    assert store is not None
    write, entered, release = store.add_requests, asyncio.Event(), asyncio.Event()

    async def held_write(rows: object) -> None:
        entered.set()
        await release.wait()
        await write(rows)  # type: ignore[arg-type]

    store.add_requests = held_write  # type: ignore[method-assign]
    row = {
        "model": "chat",
        "target": "chat",
        "route": "/v1/chat/completions",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cached_tokens": 0,
        "status": 200,
        "latency": 0.01,
        "ttft": None,
    }
    gateway.record(None, **row)  # type: ignore[arg-type]
    await asyncio.wait_for(entered.wait(), 10)  # the periodic flush holds the first row
    gateway.record(None, **row)  # type: ignore[arg-type]
    closing = asyncio.create_task(gateway.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # waiting for the flush under way, not cutting it
    release.set()
    await asyncio.wait_for(closing, 10)

    again = Store(gateway.url)
    try:
        [usage] = await again.usage(0, time.time() + 1, group_by=("key",))
    finally:
        await again.close()
    assert (usage["requests"], usage["prompt_tokens"]) == (2, 6)


async def test_a_large_flush_writes_every_row_as_it_was(tmp_path: Path) -> None:
    """SQLite gets usage in multi-row statements of several sizes: whatever the count, every
    row lands once with its values (no key and no time to first token as NULL)."""
    import random

    from sqlalchemy import select

    from llm_router.gateway.store import REQUEST_COLUMNS, requests

    rng = random.Random(20)
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}")
    await store.migrate()
    try:
        written: list[tuple[object, ...]] = []
        for count in (1, 3, 1024, 2500, rng.randrange(1, 3000)):
            rows = [
                (
                    1e9 + rng.random() * 1e6,
                    rng.choice([None, "team-a", "ключ"]),
                    rng.choice(["chat", "gpt-4o"]),
                    rng.choice(["", "chat"]),
                    "/v1/chat/completions",
                    rng.randrange(5000),
                    rng.randrange(5000),
                    rng.randrange(100),
                    rng.random(),
                    rng.choice([200, 429, 500]),
                    rng.random(),
                    rng.choice([None, rng.random()]),
                )
                for _ in range(count)
            ]
            await store.add_requests(rows)
            written += rows
        async with store.engine.connect() as conn:
            columns = [requests.c[name] for name in REQUEST_COLUMNS]
            read = [tuple(r) for r in await conn.execute(select(*columns))]
        assert sorted(read, key=repr) == sorted(written, key=repr)
    finally:
        await store.close()


async def test_compare_and_ensemble_charge_every_target_they_ask(
    tmp_path: Path, master_env: str
) -> None:
    """/v1/compare and /v1/ensemble ask several targets: a usage row each (the judge's too),
    at each target's prices, and the key's spend is their sum (it was one row of 0 tokens:
    fanning out got around budgets)."""
    models = fake_models(tmp_path, chat={}, other={}, judge={})
    for model, price in zip(models, (1_000_000.0, 2_000_000.0, 4_000_000.0), strict=True):
        model.cost.output = price  # 1, 2 and 4 per completion token
    async with gateway_app(tmp_path, models=models) as gw:
        secret = await gw.key("fan-out", budget=1000)
        ask = {"targets": ["chat", "other"], "messages": CHAT_BODY["messages"], "max_tokens": 3}
        r = await gw.client.post("/v1/compare", json=ask, headers=bearer(secret))
        assert r.status_code == 200, r.text
        answers = {a["model"]: a for a in r.json()["data"]}
        best = {**ask, "mode": "best-of", "scorer": "judge", "judge": "judge"}
        r = await gw.client.post("/v1/ensemble", json=best, headers=bearer(secret))
        assert r.status_code == 200, r.text

        r = await gw.client.get(
            "/admin/usage", params={"group_by": "key,model,target"}, headers=bearer(MASTER)
        )
        rows = {row["target"]: row for row in r.json()["data"] if row["key"] == "fan-out"}
        assert set(rows) == {"chat", "other", "judge"}
        assert rows["chat"]["requests"] == rows["other"]["requests"] == 2  # compare + ensemble
        assert rows["judge"]["requests"] == 1
        for name in ("chat", "other"):
            used = answers[name]["usage"]
            assert rows[name]["completion_tokens"] == 2 * used["completion_tokens"] > 0
            assert rows[name]["prompt_tokens"] == 2 * used["prompt_tokens"] > 0
        spent = sum(
            rows[t]["completion_tokens"] * p for t, p in (("chat", 1), ("other", 2), ("judge", 4))
        )
        assert rows["judge"]["completion_tokens"] > 0
        r = await gw.client.get("/admin/keys/fan-out", headers=bearer(MASTER))
        assert r.json()["spent"] == pytest.approx(spent), r.json()


async def test_loads_and_unloads_without_a_key_are_audited_with_no_actor(tmp_path: Path) -> None:
    """`auth: off` (or loopback before any key): a load and an unload are in the audit log
    all the same, with no actor (`null`, as a reload's), and a refused one is not."""
    async with gateway_app(tmp_path, auth="off") as gw:
        assert (await gw.client.post("/models/load", json={"model": "chat"})).status_code == 200
        assert (await gw.client.post("/models/unload", json={"model": "chat"})).status_code == 200
        missing = await gw.client.post("/models/load", json={"model": "nope"})
        assert missing.status_code == 404
        r = await gw.client.get("/admin/audit")
        events = [(e["actor"], e["action"], e["subject"]) for e in reversed(r.json()["data"])]
        assert events == [(None, "model.load", "chat"), (None, "model.unload", "chat")]


async def test_start_up_says_once_what_the_migration_did(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh database: one line of ours naming the revisions run, none of Alembic's INFO
    lines (they came at every start and from every `keys` command); an up-to-date one:
    nothing at INFO."""
    caplog.set_level(logging.INFO)
    for _ in range(2):
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
        await store.migrate()
        await store.close()
    lines = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert not [n for n, _ in lines if n.startswith("alembic")], lines
    migrated = [m for _, m in lines if "migrated" in m]
    assert len(migrated) == 1 and "-> 0001" in migrated[0], lines


def test_the_revision_start_up_trusts_is_alembics_head() -> None:
    """A database at `migrate.HEAD` is taken as current without asking Alembic: that must be
    the newest revision there is, or a new migration would never run."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from llm_router.gateway.migrate import HEAD, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD]


async def test_an_answer_from_the_response_cache_costs_nothing(
    tmp_path: Path, master_env: str
) -> None:
    """A cache hit spends nothing upstream: it was charged in full against the key's budget
    (three identical greedy chats, $24 where $8 were spent; found from outside). Its tokens
    are still counted, its prompt as cached."""
    models = fake_models(tmp_path, chat={})
    models[0].cost.output = 1_000_000.0  # 1 a completion token
    async with gateway_app(tmp_path, models=models) as gw:
        secret = await gw.key("cached", budget=100)
        body = {**CHAT_BODY, "temperature": 0}
        hits = []
        for _ in range(3):
            r = await gw.client.post("/v1/chat/completions", json=body, headers=bearer(secret))
            assert r.status_code == 200, r.text
            hits.append(r.headers["x-llm-router-cache"])
        assert hits == ["miss", "hit", "hit"]
        completion = r.json()["usage"]["completion_tokens"]
        spent = (await gw.client.get("/admin/keys/cached", headers=bearer(MASTER))).json()["spent"]
        assert spent == pytest.approx(completion)  # the miss alone
        r = await gw.client.get("/admin/usage", params={"group_by": "key"}, headers=bearer(MASTER))
        [row] = [x for x in r.json()["data"] if x["key"] == "cached"]
        assert row["requests"] == 3 and row["completion_tokens"] == 3 * completion
        prompt = row["prompt_tokens"] // 3
        assert prompt > 0 and row["cached_tokens"] == 2 * prompt  # the hits' prompts


async def test_a_database_that_is_down_is_a_503_and_one_log_line(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    """With PostgreSQL stopped, the admin routes were a bare 500 "internal server error" and
    the log took a ~100-line traceback every second of the outage (found from outside). Now:
    a 503 `database_unavailable` naming the database (no password) with Retry-After, one
    warning while it is down, one line when it is back; requests are served meanwhile."""
    from llm_router.gateway.store import Store

    gateway = gw.gateway
    working = gateway.store
    dead = Store("postgresql+asyncpg://llmr:s3cret@127.0.0.1:1/gone")  # nothing listens there
    gateway.store = dead
    try:
        r = await gw.client.get("/admin/keys", headers=bearer(MASTER))
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        error = r.json()["error"]
        assert error["code"] == "database_unavailable" and "127.0.0.1:1/gone" in error["message"]
        assert "s3cret" not in r.text
        served = await gw.client.post(
            "/v1/chat/completions", json=CHAT_BODY, headers=bearer(MASTER)
        )
        assert served.status_code == 200
        with caplog.at_level("INFO", logger="llm_router.gateway.service"):
            for _ in range(3):
                await gateway._tick()
            gateway.store = working
            await gateway._tick()
    finally:
        gateway.store = working
        await dead.close()
    lines = [r for r in caplog.records if r.name == "llm_router.gateway.service"]
    assert [r.levelname for r in lines] == ["WARNING", "INFO"], [r.getMessage() for r in lines]
    assert all(r.exc_info is None for r in lines)
    assert "reachable again" in lines[1].getMessage()


async def test_a_keys_allow_list_names_what_does_not_exist(gw: Gw) -> None:
    """`--models nonexist` made a key that could use nothing, silently (found from outside):
    the answer names what no model, alias, route or target answers to."""
    r = await gw.client.post(
        "/admin/keys", json={"name": "typo", "models": ["chat", "caht"]}, headers=bearer(MASTER)
    )
    assert r.status_code == 201 and r.json()["unknown_models"] == ["caht"]


def test_keys_create_warns_of_an_allow_list_name_that_does_not_exist(tmp_path: Path) -> None:
    import subprocess
    import sys

    from servers import free_port

    cfg = tmp_path / "cli.yaml"
    cfg.write_text(  # the port: one no server answers on (it would be asked for its names)
        f"data_dir: {tmp_path / 'cli-data'}\nmodels_dir: {tmp_path / 'none'}\nport: {free_port()}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "llm_router", "keys", "create", "k2", "--models", "smollm2,gpt-9",
         "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().startswith("sk-llmr-"), out.stderr
    assert "warning: 'gpt-9', 'smollm2' is no model" in out.stderr  # an empty models dir
    made = subprocess.run(
        [sys.executable, "-m", "llm_router", "keys", "create", "k3", "--max-concurrent", "7",
         "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "llm_router", "keys", "ls", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    row = next(line for line in listed.stdout.splitlines() if line.strip("│ ").startswith("k3"))
    assert " 7 " in row, listed.stdout  # max_concurrent was in `--json` only


def test_keys_create_looks_for_models_where_models_dir_says(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """With the models directory given to `serve` as --models-dir only, `keys create --models`
    warned that a model it served was 'no model ... of this configuration': it had no
    --models-dir, and the warning did not say where it had looked."""
    import subprocess
    import sys

    from servers import free_port, link_models

    models = link_models(tmp_path / "models", smollm2_gguf)
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(  # the port: one no server answers on (it would be asked for its names)
        f"data_dir: {tmp_path / 'cli-data'}\nmodels_dir: {tmp_path / 'none'}\nport: {free_port()}\n"
    )

    def create(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["keys", "create", name, "--models", smollm2_gguf.stem, "--config", str(cfg)]
        out = subprocess.run(
            [sys.executable, "-m", "llm_router", *argv, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and out.stdout.strip().startswith("sk-llmr-"), out.stderr
        return out

    assert "warning" not in create("k1", "--models-dir", str(models)).stderr
    said = " ".join(create("k2").stderr.split())
    assert f"nor a model in {tmp_path / 'none'} (yet)" in said, said
    assert "another --models-dir: give it here too" in said


async def test_a_stream_cut_after_its_200_is_an_error_in_usage(
    tmp_path: Path, master_env: str
) -> None:
    """A stream that failed mid-way (the upstream dropped it, a worker died) was recorded as
    served, status 200, `errors: 0` (found from outside)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def cut(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await answer.prepare(request)
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up",
                 "choices": [{"index": 0, "delta": {"content": "partial"}}]}  # fmt: skip
        await answer.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.3)  # the router has it (the stream is committed), then:
        assert request.transport is not None
        request.transport.close()  # dropped mid-answer
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", cut)
    async with TestServer(app, host="127.0.0.1") as upstream:
        remote = {"id": "flaky", "provider": "openai", "base_url": str(upstream.make_url("/v1")),
                  "health_check_interval": 0}  # fmt: skip
        async with gateway_app(tmp_path, models=[remote]) as g:
            secret = await g.key("streamer")
            body = {**CHAT_BODY, "model": "flaky", "stream": True}
            r = await g.client.post("/v1/chat/completions", json=body, headers=bearer(secret))
            assert r.status_code == 200 and "partial" in r.text and '"error"' in r.text
            usage = await g.client.get(
                "/admin/usage", params={"group_by": "key"}, headers=bearer(MASTER)
            )
            [row] = [row for row in usage.json()["data"] if row["key"] == "streamer"]
            assert row["requests"] == row["errors"] == 1


async def test_refusals_are_recorded_with_the_model_asked(tmp_path: Path, master_env: str) -> None:
    """Requests refused for a key's requests per minute, its budget or its allow-list, and by
    a draining server (SIGTERM), are usage rows naming the model asked, as a tokens-per-minute
    refusal's was: the first ones had an empty model, a draining server's none at all."""
    models = fake_models(tmp_path, chat={}, other={})
    models[0].cost.input = models[0].cost.output = 1_000_000.0  # 1 per token
    async with gateway_app(tmp_path, models=models) as gw:
        rpm = bearer(await gw.key("rpm-user", rpm=1))
        listed = bearer(await gw.key("listed-user", models=["chat"]))
        broke = bearer(await gw.key("broke-user", budget=1.0))
        other = {**CHAT_BODY, "model": "other"}
        statuses = [
            (await gw.client.post("/v1/chat/completions", json=body, headers=auth)).status_code
            for body, auth in [
                (other, rpm),
                (other, rpm),  # over its requests per minute
                (other, listed),  # not in its allow-list
                (CHAT_BODY, broke),  # spends more than its budget
                ({**CHAT_BODY, "model": "alias-of-nothing"}, broke),  # over its budget
            ]
        ]
        assert statuses == [200, 429, 404, 200, 429]
        gw.app.state.drain.begin()
        draining = await gw.client.post("/v1/chat/completions", json=other, headers=listed)
        assert draining.json()["error"]["code"] == "server_draining"
        gw.app.state.drain.draining = False  # to read the usage back over HTTP
        r = await gw.client.get(
            "/admin/usage", params={"group_by": "key,model"}, headers=bearer(MASTER)
        )
        rows = {(row["key"], row["model"]): row["errors"] for row in r.json()["data"]}
        assert rows == {
            ("rpm-user", "other"): 1,
            ("listed-user", "other"): 2,
            ("broke-user", "chat"): 0,
            ("broke-user", "alias-of-nothing"): 1,
        }


async def test_a_refused_multi_answer_request_charges_nothing_and_says_why(
    tmp_path: Path, master_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`n=3` against one slot and a queue of one: the `n` that can never fit was found by the
    third answer, after the first had generated (its tokens were charged to the key, for an
    answer the client never got), and the request log said `error=cancelled` of that 400 (the
    first answer's, cut by it); a 429 for a queue others fill said `cancelled` too (found from
    outside)."""
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    fake = fake_models(tmp_path, chat={"token_seconds": 0.01}, other={})
    models = [fake[0].model_copy(update={"parallel": 1}), fake[1]]
    async with gateway_app(tmp_path, models=models, queue_per_model=1) as gw:
        body = {"model": "chat", "prompt": "Hi", "max_tokens": 4}
        keys = {name: bearer(await gw.key(name)) for name in ("never", "long", "full")}
        r = await gw.client.post("/v1/completions", json={**body, "n": 3}, headers=keys["never"])
        assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
        # a 429: the slot held by another request, the queue by this one's first answer (the
        # keys made before: a key's database write under load outlasted the other request)
        long = asyncio.create_task(
            gw.client.post(
                "/v1/completions", json={**body, "max_tokens": 300}, headers=keys["long"]
            )
        )
        state = gw.app.state.manager.registry["chat"]
        while not state.active:  # told of each change (lifecycle/state.py `notify`)
            await state.changed.wait()
        r = await gw.client.post("/v1/completions", json={**body, "n": 2}, headers=keys["full"])
        assert r.status_code == 429, r.text
        assert (await long).status_code == 200
        usage = await gw.client.get(
            "/admin/usage", params={"group_by": "key"}, headers=bearer(MASTER)
        )
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "llm_router.requests" and r.getMessage().startswith("POST /v1/completions")
    ]
    refused = {line["status"]: line for line in lines if line["status"] != 200}
    assert "completion_tokens" not in refused[400], refused[400]
    assert refused[400]["error"] == "BadRequest" and refused[429]["error"] == "QueueFull", lines
    rows = {row["key"]: row for row in usage.json()["data"]}
    for key in ("never", "full"):
        assert rows[key]["prompt_tokens"] == rows[key]["completion_tokens"] == 0, rows
    assert rows["long"]["completion_tokens"] == 300
