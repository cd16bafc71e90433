"""`llm-router show NAME`: what a name is. With a server (`--url`, or one answering on the
configured port) NAME means what it means to that server, as it does to `run` and `chat`: its
aliases, routes and remote targets, which this process's configuration need not have (a
server started with `--config`, a `show` without). Without one, what this configuration and
models directory say. A model is shown from its files when they are in this models directory
(metadata, parameters, engine settings), else as the server lists it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli import ConfigOpt, ModelsDirOpt, _settings
from .cli_http import UrlOpt, client, find_server, server_error
from .cli_models import console, entry_of, fail, look_up, mib, not_here
from .config import ModelConfig, RouteConfig, Settings
from .lifecycle.discovery import ModelSource

__all__ = ["show"]

# What a server's `GET /models` said: its body, or why it would not list (a refused key).
Listing = dict[str, Any] | str


def _listing(server: str) -> Listing:
    with client(server) as http:
        res = http.get("/models")
    return res.json() if res.status_code == 200 else server_error(res)


def _served_as(listing: Listing, name: str) -> tuple[str, dict[str, Any]] | None:
    """What `name` is to the server that gave `listing`, in the order its dispatcher resolves
    names (routes first, then ids and aliases): ("route", its entry of `routes`), ("remote",
    its entry of `data`) or ("model", its entry of `data`); None when it has no such name or
    would not list."""
    if isinstance(listing, str):
        return None
    for route in listing.get("routes") or ():
        if route.get("name") == name:
            return "route", route
    entry = entry_of(listing.get("data") or [], name)
    if entry is None:
        return None
    return ("remote" if entry.get("source") == "remote" else "model"), entry


def show(
    model: Annotated[str, typer.Argument(help="Model id or alias, a route or a remote target.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    template: Annotated[bool, typer.Option("--template", help="Only the chat template.")] = False,
) -> None:
    """A model's metadata, chat template, parameters and the configuration that applies, or
    what a route or a remote target is; the live status too when a server runs (then the name
    means what it means to that server)."""
    settings = _settings(config, models_dir=models_dir)
    server = find_server(url, settings)
    listing = _listing(server) if server else None
    served = _served_as(listing, model) if listing is not None else None
    kind, entry = served or ("", {})
    if kind in ("route", "remote"):
        if template:
            raise fail(f"{model!r} is a {kind} on {server}: --template prints a model's template")
        configured = _configured(settings, entry.get("name") or entry["id"])
        if configured is not None:  # this configuration says more (a route's retries...)
            _show_configured(configured, server, listing)
        else:
            _show_live(kind, entry, str(server))
        return
    found = look_up(settings, entry["id"] if kind == "model" else model)  # an alias's id
    if isinstance(found, ModelSource):
        _show_model(found, settings, template, server, listing, config)
        return
    if kind == "model" and not template:  # the server's model, wherever its directory is
        _show_served(entry, str(server))
        return
    configured = _configured(settings, model)
    if configured is not None and not template:
        _show_configured(configured, server, listing)
        return
    if served is None and isinstance(listing, dict):  # it listed all, and not this name
        names = [m["id"] for m in listing.get("data") or []]
        names += [r["name"] for r in listing.get("routes") or []]
        raise fail(
            f"model {model!r} is neither on {server} nor in {settings.models_dir} "
            f"({server} has: {', '.join(names) or 'none'})"
        )
    raise not_here(settings, model, found, server)


def _configured(settings: Settings, name: str) -> RouteConfig | ModelConfig | None:
    """The route, or the remote target (by id or alias), the configuration names `name`."""
    for route in settings.routes:
        if route.name == name:
            return route
    for cfg in settings.models:
        if cfg.provider != "local" and (cfg.id == name or name in cfg.aliases):
            return cfg
    return None


def _show_served(entry: dict[str, Any], server: str) -> None:
    """`show` of a model the server serves from a directory not this one's: what its
    `GET /models` says (the file's metadata and its live state)."""
    names = ["path", "format", "engine", "task", "model_architecture", "parameters"]
    names += ["quantization", "context_length", "upstream_model", "provider"]
    rows: list[tuple[str, Any]] = [("id", entry["id"]), ("server", server)]
    rows += [("aliases", ", ".join(entry.get("aliases") or []))]
    rows += [(n.replace("_", " "), entry.get(n)) for n in names]
    rows += [("size", mib(entry.get("size_bytes"))), ("status", entry["status"]["value"])]
    rows += [("error", entry["status"].get("error")), ("memory", mib(entry.get("memory_bytes")))]
    _section(console(), "Model", rows)


def _show_live(kind: str, entry: dict[str, Any], server: str) -> None:
    """`show` of a route or a remote target this configuration does not have: what the
    server lists of it. It tells no remote target's base URL nor key (any key that may read
    the list would learn them): the server's configuration does."""
    if kind == "route":
        rows: list[tuple[str, Any]] = [("name", entry["name"]), ("server", server)]
        rows += [("strategy", entry.get("strategy"))]
        rows += [("targets", ", ".join(entry.get("targets") or []))]
        rows += [("fallbacks", ", ".join(entry.get("fallbacks") or []))]
        _section(console(), "Route", rows + _route_status(entry, server))
        return
    cost = entry.get("cost") or {}
    rows = [("id", entry["id"]), ("server", server)]
    rows += [("aliases", ", ".join(entry.get("aliases") or []))]
    rows += [("provider", entry.get("provider")), ("upstream model", entry.get("upstream_model"))]
    rows += [("base url", "in the server's configuration (give --config that file)")]
    rows += [("task", entry.get("task")), ("context length", entry.get("context_length"))]
    rows += [("quality", entry.get("quality"))]
    if cost:
        rows += [("cost per 1M tokens", f"in {cost.get('input'):g}, out {cost.get('output'):g}")]
    _section(console(), "Remote target", rows + _remote_status(entry, server))


def _route_status(route: dict[str, Any], server: str) -> list[tuple[str, Any]]:
    status = route.get("status") or {}
    breakers = (status.get("breakers") or {}).items()
    return [
        (f"order now on {server}", ", ".join(status.get("order") or []) or "none"),
        ("breakers", ", ".join(f"{t}: {s}" for t, s in breakers)),
        ("error", status.get("error")),
    ]


def _remote_status(entry: dict[str, Any], server: str) -> list[tuple[str, Any]]:
    status = entry.get("status") or {}
    return [
        (f"status on {server}", status.get("value")),
        ("error", status.get("error")),
        ("breaker", (entry.get("breaker") or {}).get("state")),
    ]


def _show_configured(
    cfg: RouteConfig | ModelConfig, server: str | None, listing: Listing | None
) -> None:
    """`show` of a route or a remote target: what the configuration says of it, and with a
    server, what that server says (a route's order of targets now and their breakers; a
    remote target's status and breaker). No secrets: the key's variable's name only."""
    rows: list[tuple[str, Any]]
    if isinstance(cfg, RouteConfig):
        title, kind, name = "Route", "route", cfg.name
        rows = [("name", cfg.name), ("strategy", cfg.strategy)]
        rows += [("targets", ", ".join(cfg.targets)), ("fallbacks", ", ".join(cfg.fallbacks))]
        rows += [("retries", cfg.retries), ("split", cfg.split)]
    else:
        title, kind, name = "Remote target", "remote", cfg.id
        rows = [("id", cfg.id), ("aliases", ", ".join(cfg.aliases)), ("provider", cfg.provider)]
        rows += [("base url", cfg.base_url), ("upstream model", cfg.model or cfg.id)]
        rows += [("api key from", cfg.api_key_env), ("timeout", f"{cfg.timeout:g} s")]
        rows += [("quality", cfg.quality), ("context length", cfg.context_length)]
        rows += [("cost per 1M tokens", f"in {cfg.cost.input:g}, out {cfg.cost.output:g}")]
    if server and listing is not None:
        served = _served_as(listing, name)
        if isinstance(listing, str):
            rows.append((f"on {server}", f"unknown: {listing}"))
        elif served is None or served[0] != kind:
            rows.append((f"on {server}", f"not a {'route' if kind == 'route' else 'target'} there"))
        elif kind == "route":
            rows += _route_status(served[1], server)
        else:
            rows += _remote_status(served[1], server)
    _section(console(), title, rows)


def _show_model(
    source: ModelSource,
    settings: Settings,
    template: bool,
    server: str | None,
    listing: Listing | None,
    config: Path | None,
) -> None:
    """`show` of a model whose files are in this models directory: what they say, the live
    state on `server`, and the parameters and engine settings of this configuration."""
    from .lifecycle.fit import fit
    from .machine import detect
    from .units import parse_bytes

    info = source.info
    if template:
        print(info.chat_template if info and info.chat_template else "(no chat template)")
        return
    out = console()
    rows: list[tuple[str, Any]] = [
        ("id", source.id),
        ("file", source.path.name),
        ("format", source.format),
        ("engine", source.engine),
        ("task", source.task),
        ("size", mib(source.identity.size_bytes)),
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
    if server and listing is not None:
        rows += _live_rows(source, server, listing)
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


def _live_rows(source: ModelSource, server: str, listing: Listing) -> list[tuple[str, Any]]:
    """The server's live view of a model: its status, memory, and what that server's
    configuration says of it (which may not be this one's)."""
    if isinstance(listing, str):  # the files still say the rest
        return [("status", f"unknown: {server} says {listing}")]
    live = {m["id"]: m for m in listing.get("data") or []}.get(source.id, {})
    status = live.get("status", {})
    rows: list[tuple[str, Any]] = [("status", status.get("value", "not on that server"))]
    if status.get("error") and not source.error:  # a load's failure: the files are fine
        rows.append(("error", status["error"]))
    rows.append(("memory", mib(live.get("memory_bytes"))))
    if live:
        here = f"on {server}"
        rows.append((f"pinned {here}", live.get("pinned")))
        rows.append((f"aliases {here}", ", ".join(live.get("aliases") or []) or "none"))
        rows.append((f"context size {here}", (live.get("runtime") or {}).get("context_size")))
    return rows


def _section(out: Console, title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    for key, value in rows:
        if value is not None and value != "":
            table.add_row(key, str(value))
    out.print(table)
