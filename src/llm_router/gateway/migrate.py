"""Alembic migrations of the gateway's schema, run at start-up (and by the CLI) without an
`alembic.ini`: the revisions live in gateway/migrations/versions.

Several routers may start at once on one database: on PostgreSQL an advisory lock, on SQLite a
lock file beside the database, makes them migrate one after the other (the later ones find the
schema current and do nothing).

A database already at `HEAD` is seen with one query, without importing Alembic (~0.2 s of
every start and every `keys` command); tests/gateway check that `HEAD` is Alembic's head."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["HEAD", "MIGRATIONS", "upgrade"]

HEAD = "0001"  # the newest revision in gateway/migrations/versions
MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x6C6C6D72  # "llmr"
log = logging.getLogger(__name__)


@contextmanager
def _locked(conn: Connection) -> Iterator[None]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _LOCK_ID})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _LOCK_ID})
            conn.commit()
        return
    database = conn.engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(Path(database).with_suffix(".migrate.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(conn: Connection) -> None:
    """Run every migration the database has not had yet (blocks: call through `run_sync`)."""
    if _revision(conn) == HEAD:
        return
    ran: list[str] = []
    with _quiet(logging.getLogger("alembic")):  # its imports log too
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        script = ScriptDirectory.from_config(config)

        def steps(revision: Any, _context: Any) -> Any:
            todo = script._upgrade_revs("head", revision)
            ran.extend(" ".join(step.short_log.split()) for step in todo)
            return todo

        with _locked(conn):
            with EnvironmentContext(config, script, fn=steps, destination_rev="head") as env:
                env.configure(connection=conn)
                with env.begin_transaction():
                    env.run_migrations()
            conn.commit()
    if ran:
        log.info("gateway database migrated: %s", "; ".join(ran))


def _revision(conn: Connection) -> str | None:
    """The database's Alembic revision, or None (no schema yet, or more than one head)."""
    try:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:  # no such table: a new database
        conn.rollback()  # PostgreSQL: the failed statement aborted the transaction
        return None
    conn.commit()
    return str(rows[0][0]) if len(rows) == 1 else None


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Alembic's INFO lines ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.",
    its plugins) came at every start and from every `keys` command; one line of ours says
    what ran."""
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)
