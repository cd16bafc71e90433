"""Ollama's everyday commands: `ps`, `show`, `rm` (`chat`: cli_chat.py). Each talks to a
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
from .compat import http_url
from .config import ModelConfig, RouteConfig, Settings
from .lifecycle.discovery import ModelSource, Scanner

__all__ = ["entry_of", "fail", "register"]


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _mib(value: Any) -> str:
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
            m["id"], status, _mib(m.get("memory_bytes")), slots,
            str(m.get("queued_requests", 0)), idle, left,
        )  # fmt: skip
    out = _console()
    out.print(table)
    out.print(
        f"memory {_mib(body.get('memory_used_bytes'))} of {_mib(body.get('memory_budget_bytes'))}"
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
    found = _look_up(settings, model)
    if isinstance(found, ModelSource):
        return found
    raise _not_here(settings, model, found, server)


def _not_here(settings: Settings, model: str, there: str, server: str | None) -> typer.Exit:
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


def _look_up(settings: Settings, model: str) -> ModelSource | str:
    """The model of that id or alias in the models directory, else the ids there are."""
    sources = Scanner(settings).scan()
    for source in sources.values():
        if model == source.id or model in source.config.aliases:
            return source
    return ", ".join(sorted(sources)) or missing_models_dir(settings) or "none"


def _show_served(server: str, model: str, settings: Settings) -> None:
    """`show` of a model the server at `--url` serves from a directory not this one's: what
    its `GET /models` says (the file's metadata and its live state)."""
    entry = _served_entry(server, model)
    if entry is None:
        raise fail(f"model {model!r} is neither on {server} nor in {settings.models_dir}")
    names = ["path", "format", "engine", "task", "model_architecture", "parameters"]
    names += ["quantization", "context_length", "upstream_model", "provider"]
    rows: list[tuple[str, Any]] = [("id", entry["id"]), ("server", server)]
    rows += [(n.replace("_", " "), entry.get(n)) for n in names]
    rows += [("size", _mib(entry.get("size_bytes"))), ("status", entry["status"]["value"])]
    rows += [("error", entry["status"].get("error")), ("memory", _mib(entry.get("memory_bytes")))]
    _section(_console(), "Model", rows)


def _configured(settings: Settings, name: str) -> RouteConfig | ModelConfig | None:
    """The route, or the remote target (by id or alias), the configuration names `name`."""
    for route in settings.routes:
        if route.name == name:
            return route
    for cfg in settings.models:
        if cfg.provider != "local" and (cfg.id == name or name in cfg.aliases):
            return cfg
    return None


def _show_configured(cfg: RouteConfig | ModelConfig, server: str | None) -> None:
    """`show` of a route or a remote target: what the configuration says of it, and with a
    server, what that server says (a route's order of targets now and their breakers; a
    remote target's status and breaker). No secrets: the key's variable's name only."""
    rows: list[tuple[str, Any]]
    if isinstance(cfg, RouteConfig):
        title, name = "Route", cfg.name
        rows = [("name", cfg.name), ("strategy", cfg.strategy)]
        rows += [("targets", ", ".join(cfg.targets)), ("fallbacks", ", ".join(cfg.fallbacks))]
        rows += [("retries", cfg.retries), ("split", cfg.split)]
    else:
        title, name = "Remote target", cfg.id
        rows = [("id", cfg.id), ("aliases", ", ".join(cfg.aliases)), ("provider", cfg.provider)]
        rows += [("base url", cfg.base_url), ("upstream model", cfg.model or cfg.id)]
        rows += [("api key from", cfg.api_key_env), ("timeout", f"{cfg.timeout:g} s")]
        rows += [("quality", cfg.quality), ("context length", cfg.context_length)]
        rows += [("cost per 1M tokens", f"in {cfg.cost.input:g}, out {cfg.cost.output:g}")]
    if server:
        with client(server) as http:
            res = http.get("/models")
        if res.status_code != 200:
            rows.append((f"on {server}", f"unknown: {server_error(res)}"))
        elif isinstance(cfg, RouteConfig):
            live = {r["name"]: r for r in res.json().get("routes", [])}.get(name)
            if live is None:
                rows.append((f"on {server}", "not a route there"))
            else:
                status = live["status"]
                rows.append((f"order now on {server}", ", ".join(status["order"]) or "none"))
                breakers = status.get("breakers", {}).items()
                rows.append(("breakers", ", ".join(f"{t}: {s}" for t, s in breakers)))
                rows.append(("error", status.get("error")))
        else:
            entry = entry_of(res.json().get("data", []), name)
            if entry is None:
                rows.append((f"on {server}", "not a target there"))
            else:
                rows.append((f"status on {server}", entry["status"].get("value")))
                rows.append(("breaker", (entry.get("breaker") or {}).get("state")))
    _section(_console(), title, rows)


def show(
    model: Annotated[str, typer.Argument(help="Model id or alias, a route or a remote target.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    template: Annotated[bool, typer.Option("--template", help="Only the chat template.")] = False,
) -> None:
    """A model's metadata, chat template, parameters and the configuration that applies;
    its live status too when a server runs."""
    from .lifecycle.fit import fit
    from .machine import detect
    from .units import parse_bytes

    settings = _settings(config, models_dir=models_dir)
    found = _look_up(settings, model)
    if not isinstance(found, ModelSource):
        configured = _configured(settings, model)
        if configured is not None and not template:
            _show_configured(configured, http_url(url) if url else None)
            return
        if url and not template:  # the server's model, wherever its directory is
            _show_served(http_url(url), model, settings)
            return
        raise _not_here(settings, model, found, http_url(url) if url else None)
    source = found
    info = source.info
    if template:
        print(info.chat_template if info and info.chat_template else "(no chat template)")
        return
    out = _console()
    rows: list[tuple[str, Any]] = [
        ("id", source.id),
        ("file", source.path.name),
        ("format", source.format),
        ("engine", source.engine),
        ("task", source.task),
        ("size", _mib(source.identity.size_bytes)),
    ]
    if info:
        rows += [
            ("architecture", info.architecture),
            ("parameters", f"{info.parameters / 1e6:.0f}M" if info.parameters else None),
            ("quantization", info.quantization),
            ("context length", info.context_length),
            ("embedding length", info.embedding_length),
        ]
    if source.error:
        rows.append(("error", source.error))
    server = find_server(url, settings)
    if server:
        with client(server) as http:
            res = http.get("/models")
        if res.status_code == 200:
            live = {m["id"]: m for m in res.json()["data"]}.get(source.id, {})
            status = live.get("status", {})
            rows.append(("status", status.get("value", "not on that server")))
            if status.get("error") and not source.error:  # a load's failure: the files are fine
                rows.append(("error", status["error"]))
            rows.append(("memory", _mib(live.get("memory_bytes"))))
            if live:  # what that server's configuration says, which may not be this one's
                here = f"on {server}"
                rows.append((f"pinned {here}", live.get("pinned")))
                rows.append((f"aliases {here}", ", ".join(live.get("aliases") or []) or "none"))
                context = (live.get("runtime") or {}).get("context_size")
                rows.append((f"context size {here}", context))
        else:  # the files still say the rest
            rows.append(("status", f"unknown: {server} says {server_error(res)}"))
    _section(out, "Model", rows)
    cfg = source.config
    params = {k: v for k, v in cfg.sampling.model_dump(exclude_none=True).items()}
    mine = f" of this configuration ({config or 'defaults'})" if server else ""
    _section(
        out,
        f"Parameters{mine}",
        [
            ("system prompt", cfg.system_prompt),
            *params.items(),
            ("keep_alive", cfg.keep_alive),
            ("pinned", cfg.pin),
            ("aliases", ", ".join(cfg.aliases) or None),
        ],
    )
    options = settings.model_defaults.merged(cfg.engine_options()).model_dump(exclude_none=True)
    budget = parse_bytes(settings.memory_budget, detect().memory_available)
    fitted = fit(source, options, budget, detect())
    _section(
        out,
        f"Engine settings{mine} (configured, else derived from this machine)",
        [(k, f"{v}  ({fitted.reasons.get(k, 'configured')})")
         for k, v in {**fitted.options, **fitted.values}.items()],
    )  # fmt: skip
    if info and info.chat_template:
        out.print("[bold]Chat template[/bold] (--template prints it alone)")
        print(info.chat_template[:2000] + (" ..." if len(info.chat_template) > 2000 else ""))


def _section(out: Console, title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    for key, value in rows:
        if value is not None and value != "":
            table.add_row(key, str(value))
    out.print(table)


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
    app.command()(ps)
    app.command()(show)
    app.command()(rm)
