"""The gateway as the server holds it: the keys in memory, the limits, the usage gathered in
memory, and one background task that keeps them in step with the database.

The request path never waits on the database: `authenticate` is a dictionary lookup, budgets
are checked against spend held in memory, usage is appended to a list. Every
`refresh_interval` the task writes the gathered usage (when `flush_interval` has passed),
re-reads the keys (so a key revoked by another router or by the CLI stops working within about
a second) and each budgeted key's spend. `close` writes what is left: a SIGTERM loses nothing,
a crash loses at most one flush interval of usage.

With `auth: auto`, no key and no master key, the gateway is off (the server serves loopback
clients only) and no database is created; the task watches for the SQLite file, so a key
made with `llm-router keys create` turns it on while the server runs. Whenever a database is
open, requests served without a key (that mode, or `auth: off`) are recorded too, with no key
name (see server/gateway.py and gateway/accounting.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config import Cost as Price
from ..config import Settings
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    DatabaseUnavailable,
    QuotaExceeded,
    RouterError,
)
from .events import KeyEvents
from .keys import MASTER_ENV, ApiKey, KeySpec, hash_key, make_key, master_key, period_end
from .keys import period_start as _period_start
from .limits import Limiter
from .spend import SharedSpend
from .store import Store, database_url, sqlite_path

__all__ = ["Gateway", "check_open_bind", "is_loopback"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether `host` is an address of this machine alone (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


Cost = Callable[[str, int, int], float]  # (target, prompt tokens, completion tokens) -> spend


MASTER_MIN = 16  # characters below which the master key is warned about
LLAMA_KEY_ENV = "LLAMA_API_KEY"  # llama-server's variable for its one key


class Gateway:
    def __init__(
        self,
        settings: Settings,
        environ: dict[str, str] | None = None,
        cost: Cost | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        self.mode = settings.auth
        self.url = database_url(settings)
        # llama-server's LLAMA_API_KEY (and `serve --api-key`) means the same: every scope
        # several, comma-separated, as llama-server's --api-key takes them: each a master key
        named = MASTER_ENV if env.get(MASTER_ENV) else LLAMA_KEY_ENV
        secrets = [k.strip() for k in (env.get(named) or "").split(",") if k.strip()]
        masters = [master_key(secret) for secret in secrets]
        self.masters = {key.hash: key for key in masters}
        self.master = masters[0] if masters else None
        for secret in secrets:
            if len(secret) < MASTER_MIN:
                log.warning(
                    "%s holds a key %d characters long: a key with every scope should be long "
                    "and random (at least %d characters; `llm-router keys create` makes 43)",
                    named,
                    len(secret),
                    MASTER_MIN,
                )
        self.limiter = Limiter(settings.gateway, settings.redis_url)
        self.prices: dict[str, Price] = {}
        self.set_prices(settings)
        self.cost: Cost = cost or self._spend
        self.keys: dict[str, ApiKey] = {}  # by hash, the revoked and expired ones too
        self.store: Store | None = None
        self.active = self.mode == "on" or (self.mode == "auto" and self.master is not None)
        # Rows as tuples of numbers and strings (store.REQUEST_COLUMNS): the garbage collector
        # does not track them, so thousands waiting for the next flush cost its collections
        # nothing, and the store hands them to the driver as they are.
        self._pending: list[tuple[Any, ...]] = []
        self._spent_db: dict[str, float] = {}
        self._spent_flushing: dict[str, float] = {}
        self._spent_local: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Future[None] | None = None
        self._last_flush = time.monotonic()
        self._db_down = False  # the database failed at the last tick (said once, in the log)
        self.events: KeyEvents | None = None  # Redis pub/sub of key changes (redis_url)
        self.shared_spend: SharedSpend | None = None  # budgets across routers (redis_url)

    # -- life ---------------------------------------------------------------------------------

    def needs_store(self) -> bool:
        """Whether there is state to read or usage to record: auth on, a database the config
        names (`database_url`, or `data_dir` for SQLite), or the default SQLite file present.
        Without keys (`auth: off`, or `auto` before any key exists) the requests are then
        recorded with no key name; the default data directory is never created for them."""
        path = sqlite_path(self.url)
        named = self.settings.database_url is not None or self.settings.data_dir is not None
        return self.active or named or (path is not None and path.exists())

    async def start(self, host: str | None = None) -> None:
        """Open the database (if there is state) and start the refresh task; with `host`,
        refuse (ConfigError) to serve it openly (see `check_bind`)."""
        if self.needs_store():
            await self._open()
        if host is not None:
            try:
                self.check_bind(host)
            except ConfigError:
                await self.close()
                raise
        if self.mode != "off" or self.store is not None:
            self._task = asyncio.create_task(self._loop(), name="gateway-refresh")
        if self.settings.redis_url and self.mode != "off":
            self.events = KeyEvents(self.settings.redis_url, self._on_key_event)
            await self.events.start()
            self.shared_spend = SharedSpend(self.settings.redis_url, self._budgeted)
            self.shared_spend.start()

    def _budgeted(self) -> dict[str, float]:
        """Each key with a budget: its period's start (what SharedSpend reads back)."""
        return {
            k.name: _period_start(k.period)
            for k in self.keys.values()
            if k.budget is not None and k.revoked_at is None
        }

    async def _on_key_event(self, event: dict[str, Any]) -> None:
        """A key made or revoked by another router or the CLI (gateway/events.py): a
        revocation applies at once to the keys in memory, then the database is re-read."""
        name = event.get("name")
        if event.get("event") == "revoked" and isinstance(name, str):
            now = time.time()
            self.keys = {
                h: replace(k, revoked_at=now) if k.name == name and not k.revoked_at else k
                for h, k in self.keys.items()
            }
        if self.store is not None:
            await self.refresh()
        elif self.needs_store() or event.get("event") == "created":
            await self._open()

    def check_bind(self, host: str) -> None:
        """Refuse to listen beyond this machine with nobody's key required (`auth: auto` and
        no key yet): raises ConfigError, after saying why in the log."""
        if self.mode == "auto" and not self.active and not is_loopback(host):
            message = (
                f"refusing to listen on {host}: no API key exists, so anyone who reaches the "
                "port could do anything. Create a key (`llm-router keys create NAME`), set "
                f"{MASTER_ENV}, or set `auth: off` to serve without keys."
            )
            log.error(message)
            raise ConfigError(message)

    async def _open(self) -> None:
        self.store = Store(self.url)
        await self.store.migrate()
        await self.refresh()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.close()
        if self.shared_spend is not None:
            await self.shared_spend.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self._tick_task is not None:
                await asyncio.wait([self._tick_task])
        if self.store is not None:
            try:
                await self.flush()
            finally:
                await self.store.close()
        await self.limiter.close()

    async def _loop(self) -> None:
        """Every `refresh_interval`, one `_tick`, shielded: `close` stops the loop between
        ticks or waits for the tick under way (a flush cut in the middle would lose its rows
        and could leave SQLite's write lock held)."""
        interval = self.settings.gateway.refresh_interval
        while True:
            await asyncio.sleep(interval)
            self._tick_task = asyncio.ensure_future(self._tick())
            await asyncio.shield(self._tick_task)

    async def _tick(self) -> None:
        try:
            if self.store is None:
                if self.needs_store():
                    await self._open()
                return
            if time.monotonic() - self._last_flush >= self.settings.gateway.flush_interval:
                await self.flush()
            await self.refresh()
        except DatabaseUnavailable as exc:  # down for a while: keep what we have, say it once
            if not self._db_down:
                self._db_down = True
                log.warning("gateway: %s; usage is kept in memory until it is back", exc)
            return
        except Exception:
            log.exception("gateway: could not refresh from the database")
            return
        if self._db_down:
            self._db_down = False
            log.info("gateway: the database is reachable again; the usage kept meanwhile is in")

    async def refresh(self) -> None:
        """Re-read the keys and the spend of keys with a budget."""
        assert self.store is not None
        records = await self.store.keys()
        self.keys = {k.hash: k for k in records}
        if self.mode == "auto":
            self.active = self.master is not None or bool(records)
        since = {k.name: _period_start(k.period) for k in records if k.budget is not None}
        spent = await self.store.spend_since(since)
        self._spent_db, self._spent_flushing = spent, {}

    async def flush(self) -> None:
        """Write the usage gathered since the last flush (one batch, one transaction)."""
        if self.store is None:
            return
        rows, self._pending = self._pending, []
        self._spent_flushing, self._spent_local = self._spent_local, {}
        self._last_flush = time.monotonic()
        try:
            await self.store.add_requests(rows)
        except Exception:
            self._pending[:0] = rows  # tried again at the next flush
            for name, cost in self._spent_flushing.items():
                self._spent_local[name] = self._spent_local.get(name, 0.0) + cost
            self._spent_flushing = {}
            raise

    # -- the request path (no database) -------------------------------------------------------

    def still_valid(self, key: ApiKey) -> bool:
        """Whether `key`, authenticated earlier, is still neither revoked nor expired (for a
        request that lasts: an events stream)."""
        if key.hash in self.masters:
            return True
        now = self.keys.get(key.hash)
        return now is not None and now.revoked_at is None and not now.expired()

    def authenticate(self, token: str | None) -> ApiKey:
        if not token:
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)"
            )
        digest = hash_key(token)
        master = self.masters.get(digest)
        if master is not None:
            return master
        key = self.keys.get(digest)
        if key is not None and key.revoked_at is None and not key.expired():
            return key
        shown = token[:12] + "..." if len(token) > 12 else "***"
        if key is None:
            raise AuthenticationFailed(f"Incorrect API key provided: {shown}")
        if key.revoked_at is not None:
            raise AuthenticationFailed(f"The API key {shown} ('{key.name}') has been revoked")
        raise AuthenticationFailed(f"The API key {shown} ('{key.name}') has expired")

    def spent(self, name: str) -> float:
        """The key's spend this period: what the database holds (read every refresh) and this
        router's since; with Redis, what every router spent, when that is more."""
        here = (
            self._spent_db.get(name, 0.0)
            + self._spent_flushing.get(name, 0.0)
            + self._spent_local.get(name, 0.0)
        )
        if self.shared_spend is None:
            return here
        return max(here, self.shared_spend.spent(name))

    def check_budget(self, key: ApiKey) -> None:
        if key.budget is not None and self.spent(key.name) >= key.budget:
            now = time.time()
            raise QuotaExceeded(
                f"Key '{key.name}' has spent its budget of {key.budget} for this "
                f"{key.period}; it renews at the start of the next {key.period} (UTC)",
                retry_after=max(1.0, period_end(key.period, now) - now),
            )

    def record(
        self,
        key: ApiKey | None,
        *,
        model: str,
        target: str,
        route: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        status: int,
        latency: float,
        ttft: float | None,
        free: bool = False,
    ) -> float:
        """Keep one request's usage for the next flush; returns its cost. `key` None: a
        request served without a key (auth off, or loopback clients before any key exists),
        recorded with no key name (NULL; `null` in reports). `free`: answered from the
        response cache, so nothing was spent (its tokens are still counted)."""
        cost = self.cost(target, prompt_tokens, completion_tokens) if target and not free else 0.0
        name = key.name if key is not None else None
        if cost and name is not None:
            self._spent_local[name] = self._spent_local.get(name, 0.0) + cost
            if self.shared_spend is not None and key is not None and key.budget is not None:
                self.shared_spend.add(name, _period_start(key.period), cost)
        self._pending.append(
            (
                time.time(),
                name,
                model[:256],
                target,
                route[:128],
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                cost,
                status,
                latency,
                ttft,
            )
        )
        return cost

    # -- administration -----------------------------------------------------------------------

    def _need_store(self) -> Store:
        if self.store is None:
            raise RouterError("the gateway's database is not open (auth: off)")
        return self.store

    async def ensure_store(self) -> Store:
        if self.store is None:
            if self.mode == "off":
                return self._need_store()
            await self._open()
        return self._need_store()

    async def create_key(self, spec: KeySpec, actor: str | None) -> tuple[str, ApiKey]:
        store = await self.ensure_store()
        secret, key = make_key(spec)
        await store.add_key(key)
        await store.add_audit(actor, "key.created", key.name, key.audit_detail())
        self.keys[key.hash] = key
        if self.mode == "auto":
            self.active = True
        if self.events is not None:
            await self.events.publish("created", key.name)
        return secret, key

    async def revoke_key(self, name: str, actor: str | None) -> bool:
        store = await self.ensure_store()
        done = await store.revoke(name)
        if done:
            await store.add_audit(actor, "key.revoked", name, {})
            if self.events is not None:  # the other routers refuse it at once
                await self.events.publish("revoked", name)
            await self.refresh()
        return done

    def set_prices(self, settings: Settings) -> None:
        """The targets' prices that keys' spend is counted at (again on a reload)."""
        self.prices = {m.id: m.cost for m in settings.models}

    def _spend(self, target: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.prices.get(target)
        return price.spend(prompt_tokens, completion_tokens) if price is not None else 0.0

    async def audit(self, actor: str | None, action: str, subject: str, **detail: Any) -> None:
        if self.store is not None:
            await self.store.add_audit(actor, action, subject, detail)


async def check_open_bind(settings: Settings) -> None:
    """What the server's start refuses, asked before it starts (`serve`, `doctor`):
    ConfigError when it would listen beyond this machine with nobody's key required. Nothing
    is opened for a loopback address or an explicit `auth`."""
    if settings.auth != "auto" or is_loopback(settings.host):
        return
    gateway = Gateway(settings)
    try:
        await gateway.start(settings.host)
    finally:
        await gateway.close()
