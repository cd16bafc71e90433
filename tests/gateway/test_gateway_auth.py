"""Auth on every route (the hot OpenAI ones included, which skip FastAPI's routing): no key, a
bad key, a revoked key, an expired key, a key without the scope, a key whose allow-list
excludes the model; and what a server with no key at all serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gw_helpers import CHAT_BODY, MASTER, Gw, bearer, gateway_app

from llm_router.errors import ConfigError
from openai_schema import validate

# (method, path, body, scope needed, whether the body names a model)
ROUTES: list[tuple[str, str, dict[str, Any] | None, str, bool]] = [
    ("POST", "/v1/chat/completions", CHAT_BODY, "inference", True),
    (
        "POST",
        "/v1/completions",
        {"model": "chat", "prompt": "Hi", "max_tokens": 2},
        "inference",
        True,
    ),
    ("POST", "/v1/embeddings", {"model": "chat", "input": "Hi"}, "inference", True),
    (
        "POST",
        "/v1/ensemble",
        {"targets": ["chat", "other"], "messages": CHAT_BODY["messages"], "max_tokens": 2},
        "inference",
        True,
    ),
    (
        "POST",
        "/v1/compare",
        {"targets": ["chat", "other"], "messages": CHAT_BODY["messages"], "max_tokens": 2},
        "inference",
        True,
    ),
    ("POST", "/tokenize", {"model": "chat", "content": "Hi"}, "inference", True),
    ("POST", "/detokenize", {"model": "chat", "tokens": [72]}, "inference", True),
    (
        "POST",
        "/apply-template",
        {"model": "chat", "messages": CHAT_BODY["messages"]},
        "inference",
        True,
    ),
    ("GET", "/v1/models", None, "read", False),
    ("GET", "/models", None, "read", False),
    ("GET", "/models/events", None, "read", False),
    ("GET", "/props", None, "read", False),
    ("POST", "/models/load", {"model": "chat"}, "admin", False),
    ("POST", "/models/unload", {"model": "chat"}, "admin", False),
    ("GET", "/metrics", None, "admin", False),
    ("GET", "/admin/keys", None, "admin", False),
    ("POST", "/admin/keys", {"name": "made-by-test"}, "admin", False),
    ("GET", "/admin/usage", None, "admin", False),
    ("GET", "/admin/audit", None, "admin", False),
    ("POST", "/admin/reload", None, "admin", False),
]
IDS = [f"{m} {p}" for m, p, *_ in ROUTES]
LACKING = {"inference": ["read", "admin"], "read": ["inference"], "admin": ["inference", "read"]}


async def call(
    gw: Gw, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> httpx.Response:
    return await gw.client.request(method, path, json=body, headers=headers)


def refused(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == code
    message: str = r.json()["error"]["message"]
    return message


@pytest.mark.parametrize(("method", "path", "body", "scope", "_model"), ROUTES, ids=IDS)
async def test_every_route_refuses_requests_without_a_valid_key(
    gw: Gw, method: str, path: str, body: dict[str, Any] | None, scope: str, _model: bool
) -> None:
    revoked = await gw.key("revoked-one", scopes=["inference", "read", "admin"])
    assert (await gw.client.delete("/admin/keys/revoked-one", headers=bearer(MASTER))).is_success
    expired = await gw.expired_key("expired-one")

    r = await call(gw, method, path, body, {})
    assert "didn't provide an API key" in refused(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await call(gw, method, path, body, bearer("sk-llmr-not-a-key"))
    assert "Incorrect API key" in refused(r, 401, "invalid_api_key")
    r = await call(gw, method, path, body, {"authorization": f"Basic {MASTER}"})
    refused(r, 401, "invalid_api_key")
    r = await call(gw, method, path, body, bearer(revoked))
    assert "revoked" in refused(r, 401, "invalid_api_key")
    r = await call(gw, method, path, body, bearer(expired))
    assert "expired" in refused(r, 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path", "body", "scope", "_model"), ROUTES, ids=IDS)
async def test_every_route_needs_its_scope(
    gw: Gw, method: str, path: str, body: dict[str, Any] | None, scope: str, _model: bool
) -> None:
    lacking = await gw.key("lacking", scopes=LACKING[scope])
    holding = await gw.key("holding", scopes=[scope])

    r = await call(gw, method, path, body, bearer(lacking))
    assert f"lacks the '{scope}' scope" in refused(r, 403, "insufficient_permissions")
    if path == "/models/events":
        return  # an endless stream, which the in-process transport cannot end early
    r = await call(gw, method, path, body, bearer(holding))
    assert r.status_code < 400, r.text


MODEL_ROUTES = [r for r in ROUTES if r[4]]


@pytest.mark.parametrize(
    ("method", "path", "body", "scope", "_model"), MODEL_ROUTES, ids=[r[1] for r in MODEL_ROUTES]
)
async def test_a_model_outside_the_allow_list_does_not_exist_for_the_key(
    gw: Gw, method: str, path: str, body: dict[str, Any] | None, scope: str, _model: bool
) -> None:
    only_other = await gw.key("only-other", models=["other"])
    only_chat = await gw.key("only-chat", models=["chat", "other"])

    r = await call(gw, method, path, body, bearer(only_other))
    assert refused(r, 404, "model_not_found") == "The model 'chat' does not exist"
    r = await call(gw, method, path, body, bearer(only_chat))
    assert r.status_code == 200, r.text


async def test_a_body_nested_too_deep_is_the_routes_400_for_a_key_with_an_allow_list(
    gw: Gw,
) -> None:
    """The allow-list's look at the body raised RecursionError: a bare 500 (found from
    outside); it is the 400 every other key gets."""
    only_chat = await gw.key("nested", models=["chat"])
    body = b'{"model": "chat", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    r = await gw.client.post(
        "/v1/chat/completions",
        content=body,
        headers={**bearer(only_chat), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


async def test_a_refusal_for_a_missing_scope_names_the_key_in_its_log_line(
    gw: Gw, caplog: pytest.LogCaptureFixture
) -> None:
    """200 and 404 lines named the key, a 403 for its scope did not (found from outside)."""
    import logging

    from llm_router.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="llm_router.requests")
    secret = await gw.key("app", scopes=["inference"])
    r = await gw.client.get("/metrics", headers=bearer(secret))
    assert r.status_code == 403
    lines = [JsonFormatter().format(x) for x in caplog.records if x.name == "llm_router.requests"]
    assert '"key":"app"' in lines[-1] and '"status":403' in lines[-1], lines


async def test_a_key_is_taken_as_llama_server_takes_it_too(gw: Gw) -> None:
    """llama-server also takes its key bare in Authorization or in X-Api-Key; those got a
    401 here (found from outside). Another scheme is still no key."""
    secret = await gw.key("llama-client")
    for headers in ({"authorization": secret}, {"x-api-key": secret}, bearer(secret)):
        r = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    basic = await gw.client.post(
        "/v1/chat/completions", json=CHAT_BODY, headers={"authorization": f"Basic {secret}"}
    )
    refused(basic, 401, "invalid_api_key")


async def test_the_allow_list_matches_aliases_and_routes(tmp_path: Path, master_env: str) -> None:
    from inproc import fake_models

    models = fake_models(tmp_path, chat={}, other={})
    models[0].aliases = ["talker"]
    routes = [{"name": "auto", "targets": ["chat"]}]
    async with gateway_app(tmp_path, models=models, routes=routes) as gw:
        by_alias = await gw.key("by-alias", models=["talker"])
        by_route = await gw.key("by-route", models=["auto"])
        ask = {**CHAT_BODY}
        assert (
            await gw.client.post("/v1/chat/completions", json=ask, headers=bearer(by_alias))
        ).status_code == 200
        r = await gw.client.post("/v1/chat/completions", json=ask, headers=bearer(by_route))
        refused(r, 404, "model_not_found")  # the route's target is not the route
        r = await gw.client.post(
            "/v1/chat/completions", json={**ask, "model": "auto"}, headers=bearer(by_route)
        )
        assert r.status_code == 200, r.text


async def test_a_404_names_only_models_the_key_may_see(tmp_path: Path, master_env: str) -> None:
    """An unknown name's 404 names the models it may mean among those `GET /v1/models`
    shows the caller: a key's allow-list hides the others here too."""
    from inproc import fake_models

    models = fake_models(tmp_path, **{"Chat-Model.Q4_1": {}, "secret-model": {}})
    async with gateway_app(tmp_path, models=models) as gw:
        every = await gw.key("every")
        for asked, meant in (("chat-model", "Chat-Model.Q4_1"), ("secret-mode", "secret-model")):
            r = await gw.client.post(
                "/v1/chat/completions", json={**CHAT_BODY, "model": asked}, headers=bearer(every)
            )
            message = f"The model '{asked}' does not exist; did you mean '{meant}'?"
            assert refused(r, 404, "model_not_found") == message
        # "secret-mode" is on this key's list (and exists nowhere); "secret-model" is not
        narrow = await gw.key("narrow", models=["Chat-Model.Q4_1", "secret-mode"])
        r = await gw.client.post(
            "/v1/chat/completions",
            json={**CHAT_BODY, "model": "secret-mode"},
            headers=bearer(narrow),
        )
        message = refused(r, 404, "model_not_found")
        assert "secret-model" not in message
        assert message == "The model 'secret-mode' does not exist (GET /v1/models lists the models)"


