"""The gateway's state in a database: keys, the usage of every request, the audit log.

One code path through SQLAlchemy 2's async engine: SQLite (aiosqlite) in the data directory
by default, PostgreSQL (asyncpg) when `database_url` says so. The schema is Alembic's
(gateway/migrations), brought up to date by `migrate()` at start-up, under a lock so that
several routers starting at once on one database migrate it once.

Nothing here runs on a request's path: the server reads keys into memory (gateway/service.py)
and writes usage in batches."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..config import Settings
from ..errors import ConfigError, Conflict, DatabaseUnavailable
from .keys import ApiKey

__all__ = ["REQUEST_COLUMNS", "Store", "database_url", "default_data_dir", "metadata"]

metadata = MetaData()

keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(32), nullable=False),
    Column("scopes", String(64), nullable=False),
    Column("models", Text, nullable=True),  # JSON list, or NULL: any model
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("budget", Float, nullable=True),
    Column("period", String(8), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

requests = Table(
    "requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("key_name", String(128), nullable=True),
    Column("model", String(256), nullable=False),  # what the client asked for
    Column("target", String(256), nullable=False),  # what served it ('' if nothing did)
    Column("route", String(128), nullable=False),  # the HTTP path
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("cost", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency", Float, nullable=False),
    Column("ttft", Float, nullable=True),
    Index("ix_requests_ts", "ts"),
    Index("ix_requests_key_ts", "key_name", "ts"),
)

# The columns of a usage row as `Store.add_requests` takes it (a tuple, in this order).
REQUEST_COLUMNS = (
    "ts",
    "key_name",
    "model",
    "target",
    "route",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "status",
    "latency",
    "ttft",
)

MAX_ROWS_PER_INSERT = 1024  # SQLite allows 32766 parameters a statement; 12 a row


@functools.cache
def _sqlite_insert(rows: int) -> str:
    """SQLite's INSERT of `rows` usage rows in one statement (qmark parameters)."""
    row = "(" + ", ".join("?" * len(REQUEST_COLUMNS)) + ")"
    return f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES " + ", ".join([row] * rows)


audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=True),
    Column("action", String(64), nullable=False),
    Column("subject", String(256), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_audit_ts", "ts"),
)

DB_FILE = "llm-router.db"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm-router"


def database_url(settings: Settings) -> str:
    """The async SQLAlchemy URL of the state database."""
    url = settings.database_url
    if url is None:
        data_dir = settings.data_dir or default_data_dir()
        return f"sqlite+aiosqlite:///{data_dir.expanduser().resolve() / DB_FILE}"
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ConfigError(f"database_url: {url!r} is neither postgresql://... nor sqlite://...")


def make_data_dir(folder: Path) -> None:
    """Create the SQLite file's directory, or say (ConfigError) why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {folder} as the data directory (data_dir): {exc.strerror or exc}"
        ) from None


def check_data_dir(settings: Settings) -> None:
    """Before a server starts: the data directory the configuration names can be made (a
    ConfigError, said in one line, rather than a failed start-up's traceback)."""
    path = sqlite_path(database_url(settings))
    if path is not None and (settings.data_dir is not None or settings.database_url):
        make_data_dir(path.parent)


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) else None


def _row_key(row: Any) -> ApiKey:
    return ApiKey(
        name=row.name,
        hash=row.key_hash,
        scopes=frozenset(row.scopes.split(",")),
        models=frozenset(json.loads(row.models)) if row.models is not None else None,
        rpm=row.rpm,
        tpm=row.tpm,
        max_concurrent=row.max_concurrent,
        budget=row.budget,
        period=row.period,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        hint=row.hint,
    )


