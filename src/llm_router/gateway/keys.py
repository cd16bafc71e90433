"""API keys as values: what a key may do (`KeySpec`), the stored record (`ApiKey`), and the
pure decisions about them (which scope a request needs, whether a key may see a model).

A key is `sk-llmr-` and 32 random bytes (URL-safe base64). It is shown once; the store keeps
only its SHA-256 (the secret has 256 bits of entropy, so a fast hash is enough and lets the
request path find a key with one dictionary lookup)."""

from __future__ import annotations

import calendar
import functools
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..protocol.numbers import Float, Int
from ..units import parse_duration

__all__ = [
    "MASTER_ENV",
    "PREFIX",
    "SCOPES",
    "ApiKey",
    "KeySpec",
    "Scope",
    "hash_key",
    "make_key",
    "master_key",
    "new_secret",
    "parse_models",
    "period_end",
    "period_start",
    "required_scope",
]

PREFIX = "sk-llmr-"
MASTER_ENV = "LLM_ROUTER_MASTER_KEY"
Scope = Literal["inference", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("inference", "read", "admin")
DEFAULT_SCOPES: tuple[Scope, ...] = ("inference", "read")
Period = Literal["day", "month"]


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    """The stored form of a key. The digests of the last 1024 keys of sane length are kept
    (every request with auth on hashes its key: a dictionary lookup instead of a SHA-256)."""
    return _recent_digest(secret) if len(secret) <= 128 else _digest(secret)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_recent_digest = functools.lru_cache(maxsize=1024)(_digest)


MAX_LIMIT = 2**31 - 1  # limits are stored as database integers
# Names usage and the audit log give to what is not a stored key: a key of that name would
# share its spend, its budget and its rows.
RESERVED_NAMES = {"master": "the master key (LLM_ROUTER_MASTER_KEY)", "cli": "the command line"}


class KeySpec(BaseModel):
    """What `POST /admin/keys` and `llm-router keys create` take."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@:-]+$")
    scopes: list[Scope] = Field(default_factory=lambda: list(DEFAULT_SCOPES), min_length=1)
    models: list[str] | None = Field(
        None, description="Model ids, aliases, routes or remote targets the key may use."
    )
    rpm: Int | None = Field(None, ge=1, le=MAX_LIMIT)
    tpm: Int | None = Field(None, ge=1, le=MAX_LIMIT)
    max_concurrent: Int | None = Field(None, ge=1, le=MAX_LIMIT)
    budget: Float | None = Field(None, ge=0, le=1e15, description="Spend allowed per period.")
    period: Period = "month"
    expires: str | Float | None = Field(None, description="Lifetime, e.g. '30d' or '12h'.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(
                f"'{value}' names {RESERVED_NAMES[value]} in usage and the audit log; "
                "choose another name"
            )
        if value in (".", ".."):
            raise ValueError("'.' and '..' cannot be named in a URL path; choose another name")
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str] | None) -> list[str] | None:
        return parse_models(value)

    @field_validator("expires")
    @classmethod
    def _check_expires(cls, value: str | float | None) -> str | float | None:
        if value is not None and _seconds(value) <= 0:
            raise ValueError("expires must be a positive duration such as '30d'")
        return value

    def expires_at(self, now: float) -> float | None:
        return None if self.expires is None else now + _seconds(self.expires)


def _seconds(value: str | float) -> float:
    """A duration with days allowed ('30d', '2w'), else as `parse_duration`."""
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in ("d", "w"):
        return int(value[:-1]) * (86400 if value[-1] == "d" else 7 * 86400)
    try:
        seconds = parse_duration(value)
    except Exception as exc:
        raise ValueError(f"not a duration: {value!r}") from exc
    if seconds is None:  # a negative one ('never' elsewhere): no key is made expired
        raise ValueError(f"expires must be a positive duration such as '30d', not {value!r}")
    return seconds


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (no secret): a snapshot, replaced whole when the store changes."""

    name: str
    hash: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget: float | None = None
    period: Period = "month"
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    hint: str = ""  # the first characters of the secret, to tell keys apart in listings
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def audit_detail(self) -> dict[str, object]:
        """What the audit log keeps of a key created (over HTTP or by the CLI alike)."""
        detail = self.public()
        for name in ("key_hint", "status", "revoked_at"):
            detail.pop(name, None)
        return detail

    def public(self) -> dict[str, object]:
        """What listings show: everything but the hash."""
        return {
            "name": self.name,
            "key_hint": self.hint + "...",
            "scopes": sorted(self.scopes),
            "models": sorted(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "budget": self.budget,
            "period": self.period,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": "revoked" if self.revoked_at else ("expired" if self.expired() else "active"),
        }


def make_key(spec: KeySpec, now: float | None = None) -> tuple[str, ApiKey]:
    """A new secret and its record."""
    now = time.time() if now is None else now
    secret = new_secret()
    record = ApiKey(
        name=spec.name,
        hash=hash_key(secret),
        scopes=frozenset(spec.scopes),
        models=frozenset(spec.models) if spec.models is not None else None,
        rpm=spec.rpm,
        tpm=spec.tpm,
        max_concurrent=spec.max_concurrent,
        budget=spec.budget,
        period=spec.period,
        created_at=now,
        expires_at=spec.expires_at(now),
        hint=secret[: len(PREFIX) + 4],
    )
    return secret, record


def master_key(secret: str) -> ApiKey:
    return ApiKey(name="master", hash=hash_key(secret), scopes=frozenset(SCOPES))


# (method, path) -> scope. Paths not listed: GET/HEAD need `read`, anything else `admin`.
_PUBLIC = frozenset(
    {"/health", "/v1/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}
)
_PUBLIC_PREFIX = "/docs/assets/"  # the API docs' scripts and styles (server/routes_docs.py)
_READ_PATHS = frozenset({"/v1/models", "/models", "/models/events", "/props"})
_INFERENCE_PATHS = frozenset({"/tokenize", "/detokenize", "/apply-template"})


def required_scope(method: str, path: str, metrics_public: bool = False) -> Scope | None:
    """The scope a request needs; None: anyone (health, API docs, the dashboard's page)."""
    if path in _PUBLIC or path.startswith(_PUBLIC_PREFIX):
        return None
    if metrics_public and path == "/metrics":
        return None
    if path.startswith("/v1/"):
        return (
            "read" if method in ("GET", "HEAD") and path.startswith("/v1/models") else "inference"
        )
    if path.startswith("/admin/") or path == "/admin" or path == "/metrics":
        return "admin"
    if path in _INFERENCE_PATHS:
        return "inference"
    if method in ("GET", "HEAD"):
        if path in _READ_PATHS or path.startswith("/models/"):
            return "read"
        if path == "/" or path.startswith("/dashboard/") or path == "/favicon.ico":
            return None  # the dashboard's page; the data it shows comes from guarded routes
        return "read"
    return "admin"  # load, unload and anything else that changes the server


def period_start(period: Period, now: float | None = None) -> float:
    """The start of the current budget period (UTC day or month), as a Unix time."""
    t = time.gmtime(time.time() if now is None else now)
    day = 1 if period == "month" else t.tm_mday
    return float(calendar.timegm((t.tm_year, t.tm_mon, day, 0, 0, 0, 0, 0, 0)))


def period_end(period: Period, now: float | None = None) -> float:
    t = time.gmtime(time.time() if now is None else now)
    if period == "day":
        return period_start(period, now) + 86400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


def parse_models(value: Iterable[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [v.strip() for v in items if v.strip()]
    if not names:  # a key that may use nothing; leave the list out for every model
        raise ValueError("models must name at least one model (leave it out for all of them)")
    return names