async def test_an_ensembles_judge_and_a_props_model_are_held_to_the_allow_list(
    tmp_path: Path, master_env: str
) -> None:
    from inproc import fake_models

    models = fake_models(tmp_path, chat={}, other={}, third={})
    async with gateway_app(tmp_path, models=models) as gw:
        two = await gw.key("two", models=["chat", "other"])
        ask = {"targets": ["chat", "other"], "messages": CHAT_BODY["messages"], "max_tokens": 2}
        judged = {**ask, "mode": "best-of", "scorer": "judge", "judge": "third"}
        r = await gw.client.post("/v1/ensemble", json=judged, headers=bearer(two))
        assert refused(r, 404, "model_not_found") == "The model 'third' does not exist"
        r = await gw.client.post(
            "/v1/ensemble", json={**judged, "judge": "chat"}, headers=bearer(two)
        )
        assert r.status_code == 200, r.text

        r = await gw.client.get("/props", params={"model": "third"}, headers=bearer(two))
        assert refused(r, 404, "model_not_found") == "The model 'third' does not exist"
        r = await gw.client.get("/props", params={"model": "chat"}, headers=bearer(two))
        assert r.status_code == 200, r.text


async def test_public_routes_need_no_key(gw: Gw) -> None:
    assert (await gw.client.get("/health")).status_code == 200
    assert (await gw.client.get("/v1/health")).status_code == 200  # llama-server's name
    assert (await gw.client.get("/openapi.json")).status_code == 200


