"""The on-disk tier: one SQLite file that survives restarts, bounded in bytes, least recently
used entries evicted first, expired ones deleted and their pages given back to the disk.

Used through the standard library's `sqlite3` on one thread of its own: a key-value table
needs no ORM or async driver, one connection on one thread needs no locking, and the memory
tier in front takes the hot keys.

Nothing scans the table on the way of a request. Each row carries its size and when it was
last used (wall-clock ns, so recency survives a restart); an index on that and one on the
expiry, and a one-row `totals` table kept by triggers, make a write one upsert, one read of
the total and, past the cap, a walk of the `used` index from its old end to delete just
enough rows (a cap lowered in the config applies when the tier starts). Reads do not
write: the keys read here, and those the tiers in front served (`touch`), are stamped with
the time they were used, kept in memory, and written with the next write (or the periodic
timer, or at close): until then a restart forgets those uses, never an entry. Expired rows
are deleted with the writes, at most every `prune_interval`, and by a timer when the cache is
idle; then `incremental_vacuum` and a WAL checkpoint shrink the file. Space freed by eviction
is left for the next writes (the file stays about the cap's size, instead of shrinking and
growing again on every write).

Several routers may share one file: the totals are kept by SQLite itself, so each sees the
others' writes; a write waits for the others' (`busy_timeout`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .lifetime import Stored, expiry

__all__ = ["QUERIES", "ROW_OVERHEAD", "SqliteTier"]

log = logging.getLogger(__name__)
ROW_OVERHEAD = 64  # bytes a row costs besides its key and value (row header, index entries)
_MAX_PENDING_USES = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    used INTEGER NOT NULL,
    expires REAL NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires) WHERE expires > 0;
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries
    BEGIN UPDATE totals SET bytes = bytes + new.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries
    BEGIN UPDATE totals SET bytes = bytes - old.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF size ON entries
    BEGIN UPDATE totals SET bytes = bytes - old.size + new.size WHERE id = 0; END;
"""
# The statements of reads and writes, each a lookup by an index (a test checks the plans):
# none reads the whole table.
QUERIES = {
    "get": "SELECT value, expires FROM entries WHERE key = ?",
    "use": "UPDATE entries SET used = ? WHERE key = ?",
    "put": "INSERT INTO entries (key, size, used, expires, value) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET size = excluded.size, used = excluded.used, "
    "expires = excluded.expires, value = excluded.value",
    "total": "SELECT bytes FROM totals WHERE id = 0",
    "oldest": "SELECT key, size FROM entries ORDER BY used",  # read only as far as needed
    "evict": "DELETE FROM entries WHERE key = ?",
    "expired": "DELETE FROM entries WHERE expires > 0 AND expires < ?",
}

Evicted = Callable[[str, int], None]  # (reason: "size" | "expired", rows)


