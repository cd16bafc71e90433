"""`llm-router keys create|ls|show|revoke` and `llm-router usage`: the gateway's state, read and
written in its database (the config's `data_dir` or `database_url`) directly, whether or not a
server runs. A running server sees a new or revoked key within `gateway.refresh_interval`, or at
once when the config sets `redis_url` (the command publishes the change, gateway/events.py)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .cli import ModelsDirOpt
from .cli_console import err, error
from .config import Settings
from .config_load import load_config
from .errors import ConfigError, RouterError

if TYPE_CHECKING:
    from .gateway.store import Store

__all__ = ["register"]

T = TypeVar("T")
keys_app = typer.Typer(help="API keys: create, list, show, revoke.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-F", help="YAML or JSON config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None, models_dir: Path | None = None) -> Settings:
    try:
        return load_config(config, {"models_dir": models_dir})
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None


def _run(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the database (migrated to the current schema), do `work`, close it."""
    from .gateway.store import Store

    async def main() -> T:
        store = Store.for_settings(settings)
        try:
            await store.migrate()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (RouterError, ValueError) as exc:
        error(getattr(exc, "message", exc))
        raise typer.Exit(1) from None


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, _.@:-).")],
    config: ConfigOpt = None,
    scopes: Annotated[str, typer.Option(help="inference, read, admin; comma-separated.")] = (
        "inference,read"
    ),
    models: Annotated[str | None, typer.Option(help="Models it may use, comma-separated.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Requests at once.")] = None,
    budget: Annotated[float | None, typer.Option(help="Spend allowed per period.")] = None,
    period: Annotated[str, typer.Option(help="Budget period: day or month.")] = "month",
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h.")] = None,
    models_dir: ModelsDirOpt = None,  # where --models names are looked for, as serve's
) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    from pydantic import ValidationError

    from .gateway.keys import KeySpec, make_key

    try:
        spec = KeySpec(
            name=name,
            scopes=_split(scopes) or [],
            models=_split(models),
            rpm=rpm,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget=budget,
            period=period,
            expires=expires,
        )
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        error(why)
        raise typer.Exit(2) from None
    secret, key = make_key(spec)

    async def work(store: Store) -> None:
        await store.add_key(key)
        await store.add_audit("cli", "key.created", key.name, key.audit_detail())

    settings = _settings(config, models_dir)
    warning = _unknown_models(
        settings, config, sorted(key.models or ())
    )  # before the key turns auth on
    _run(settings, work)
    _tell_routers(settings, "created", key.name)
    if warning:
        err.print(warning, markup=False)
    err.print(
        f"created key {key.name!r} ({', '.join(sorted(key.scopes))}); it is shown only once:",
        markup=False,
    )
    print(secret)


def _unknown_models(settings: Settings, config: Path | None, names: list[str]) -> str | None:
    """The warning of the names of a key's allow-list that nothing answers to (a typo gives
    a key that can use nothing, silently), None when all are known. Known: what the server
    answering on the configured address lists (its aliases, routes and remote targets: the
    key is checked there), and what this configuration and its models directory name."""
    from .lifecycle.discovery import Scanner

    if not names:
        return None
    known = {r.name for r in settings.routes}
    for m in settings.models:
        known |= {m.id, *m.aliases}
    for source in Scanner(settings, quiet=True).scan().values():
        known |= {source.id, *source.config.aliases}
    server, served, refusal = _served_names(settings)
    unknown = sorted(n for n in names if n not in known | served)
    if not unknown:
        return None
    listed = ", ".join(repr(n) for n in unknown)
    here = f"this configuration ({config or 'defaults'}), nor a model in {settings.models_dir}"
    if server and not refusal:
        return (
            f"warning: {listed} is no model, alias, route or remote target of {server} nor of "
            f"{here} (yet): the key may use it once it exists"
        )
    why = (
        f"{server} would not list its models: {refusal}"
        if server
        else (f"no server answers on port {settings.port}")
    )
    return (
        f"warning: {listed} is no model, alias, route or remote target of {here} (yet), and "
        f"{why}: the key may use it once it exists. To check the server's names, run this "
        "while it answers, or give --config the server's configuration (a server given "
        "another --models-dir: give it here too)"
    )