async def test_metrics_can_be_made_public(tmp_path: Path, master_env: str) -> None:
    async with gateway_app(tmp_path, gateway={"metrics_public": True}) as gw:
        assert (await gw.client.get("/metrics")).status_code == 200
        refused(await gw.client.get("/admin/keys"), 401, "invalid_api_key")


async def test_the_route_sees_the_key_name_on_its_state(gw: Gw) -> None:
    secret = await gw.key("named")
    seen: list[Any] = []

    from starlette.types import ASGIApp, Receive, Scope, Send

    inner: ASGIApp = gw.app.middleware_stack  # type: ignore[assignment]

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(scope, receive, send)
        seen.append(scope.get("state", {}).get("key_name"))

    gw.app.middleware_stack = spy  # type: ignore[assignment]
    r = await gw.client.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer(secret))
    assert r.status_code == 200
    assert seen == ["named"]


async def test_an_ab_split_is_as_sticky_per_key_with_the_gateway_as_without(
    tmp_path: Path, master_env: str
) -> None:
    """With auth on the route knows a key by the hash the gateway made of it: the same id,
    so the same arm, as a server without the gateway gives it (routing's `api_key_id`)."""
    from llm_router.routing.strategies import ab_split, api_key_id

    weights = {"chat": 1.0, "other": 1.0}
    routes = [{"name": "ab", "targets": list(weights), "split": weights}]
    async with gateway_app(tmp_path, routes=routes) as gw:
        for i in range(6):
            secret = await gw.key(f"ab-{i}")
            arm = ab_split(weights, api_key_id(secret), salt="ab")
            for _ in range(2):
                r = await gw.client.post(
                    "/v1/chat/completions",
                    json={**CHAT_BODY, "model": "ab"},
                    headers=bearer(secret),
                )
                assert r.status_code == 200, r.text
                assert r.headers["x-llm-router-model"] == arm


