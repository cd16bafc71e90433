"""Ollama's everyday commands: `ps`, `show`, `rm` (`show`: cli_show.py, `chat`: cli_chat.py),
and the look-ups they share. Each talks to a
running server when one is given with `--url` or answers on the configured port, and works in
this process otherwise where that makes sense (`ps` needs a server: a new process has nothing
loaded)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli import ConfigOpt, ModelsDirOpt, _settings, missing_models_dir
from .cli_console import error
from .cli_http import ServerUrlOpt, UrlOpt, client, find_server, server_error
from .config import Settings
from .lifecycle.discovery import ModelSource, Scanner

__all__ = ["console", "entry_of", "fail", "look_up", "mib", "not_here", "register"]


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, int | float) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def fail(message: str, code: int = 1) -> typer.Exit:
    error(message)
    return typer.Exit(code)


def ps(config: ConfigOpt = None, url: ServerUrlOpt = None) -> None:
    """Loaded models of a running server: memory, slots, idle time, keep-alive left; then its
    remote targets: breaker, requests in flight, error rate, latency."""
    settings = _settings(config)
    server = find_server(url, settings)
    if server is None:
        raise fail(f"no server answers on port {settings.port}; start one or give --url")
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        raise fail(server_error(res))
    body = res.json()
    table = Table("model", "status", "memory", "slots", "queue", "idle", "keep-alive left")
    now = time.time()
    for m in body["data"]:
        status = m["status"]["value"]
        if m.get("source") == "remote" or status in ("unloaded", "error"):
            continue
        runtime = m.get("runtime") or {}
        busy = m.get("active_requests") or 0
        idle = "busy" if busy else _duration(now - m["last_used"] if m.get("last_used") else None)
        until = m.get("keep_alive_until")
        left = _duration(max(0.0, until - now)) if until else ("never" if m.get("pinned") else "-")
        slots = (
            f"{runtime.get('slots_busy', busy)}/{runtime['parallel']}"
            if "parallel" in runtime
            else "-"
        )
        table.add_row(
            m["id"], status, mib(m.get("memory_bytes")), slots,
            str(m.get("queued_requests", 0)), idle, left,
        )  # fmt: skip
    out = console()
    out.print(table)
    out.print(
        f"memory {mib(body.get('memory_used_bytes'))} of {mib(body.get('memory_budget_bytes'))}"
    )
    remotes = [m for m in body["data"] if m.get("source") == "remote"]
    if remotes:  # a hung or failing upstream shows here too, not only in /metrics
        out.print(_remote_table(remotes))


def _remote_table(remotes: list[dict[str, Any]]) -> Table:
    table = Table("remote target", "breaker", "in flight", "errors", "latency", "ttft")
    for m in remotes:
        breaker = m.get("breaker") or {}
        stats = m.get("stats") or {}
        state = str(breaker.get("state", "-")).replace("_", "-")
        if breaker.get("retry_in") is not None:
            state += f" ({_duration(breaker['retry_in'])} left)"
        rate = stats.get("error_rate")
        table.add_row(
            m["id"], state, str(stats.get("in_flight", 0)),
            f"{rate:.0%}" if rate is not None else "-",
            _seconds(stats.get("latency_s")), _seconds(stats.get("ttft_s")),
        )  # fmt: skip
    return table


def _seconds(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def _find(settings: Settings, model: str, server: str | None = None) -> ModelSource:
    found = look_up(settings, model)
    if isinstance(found, ModelSource):
        return found
    raise not_here(settings, model, found, server)


def not_here(settings: Settings, model: str, there: str, server: str | None) -> typer.Exit:
    """The error for a model not in this models directory: when `server` serves it, that
    its files are in the server's directory, which the command needs (`rm` deletes a file,
    `show --template` reads one; the server tells no paths)."""
    served = _served(server, model) if server is not None else False
    if isinstance(served, str):  # the server would not say
        return fail(f"model {model!r} is not in {settings.models_dir}; {server}: {served}")
    if served:
        return fail(
            f"model {model!r} is on {server} but not in {settings.models_dir}: give "
            "--models-dir the server's models directory (this command reads its files)"
        )
    return fail(f"model {model!r} is not in {settings.models_dir} (models: {there})")


def _served(server: str, model: str) -> bool | str:
    """Whether the server lists `model`; its refusal's message when it will not list."""
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        return server_error(res)
    return entry_of(res.json().get("data", []), model) is not None


def _served_entry(server: str, model: str) -> dict[str, Any] | None:
    """The server's `GET /models` entry of `model` (id or alias), None when it has none;
    exits 1 with the server's refusal when it will not list."""
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        raise fail(server_error(res))
    return entry_of(res.json().get("data", []), model)


def entry_of(entries: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The entry of `GET /models` called `model`, by id or alias."""
    for entry in entries:
        if model == entry["id"] or model in (entry.get("aliases") or ()):
            return entry
    return None


def look_up(settings: Settings, model: str) -> ModelSource | str:
    """The model of that id or alias in the models directory, else the ids there are."""
    sources = Scanner(settings).scan()
    for source in sources.values():
        if model == source.id or model in source.config.aliases:
            return source
    return ", ".join(sorted(sources)) or missing_models_dir(settings) or "none"


def rm(
    model: Annotated[str, typer.Argument(help="Model id or alias.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Delete a model from the models directory (unloading it first from a running server).
    A link is removed, never what it points to."""
    settings = _settings(config, models_dir=models_dir)
    server = find_server(url, settings)
    source = _find(settings, model, server)
    root = settings.models_dir.resolve()
    if source.origin == "ollama":
        raise fail(f"{source.id} is a model of Ollama's store: remove it with `ollama rm`")
    if source.origin != "models_dir" or source.path.parent.resolve() != root:
        raise fail(f"{source.id} is not a file of {root}; remove its `models:` entry instead")
    if server:
        _check_same_file(server, source, root)
        with client(server) as http:
            res = http.post("/models/unload", json={"model": source.id, "force": True})
        if res.status_code not in (200, 404):
            raise fail(server_error(res))
    path = source.path
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    print(f"deleted {source.id} ({path.name})")


def _check_same_file(server: str, source: ModelSource, root: Path) -> None:
    """Refuses (exit 1) when the server serves `source.id` from another file than this one
    (another models directory: deleting here would unload the server's model and delete a
    copy it does not use). The server tells no paths: its file's name, size and time."""
    entry = _served_entry(server, source.id)
    if entry is None:
        return  # not served there: nothing to unload
    ours = (source.path.name, source.identity.size_bytes, source.identity.created)
    theirs = (entry.get("path"), entry.get("size_bytes"), entry.get("created"))
    if ours != theirs:
        raise fail(
            f"{server} serves {source.id} from another file than {root / source.path.name}: "
            "give --models-dir the server's models directory (nothing was deleted or unloaded)"
        )


def register(app: typer.Typer) -> None:
    from .cli_show import show  # its own module; it uses this one's look-ups

    app.command()(ps)
    app.command()(show)
    app.command()(rm)