def _served_names(settings: Settings) -> tuple[str | None, set[str], str | None]:
    """The server answering on the configured address, the names it lists (ids, aliases,
    remote targets, routes), and why it would not list them (a refused key)."""
    from .cli_http import client, find_server, server_error

    server = find_server(None, settings)
    if server is None:
        return None, set(), None
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        return server, set(), server_error(res)
    body = res.json()
    names = {r["name"] for r in body.get("routes") or ()}
    for entry in body.get("data") or ():
        names |= {entry["id"], *(entry.get("aliases") or ())}
    return server, names, None


@keys_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the keys (never their secrets)."""
    rows = [k.public() for k in _run(_settings(config), lambda s: s.keys())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(
        "name", "key", "scopes", "models", "rpm", "tpm", "at once", "budget", "expires", "status"
    )
    for r in rows:
        table.add_row(
            str(r["name"]),
            str(r["key_hint"]),
            ",".join(r["scopes"]),  # type: ignore[arg-type]
            ",".join(r["models"]) if r["models"] is not None else "any",  # type: ignore[arg-type]
            _opt(r["rpm"]),
            _opt(r["tpm"]),
            _opt(r["max_concurrent"]),
            f"{r['budget']}/{r['period']}" if r["budget"] is not None else "-",
            _when(r["expires_at"]),
            str(r["status"]),
        )
    Console(width=200).print(table)


@keys_app.command("show")
def show(name: str, config: ConfigOpt = None) -> None:
    """One key's settings, as JSON."""
    key = _run(_settings(config), lambda s: s.key(name))
    if key is None:
        error(f"no key named {name!r}")
        raise typer.Exit(1)
    print(json.dumps(key.public(), indent=2))


@keys_app.command("revoke")
def revoke(name: str, config: ConfigOpt = None) -> None:
    """Revoke a key: servers refuse it within a second."""

    async def work(store: Store) -> str | None:
        if await store.revoke(name):
            await store.add_audit("cli", "key.revoked", name, {})
            return "revoked"
        return "already" if await store.key(name) is not None else None

    settings = _settings(config)
    done = _run(settings, work)
    if done is None:
        error(f"no key named {name!r}")
        raise typer.Exit(1)
    if done == "already":  # nothing to do, and said so (exit 0: the key is revoked)
        print(f"{name} was revoked already")
        return
    _tell_routers(settings, "revoked", name)
    print(f"revoked {name}")


def _tell_routers(settings: Settings, event: str, name: str) -> None:
    """With `redis_url`, the running routers hear of the change at once (else they poll)."""
    if settings.redis_url:
        from .gateway.events import publish_once

        asyncio.run(publish_once(settings.redis_url, event, name))


def usage(
    config: ConfigOpt = None,
    start: Annotated[str | None, typer.Option(help="ISO date or Unix time; default 30d ago.")] = (
        None
    ),
    end: Annotated[str | None, typer.Option(help="ISO date or Unix time; default now.")] = None,
    group_by: Annotated[str, typer.Option(help="key, model, target, route, day.")] = (
        "key,model,target,day"
    ),
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Requests, tokens and spend per key, model, target and day (as GET /admin/usage)."""
    from .gateway.usage import COLUMNS, GROUPS, parse_range
    from .server.routes_admin import to_csv

    if csv_out and as_json:
        error("--csv and --json: give one")
        raise typer.Exit(2)
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    if any(g not in GROUPS for g in groups):
        error(f"--group-by takes {', '.join(GROUPS)}")
        raise typer.Exit(2)
    try:
        begin, finish = parse_range(start, end, time.time())
    except RouterError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    rows = _run(_settings(config), lambda s: s.usage(begin, finish, groups))
    if csv_out:
        sys.stdout.write(to_csv(rows, groups))
        return
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(*groups, *COLUMNS)
    for row in rows:
        if "key" in row and row["key"] is None:  # served without a key (auth off, loopback)
            row = {**row, "key": "(no key)"}
        table.add_row(*(_cell(row.get(c)) for c in (*groups, *COLUMNS)))
    Console(width=220).print(table)


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _when(value: Any) -> str:
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(value)))


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.command("usage")(usage)