# -- a server with no key ----------------------------------------------------------------------


async def test_without_keys_loopback_clients_are_served_and_others_refused(tmp_path: Path) -> None:
    async with gateway_app(tmp_path) as gw:
        assert not gw.gateway.active
        assert (await gw.client.post("/v1/chat/completions", json=CHAT_BODY)).status_code == 200
        # Recorded all the same, with no key name (the config names a data directory).
        assert gw.gateway.store is not None
        await gw.gateway.flush()
        rows = await gw.gateway.store.usage(0, 2**40, ["key"])
        assert [(row["key"], row["requests"]) for row in rows] == [(None, 1)]
        remote = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app, client=("192.0.2.7", 5000)),
            base_url="http://127.0.0.1",
        )
        async with remote:
            r = await remote.post("/v1/chat/completions", json=CHAT_BODY)
        assert "no API keys yet" in refused(r, 403, "insufficient_permissions")


async def test_auth_off_serves_anyone(tmp_path: Path, master_env: str) -> None:
    async with gateway_app(tmp_path, auth="off", host="0.0.0.0") as gw:
        remote = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gw.app, client=("192.0.2.7", 5000)),
            base_url="http://127.0.0.1",
        )
        async with remote:
            assert (await remote.post("/v1/chat/completions", json=CHAT_BODY)).status_code == 200


async def test_without_keys_a_public_address_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth: off"):
        async with gateway_app(tmp_path, host="0.0.0.0"):
            pass


async def test_every_loopback_address_is_this_machine_alone(tmp_path: Path) -> None:
    """127.0.0.2 was refused as public (a fixed list of three names): all of 127.0.0.0/8 and
    ::1 serve without keys, as any other loopback client is (found from outside)."""
    from llm_router.gateway.service import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))
    async with gateway_app(tmp_path, host="127.0.0.2") as gw:
        assert (await gw.client.post("/v1/chat/completions", json=CHAT_BODY)).status_code == 200