class Store:
    """The database behind the gateway. Every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is not None:
            make_data_dir(path.parent)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=path is None)
        self._insert_requests: str | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        return cls(database_url(settings))

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from .migrate import upgrade

        try:
            async with self.engine.connect() as conn:
                await conn.run_sync(upgrade)
                await conn.commit()
        except (OSError, SQLAlchemyError) as exc:  # the first connection: say which database
            cause = getattr(exc, "orig", None) or exc
            raise ConfigError(
                f"cannot open the database {_redacted(self.url)}: {type(cause).__name__}: {cause}"
            ) from None

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _connect(self, begin: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection (a transaction with `begin`); DatabaseUnavailable when the database
        cannot be reached."""
        try:
            async with self.engine.begin() if begin else self.engine.connect() as conn:
                yield conn
        except (OSError, OperationalError, InterfaceError) as exc:
            raise self._unavailable(exc) from exc

    def _begin(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return self._connect(begin=True)

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        cause = getattr(exc, "orig", None) or exc
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return DatabaseUnavailable(
            f"the gateway's database {_redacted(self.url)} cannot be reached: "
            f"{type(cause).__name__}{': ' + text if text else ''}"
        )

    # -- keys ---------------------------------------------------------------------------------

    async def add_key(self, key: ApiKey) -> None:
        async with self._begin() as conn:
            found = await conn.execute(select(keys.c.id).where(keys.c.name == key.name))
            if found.first() is not None:
                raise Conflict(f"a key named {key.name!r} exists already", param="name")
            await conn.execute(
                insert(keys).values(
                    name=key.name,
                    key_hash=key.hash,
                    hint=key.hint,
                    scopes=",".join(sorted(key.scopes)),
                    models=json.dumps(sorted(key.models)) if key.models is not None else None,
                    rpm=key.rpm,
                    tpm=key.tpm,
                    max_concurrent=key.max_concurrent,
                    budget=key.budget,
                    period=key.period,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                    revoked_at=None,
                )
            )

    async def keys(self) -> list[ApiKey]:
        async with self._connect() as conn:
            rows = await conn.execute(select(keys).order_by(keys.c.name))
            return [_row_key(r) for r in rows]

    async def key(self, name: str) -> ApiKey | None:
        async with self._connect() as conn:
            row = (await conn.execute(select(keys).where(keys.c.name == name))).first()
            return _row_key(row) if row is not None else None

    async def revoke(self, name: str, now: float | None = None) -> bool:
        """Mark the key revoked; False if there is no such key (or it was revoked already)."""
        async with self._begin() as conn:
            done = await conn.execute(
                update(keys)
                .where(keys.c.name == name, keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time() if now is None else now)
            )
            return bool(done.rowcount)

    async def delete_key(self, name: str) -> None:
        async with self._begin() as conn:
            await conn.execute(delete(keys).where(keys.c.name == name))

    # -- usage --------------------------------------------------------------------------------

    async def add_requests(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert usage rows, tuples in `REQUEST_COLUMNS` order, in one transaction.

        SQLite gets them as multi-row INSERTs of up to 1024 rows (chunks of power-of-two
        sizes, so that at most 11 statement texts are ever compiled): the driver's
        `executemany` hands each row to SQLite on its own, giving up and taking back the
        interpreter lock around every one, and with the event loop on the other side of that
        lock a flush cost ~10-25 us of CPU a request at c=64 (bench/overhead.py --auth).
        PostgreSQL's driver pipelines `executemany` in the event loop already: there the
        statement is compiled once for the dialect and the rows given to it as they are."""
        if not rows:
            return
        async with self._begin() as conn:
            if self.engine.dialect.name != "sqlite":
                if self._insert_requests is None:
                    self._insert_requests = str(
                        insert(requests)
                        .inline()
                        .compile(dialect=self.engine.dialect, column_keys=list(REQUEST_COLUMNS))
                    )
                await conn.exec_driver_sql(self._insert_requests, list(rows))
                return
            at = 0
            while at < len(rows):
                size = min(MAX_ROWS_PER_INSERT, 1 << ((len(rows) - at).bit_length() - 1))
                values = tuple(chain.from_iterable(rows[at : at + size]))
                await conn.exec_driver_sql(_sqlite_insert(size), values)
                at += size

    async def spend_since(self, since: dict[str, float]) -> dict[str, float]:
        """Each key's spend from its own start time (its budget period): {key name: cost}."""
        by_start: dict[float, list[str]] = {}
        for name, start in since.items():
            by_start.setdefault(start, []).append(name)
        spent: dict[str, float] = {}
        async with self._connect() as conn:
            for start, names in by_start.items():
                rows = await conn.execute(
                    select(requests.c.key_name, func.sum(requests.c.cost))
                    .where(requests.c.ts >= start, requests.c.key_name.in_(names))
                    .group_by(requests.c.key_name)
                )
                spent.update({name: float(cost or 0) for name, cost in rows})
        return spent

    async def usage(
        self, start: float, end: float, group_by: Iterable[str] = ("key", "model", "target", "day")
    ) -> list[dict[str, Any]]:
        """Usage in [start, end) summed per group: requests, tokens, cost, errors, latency."""
        columns = {
            "key": requests.c.key_name.label("key"),
            "model": requests.c.model,
            "target": requests.c.target,
            "route": requests.c.route,
            "day": func.floor(requests.c.ts / 86400).label("day"),
        }
        groups = [columns[g] for g in dict.fromkeys(group_by)]  # "key,key": one column
        query = (
            select(*groups)
            .add_columns(
                func.count().label("requests"),
                func.sum(requests.c.prompt_tokens).label("prompt_tokens"),
                func.sum(requests.c.completion_tokens).label("completion_tokens"),
                func.sum(requests.c.cached_tokens).label("cached_tokens"),
                func.sum(requests.c.cost).label("cost"),
                func.sum((requests.c.status >= 400).cast(Integer)).label("errors"),
                func.avg(requests.c.latency).label("avg_latency"),
                func.avg(requests.c.ttft).label("avg_ttft"),
            )
            .where(requests.c.ts >= start, requests.c.ts < end)
            .group_by(*groups)
            .order_by(*groups)
        )
        async with self._connect() as conn:
            out = []
            for row in await conn.execute(query):
                item = dict(row._mapping)
                if "day" in item:
                    day = int(item["day"])
                    item["day"] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
                for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "errors"):
                    item[name] = int(item[name] or 0)
                item["cost"] = round(float(item["cost"] or 0), 9)  # no float noise in sums
                out.append(item)
            return out

    # -- audit --------------------------------------------------------------------------------

    async def add_audit(
        self, actor: str | None, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        async with self._begin() as conn:
            await conn.execute(
                insert(audit).values(
                    ts=time.time(),
                    actor=actor,
                    action=action,
                    subject=subject,
                    detail=json.dumps(detail, sort_keys=True),
                )
            )

    async def audit_log(self, start: float, end: float, limit: int = 1000) -> list[dict[str, Any]]:
        async with self._connect() as conn:
            rows = await conn.execute(
                select(audit)
                .where(audit.c.ts >= start, audit.c.ts < end)
                .order_by(audit.c.ts.desc(), audit.c.id.desc())
                .limit(limit)
            )
            return [
                {
                    "time": r.ts,
                    "actor": r.actor,
                    "action": r.action,
                    "subject": r.subject,
                    "detail": json.loads(r.detail) if r.detail else {},
                }
                for r in rows
            ]


def _redacted(url: str) -> str:
    """A database URL as it may be shown: its password left out."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unreadable URL)"
