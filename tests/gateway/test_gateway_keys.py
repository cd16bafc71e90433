"""Keys as values: their form, what each route needs, budget periods."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest
from pydantic import ValidationError

from llm_router.config_load import load_config
from llm_router.gateway.keys import (
    PREFIX,
    KeySpec,
    hash_key,
    make_key,
    period_end,
    period_start,
    required_scope,
)


def test_a_key_is_prefixed_random_and_stored_as_its_hash() -> None:
    secret, key = make_key(KeySpec(name="a"))
    other, _ = make_key(KeySpec(name="a"))
    assert secret.startswith(PREFIX) and len(secret) > len(PREFIX) + 40
    assert secret != other
    assert key.hash == hash_key(secret) and secret not in repr(key)
    assert key.scopes == {"inference", "read"}
    assert "hash" not in key.public()


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/chat/completions", "inference"),
        ("POST", "/v1/embeddings", "inference"),
        ("GET", "/v1/models", "read"),
        ("GET", "/v1/models/SmolLM2", "read"),
        ("GET", "/models", "read"),
        ("GET", "/models/events", "read"),
        ("POST", "/models/load", "admin"),
        ("POST", "/models/unload", "admin"),
        ("GET", "/admin/usage", "admin"),
        ("DELETE", "/admin/keys/x", "admin"),
        ("GET", "/metrics", "admin"),
        ("POST", "/tokenize", "inference"),
        ("GET", "/props", "read"),
        ("GET", "/health", None),
        ("GET", "/", None),
        ("GET", "/dashboard/app.js", None),
        ("GET", "/docs", None),
        ("GET", "/redoc", None),
        ("GET", "/docs/assets/swagger-ui-bundle.js", None),
        ("GET", "/docs/other", "read"),
        ("POST", "/something-new", "admin"),
        ("GET", "/something-new", "read"),
    ],
)
def test_each_route_needs_one_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_metrics_can_be_public() -> None:
    assert required_scope("GET", "/metrics", metrics_public=True) is None


@pytest.mark.parametrize(
    "spec",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "a", "scopes": []},
        {"name": "a", "scopes": ["root"]},
        {"name": "a", "rpm": 0},
        {"name": "a", "budget": -1},
        {"name": "a", "period": "week"},
        {"name": "a", "expires": "soon"},
        {"name": "a", "expires": "-1"},
        {"name": "a", "colour": "red"},
        # found from outside: a key that may use nothing (listed as "any"), a key sharing the
        # master key's or the CLI's name in usage, budgets and the audit log, a name no URL
        # can hold (clients normalize /admin/keys/.. away)
        {"name": "a", "models": []},
        {"name": "a", "models": [" ", ""]},
        {"name": "master"},
        {"name": "cli"},
        {"name": ".."},
        {"name": "."},
    ],
)
def test_bad_specs_are_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        KeySpec.model_validate(spec)


@pytest.mark.parametrize("expires", ["-5s", -1, "0"])
def test_an_expiry_not_in_the_future_says_so(expires: object) -> None:
    """A negative one said "not a finite duration" (found from outside)."""
    with pytest.raises(ValidationError, match="expires must be a positive duration"):
        KeySpec.model_validate({"name": "a", "expires": expires})


def test_expiry_takes_days_and_weeks() -> None:
    assert KeySpec(name="a", expires="30d").expires_at(0) == 30 * 86400
    assert KeySpec(name="a", expires="2w").expires_at(0) == 14 * 86400
    assert KeySpec(name="a", expires="12h").expires_at(0) == 12 * 3600
    assert KeySpec(name="a").expires_at(0) is None


def test_budget_periods_are_utc_days_and_months() -> None:
    now = calendar.timegm((2026, 12, 31, 15, 30, 0, 0, 0, 0))
    assert period_start("day", now) == calendar.timegm((2026, 12, 31, 0, 0, 0, 0, 0, 0))
    assert period_start("month", now) == calendar.timegm((2026, 12, 1, 0, 0, 0, 0, 0, 0))
    assert period_end("month", now) == calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0))
    assert period_end("day", now) == calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(("text", "mode"), [("off", "off"), ("on", "on"), ("auto", "auto")])
def test_yaml_auth_off_and_on_are_the_words_not_booleans(
    tmp_path: Path, text: str, mode: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"auth: {text}\n")
    assert load_config(path, environ={}).auth == mode


def test_a_short_master_key_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """LLM_ROUTER_MASTER_KEY=x was taken without a word (found from outside): it holds every
    scope, so a short one is logged; a long one is not."""
    from llm_router.config import Settings
    from llm_router.gateway.service import Gateway

    caplog.set_level("WARNING", logger="llm_router.gateway")
    Gateway(Settings(), environ={"LLM_ROUTER_MASTER_KEY": "x"})
    assert any("a key 1 characters long" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Gateway(Settings(), environ={"LLM_ROUTER_MASTER_KEY": "sk-" + "a1" * 20})
    assert not caplog.records


def test_several_master_keys_comma_separated_as_llama_server_takes_them() -> None:
    """`--api-key k1,k2` (and LLAMA_API_KEY) was one key "k1,k2": llama-server's help says
    several, comma-separated (found from outside)."""
    from llm_router.config import Settings
    from llm_router.errors import AuthenticationFailed
    from llm_router.gateway.service import Gateway

    one, two = "sk-" + "a1" * 20, "sk-" + "b2" * 20
    gateway = Gateway(Settings(), environ={"LLAMA_API_KEY": f"{one}, {two}"})
    assert gateway.authenticate(one).name == gateway.authenticate(two).name == "master"
    assert gateway.still_valid(gateway.authenticate(two))
    with pytest.raises(AuthenticationFailed):
        gateway.authenticate(f"{one},{two}")