def test_serve_refuses_a_public_address_in_one_line_before_it_starts(tmp_path: Path) -> None:
    """The refusal came out of uvicorn's start-up as a ~70-line traceback (found from
    outside): `serve` now asks first, and says why in one line, exit 2."""
    import os
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if k not in ("LLM_ROUTER_MASTER_KEY", "LLAMA_API_KEY")
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nmodels_dir: {tmp_path / 'models'}\n")
    out = subprocess.run(
        [sys.executable, "-m", "llm_router", "serve", "--config", str(cfg), "--host", "0.0.0.0",
         "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "error: refusing to listen on 0.0.0.0: no API key exists" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "models").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_refused_public_address_never_opens_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """The refusal came after the socket was bound and listening (~2 s on 0.0.0.0, and with
    `--workers N` until every process had refused; found from outside): nothing binds now."""
    from typer.testing import CliRunner

    from llm_router import cli
    from llm_router.server import run

    def bound(*args: object) -> None:
        raise AssertionError("a port was opened before the refusal")

    monkeypatch.setattr(run, "_bind", bound)
    monkeypatch.delenv("LLM_ROUTER_MASTER_KEY", raising=False)
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nmodels_dir: {tmp_path / 'models'}\n")
    args = ["serve", "--config", str(cfg), "--host", "0.0.0.0", "--port", "0"]
    out = CliRunner().invoke(cli.app, [*args, "--workers", workers])
    assert out.exit_code == 2, out.output
    assert "refusing to listen on 0.0.0.0" in out.output


async def test_a_public_address_is_served_once_a_master_key_exists(
    tmp_path: Path, master_env: str
) -> None:
    async with gateway_app(tmp_path, host="0.0.0.0") as gw:
        refused(
            await gw.client.post("/v1/chat/completions", json=CHAT_BODY), 401, "invalid_api_key"
        )


async def test_auth_on_without_any_key_refuses_everyone(tmp_path: Path) -> None:
    async with gateway_app(tmp_path, auth="on") as gw:
        refused(
            await gw.client.post("/v1/chat/completions", json=CHAT_BODY), 401, "invalid_api_key"
        )
        refused(await gw.client.get("/v1/models", headers=bearer("sk-x")), 401, "invalid_api_key")


async def test_a_key_made_while_serving_turns_auth_on(tmp_path: Path) -> None:
    async with gateway_app(tmp_path) as gw:
        r = await gw.client.post("/admin/keys", json={"name": "first", "scopes": ["admin"]})
        assert r.status_code == 201, r.text
        secret = r.json()["key"]
        assert secret.startswith("sk-llmr-")
        refused(await gw.client.get("/admin/keys"), 401, "invalid_api_key")
        listed = await gw.client.get("/admin/keys", headers=bearer(secret))
        assert [k["name"] for k in listed.json()["data"]] == ["first"]
        assert "key" not in listed.json()["data"][0]  # the secret is shown once only


async def test_listings_show_only_the_models_a_key_may_use(gw: Gw) -> None:
    narrow = await gw.key("narrow", models=["other"])
    wide = await gw.key("wide")
    for path in ("/v1/models", "/models"):
        seen = await gw.client.get(path, headers=bearer(narrow))
        assert [m["id"] for m in seen.json()["data"]] == ["other"], path
        everything = await gw.client.get(path, headers=bearer(wide))
        assert {m["id"] for m in everything.json()["data"]} == {"chat", "other"}, path


async def test_a_chunked_body_over_the_limit_is_413_for_a_key_with_an_allow_list(
    tmp_path: Path, master_env: str
) -> None:
    async with gateway_app(tmp_path, max_body_bytes=4096) as gw:
        narrow = await gw.key("narrow", models=["chat"])

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"x" * 1024

        r = await gw.client.post(
            "/v1/chat/completions",
            content=chunks(),
            headers={**bearer(narrow), "content-type": "application/json"},
        )
        assert "over the limit" in refused(r, 413, "body_too_large")


async def test_a_revocation_heard_from_another_router_applies_at_once(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a router does with a `revoked` message (gateway/events.py; with Redis in
    test_gateway_redis.py): the key is refused before the database is read again."""
    from llm_router.errors import AuthenticationFailed

    secret = await gw.key("elsewhere")
    other = await gw.key("bystander")
    assert gw.gateway.authenticate(secret).name == "elsewhere"
    reads: list[bool] = []

    async def refresh() -> None:  # the database still says the key is fine
        reads.append(True)

    monkeypatch.setattr(gw.gateway, "refresh", refresh)
    await gw.gateway._on_key_event({"event": "revoked", "name": "elsewhere"})
    with pytest.raises(AuthenticationFailed, match="revoked"):
        gw.gateway.authenticate(secret)
    assert gw.gateway.authenticate(other).name == "bystander"
    assert reads == [True]  # then the keys are read again, to be sure


async def test_the_default_model_is_behind_a_keys_allow_list_too(
    tmp_path: Path, master_env: str
) -> None:
    """A request naming no model gets `default_model`: a key that may not use that model
    must not reach it that way."""
    async with gateway_app(tmp_path, default_model="chat") as gw:
        secret = await gw.key("only-other", models=["other"])
        unnamed = {k: v for k, v in CHAT_BODY.items() if k != "model"}
        r = await gw.client.post("/v1/chat/completions", json=unnamed, headers=bearer(secret))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        allowed = {**unnamed, "model": "other"}
        ok = await gw.client.post("/v1/chat/completions", json=allowed, headers=bearer(secret))
        assert ok.status_code == 200
        mine = await gw.client.post("/v1/chat/completions", json=unnamed, headers=bearer(MASTER))
        assert mine.status_code == 200 and mine.json()["model"] == "chat"


async def test_a_path_nothing_serves_is_a_404_for_any_key(gw: Gw) -> None:
    """POST /api/chat (Ollama's) with an inference key was a 403 "lacks the 'admin' scope":
    unknown paths count as admin ones; one that no route serves is now told so, whatever the
    key's scopes. A real admin route still needs the scope."""
    secret = await gw.key("user-key", scopes=["inference", "read"])
    r = await gw.client.post("/api/chat", json={"model": "chat"}, headers=bearer(secret))
    assert r.status_code == 404 and "Ollama's native API" in r.json()["error"]["message"]
    load = await gw.client.post("/models/load", json={"model": "chat"}, headers=bearer(secret))
    assert load.status_code == 403
    assert (await gw.client.post("/api/chat", json={})).status_code == 401  # still a key


async def test_compare_is_not_checked_against_the_default_model(
    tmp_path: Path, master_env: str
) -> None:
    """With `default_model` set, /v1/compare (no `model`, its `targets`) was checked against
    the default model, so a key without it could not compare anything (found from outside)."""
    from inproc import fake_models

    models = fake_models(tmp_path, chat={}, other={}, third={})
    async with gateway_app(tmp_path, default_model="chat", models=models) as gw:
        secret = await gw.key("not-chat", models=["other", "third"])
        ask = {
            "targets": ["other", "third"],
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        }
        r = await gw.client.post("/v1/compare", json=ask, headers=bearer(secret))
        assert r.status_code == 200, r.text


async def test_an_events_stream_ends_when_its_key_is_revoked(gw: Gw) -> None:
    """The key was checked only when the stream opened: a revoked key went on receiving
    every model's events, and a dashboard on it stayed live (found from outside)."""
    reader = await gw.key("reader", scopes=["read"])
    stream = asyncio.create_task(gw.client.get("/models/events", headers=bearer(reader)))
    await asyncio.sleep(0.3)
    assert not stream.done()  # an open stream
    r = await gw.client.delete("/admin/keys/reader", headers=bearer(MASTER))
    assert r.status_code == 200, r.text
    ended = await asyncio.wait_for(stream, 5)  # within about a second
    assert ended.status_code == 200
    refused(await gw.client.get("/models", headers=bearer(reader)), 401, "invalid_api_key")


async def _one_refused(gw: Gw, secret: str, opened: int) -> tuple[httpx.Response, list[Any]]:
    """`opened` event streams asked at once with `secret`: the one that ended (a refusal; the
    others stay open), and the ones still open."""
    streams = [
        asyncio.create_task(gw.client.get("/models/events", headers=bearer(secret)))
        for _ in range(opened)
    ]
    done, still = await asyncio.wait(streams, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "every stream stayed open"
    return done.pop().result(), list(still)


async def test_one_key_cannot_take_every_event_subscription(
    master_env: str, tmp_path: Path
) -> None:
    """A read-only key opened all `max_event_subscribers` subscriptions; the master key then
    got 503 server_busy, the dashboard blind for everyone (found from outside). A key holds at
    most half of them (429 past it), so others, the master key's dashboard too, get theirs."""
    async with gateway_app(tmp_path, max_event_subscribers=4) as gw:
        reader = await gw.key("reader", scopes=["read"])
        r, readers = await _one_refused(gw, reader, 3)
        message = refused(r, 429, "rate_limit_exceeded")
        assert "'reader'" in message and "max_event_subscribers" in message
        assert r.headers["retry-after"] == "5"
        r, masters = await _one_refused(gw, MASTER, 3)  # two more fit: four in all
        assert "too many event subscribers" in refused(r, 503, "server_busy")
        assert (await gw.client.delete("/admin/keys/reader", headers=bearer(MASTER))).is_success
        ended = await asyncio.wait_for(asyncio.gather(*readers), 10)  # ended by the revocation
        assert [x.status_code for x in ended] == [200, 200]
        for stream in masters:
            stream.cancel()
        await asyncio.gather(*masters, return_exceptions=True)