class SqliteTier:
    """Table `entries` in the file at `path` (WAL, incremental auto-vacuum), at most
    `max_bytes` of keys, values and `ROW_OVERHEAD` per row. `evicted` is called (on the
    tier's thread) with the reason and the number of rows each time some are deleted."""

    name = "disk"

    def __init__(
        self,
        path: Path,
        ttl: float | None,
        max_bytes: int = 1 << 30,
        *,
        prune_interval: float = 60.0,
        evicted: Evicted | None = None,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.prune_interval = prune_interval
        self.evicted = evicted
        self.bytes = 0  # the entries' bytes after the last write (a snapshot, for metrics)
        self._touched: dict[str, int] = {}  # keys used in front of this tier (event loop)
        self._read: dict[str, int] = {}  # keys read from this tier (its thread)
        self._next_prune = 0.0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="cache-sqlite")
        self._db: sqlite3.Connection | None = None
        self._pruner: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        await self._run(self._open)
        self._pruner = asyncio.create_task(self._prune_periodically())

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file, or one of an old version:
            db.execute("VACUUM")  # takes effect on an existing file by rebuilding it, once
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        self._migrate()
        self._write(prune=True)

    def _migrate(self) -> None:
        """Entries of the table of earlier versions, `cache(key, value, expires)`, moved over
        (as the least recently used)."""
        assert self._db is not None
        old = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'cache'").fetchone()
        if old is not None:
            self._db.executescript(
                "BEGIN; INSERT OR IGNORE INTO entries (key, size, used, expires, value) "
                f"SELECT key, length(key) + length(value) + {ROW_OVERHEAD}, 0, expires, value "
                "FROM cache; DROP TABLE cache; COMMIT;"
            )

    def touch(self, key: str) -> None:
        """`key` was just served by a tier in front of this one: it is recently used here too.
        Cheap (a dict write on the event loop); written with the next write."""
        self._touched[key] = time.time_ns()

    def _get(self, key: str) -> Stored | None:
        assert self._db is not None
        row = self._db.execute(QUERIES["get"], (key,)).fetchone()
        if row is None or (row[1] and row[1] < time.time()):
            return None
        self._read[key] = time.time_ns()
        if len(self._read) >= _MAX_PENDING_USES:  # a long run of reads and no writes
            self._write()
        return bytes(row[0]), float(row[1])

    def _write(
        self,
        change: Callable[[sqlite3.Connection], object] | None = None,
        prune: bool = False,
        touched: dict[str, int] | None = None,
    ) -> None:
        """One transaction: the uses since the last write (`touched`: those in front), `change`,
        the expired rows when a prune is due (or `prune`) and the least recently used rows past
        the cap; then, if expired rows went, their pages back to the disk."""
        db = self._db
        assert db is not None
        pruned = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            self._flush_uses(db, touched or {})
            if change is not None:
                change(db)
            if prune or time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.prune_interval
                pruned = db.execute(QUERIES["expired"], (time.time(),)).rowcount
            evicted = self._evict(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        for reason, rows in (("expired", pruned), ("size", evicted)):
            if rows and self.evicted is not None:
                self.evicted(reason, rows)
        if pruned:
            db.executescript("PRAGMA incremental_vacuum;")  # (execute() stops after one page)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _flush_uses(self, db: sqlite3.Connection, touched: dict[str, int]) -> None:
        uses, self._read = self._read, {}
        for key, at in touched.items():
            uses[key] = max(at, uses.get(key, 0))
        if uses:
            db.executemany(QUERIES["use"], [(at, k) for k, at in uses.items()])

    def _evict(self, db: sqlite3.Connection) -> int:
        """Delete the least recently used rows until the entries fit in `max_bytes`."""
        total = int(db.execute(QUERIES["total"]).fetchone()[0])
        excess = total - self.max_bytes
        victims: list[tuple[str]] = []
        if excess > 0:
            for key, size in db.execute(QUERIES["oldest"]):
                victims.append((key,))
                excess -= size
                if excess <= 0:
                    break
            db.executemany(QUERIES["evict"], victims)
            total = int(db.execute(QUERIES["total"]).fetchone()[0])
        self.bytes = total
        return len(victims)

    def _set(self, key: str, value: bytes, until: float, touched: dict[str, int]) -> None:
        size = len(key) + len(value) + ROW_OVERHEAD
        if size > self.max_bytes:  # larger than the whole tier: not kept, nothing evicted for it
            self._write(touched=touched)
            if self.evicted is not None:
                self.evicted("too_large", 1)
            return
        row = (key, size, time.time_ns(), expiry(self.ttl, until), value)
        self._write(lambda db: db.execute(QUERIES["put"], row), touched=touched)

    def _take_touched(self) -> dict[str, int]:
        """The uses in front since the last write (swapped on the event loop, which adds them)."""
        touched, self._touched = self._touched, {}
        return touched

    async def _prune_periodically(self) -> None:
        """Expired rows go, and uses are written, even when nothing else is written."""
        while True:
            await asyncio.sleep(self.prune_interval)
            with contextlib.suppress(sqlite3.Error):
                await self._run(self._write, None, True, self._take_touched())

    async def get(self, key: str) -> Stored | None:
        try:
            value: Stored | None = await self._run(self._get, key)
        except sqlite3.Error as exc:
            log.warning("cache: disk tier %s failed to read: %s", self.path, exc)
            return None
        return value

    async def set(self, key: str, value: bytes, until: float = 0.0) -> None:
        try:
            await self._run(self._set, key, value, until, self._take_touched())
        except sqlite3.Error as exc:
            log.warning("cache: disk tier %s failed to write: %s", self.path, exc)

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

        touched = self._take_touched()

        def close() -> None:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._write(touched=touched)  # the uses not written yet
                self._db.close()
                self._db = None

        await self._run(close)
        self._thread.shutdown(wait=True)
