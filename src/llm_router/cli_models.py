"""Ollama's everyday commands: `ps`, `show`, `rm`, `chat`. Each talks to a running server when
one is given with `--url` or answers on the configured port, and works in this process
otherwise where that makes sense (`ps` needs a server: a new process has nothing loaded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .cli import ConfigOpt, ModelsDirOpt, _settings, missing_models_dir
from .cli_console import error
from .cli_http import ServerUrlOpt, UrlOpt, client, find_server, server_error
from .config import Settings
from .errors import ModelNotFound, RouterError
from .lifecycle.discovery import ModelSource, Scanner
from .logs import setup_logging

__all__ = ["register"]


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


def _fail(message: str, code: int = 1) -> typer.Exit:
    error(message)
    return typer.Exit(code)


def ps(config: ConfigOpt = None, url: ServerUrlOpt = None) -> None:
    """Loaded models of a running server: memory, slots, idle time, keep-alive left."""
    settings = _settings(config)
    server = find_server(url, settings)
    if server is None:
        raise _fail(f"no server answers on port {settings.port}; start one or give --url")
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        raise _fail(server_error(res))
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
        return _fail(f"model {model!r} is not in {settings.models_dir}; {server}: {served}")
    if served:
        return _fail(
            f"model {model!r} is on {server} but not in {settings.models_dir}: give "
            "--models-dir the server's models directory (this command reads its files)"
        )
    return _fail(f"model {model!r} is not in {settings.models_dir} (models: {there})")


def _served(server: str, model: str) -> bool | str:
    """Whether the server lists `model`; its refusal's message when it will not list."""
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        return server_error(res)
    entries = res.json().get("data", [])
    return any(model == m["id"] or model in (m.get("aliases") or ()) for m in entries)


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
    with client(server) as http:
        res = http.get("/models")
    if res.status_code != 200:
        raise _fail(server_error(res))
    for entry in res.json()["data"]:
        if model == entry["id"] or model in entry.get("aliases", ()):
            break
    else:
        raise _fail(f"model {model!r} is neither on {server} nor in {settings.models_dir}")
    names = ["path", "format", "engine", "task", "model_architecture", "parameters"]
    names += ["quantization", "context_length", "upstream_model", "provider"]
    rows: list[tuple[str, Any]] = [("id", entry["id"]), ("server", server)]
    rows += [(n.replace("_", " "), entry.get(n)) for n in names]
    rows += [("size", _mib(entry.get("size_bytes"))), ("status", entry["status"]["value"])]
    rows += [("error", entry["status"].get("error")), ("memory", _mib(entry.get("memory_bytes")))]
    _section(_console(), "Model", rows)


def show(
    model: Annotated[str, typer.Argument(help="Model id or alias.")],
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
        if url and not template:  # the server's model, wherever its directory is
            _show_served(url.rstrip("/"), model, settings)
            return
        raise _not_here(settings, model, found, url.rstrip("/") if url else None)
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
            rows.append(("status", live.get("status", {}).get("value", "not on that server")))
            rows.append(("memory", _mib(live.get("memory_bytes"))))
        else:  # the files still say the rest
            rows.append(("status", f"unknown: {server} says {server_error(res)}"))
    _section(out, "Model", rows)
    cfg = source.config
    params = {k: v for k, v in cfg.sampling.model_dump(exclude_none=True).items()}
    _section(
        out,
        "Parameters",
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
        "Engine settings (configured, else derived from this machine)",
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
        raise _fail(f"{source.id} is a model of Ollama's store: remove it with `ollama rm`")
    if source.origin != "models_dir" or source.path.parent.resolve() != root:
        raise _fail(f"{source.id} is not a file of {root}; remove its `models:` entry instead")
    if server:
        with client(server) as http:
            res = http.post("/models/unload", json={"model": source.id, "force": True})
        if res.status_code not in (200, 404):
            raise _fail(server_error(res))
    path = source.path
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    print(f"deleted {source.id} ({path.name})")


def chat(
    model: Annotated[str, typer.Argument(help="Model or route.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 512,
) -> None:
    """An interactive chat with history and streaming, as `ollama run`: `/bye` quits,
    `/clear` forgets the history, Ctrl-C stops an answer of a server (in this process: ends
    the chat). A model the server does not have,
    or one that makes no text, is an error at once; with the input piped, so is any failed
    turn (exit status 1)."""
    settings = _settings(config, models_dir=models_dir, log_level="warning", watch_interval=0)
    setup_logging(settings.log_level)
    server = find_server(url, settings)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    try:
        if server:
            _chat_http(server, model, system, params)
        else:
            asyncio.run(_chat_local(settings, model, system, params))
    except RouterError as exc:
        raise _fail(exc.message) from None
    except httpx.HTTPError as exc:  # the server went away mid-chat
        _write("\n")  # not on the line of a half-shown answer
        raise _fail(f"lost the server at {server}: {exc or type(exc).__name__}") from None
    except KeyboardInterrupt:
        print()
        raise typer.Exit(130) from None


def _turn_failed(message: str) -> None:
    """Say why a turn failed; with the input piped, end there (a script sees exit 1, where
    it saw the same error for every line and exit 0)."""
    if not sys.stdin.isatty():
        raise _fail(message)
    error(message)


CHAT_HELP = """Available commands:
  /clear          Forget the conversation so far
  /bye            Exit (also /exit, /quit, Ctrl-D)
  /?, /help       This help
Use \"\"\" to begin and end a message of several lines.
Ctrl-C stops an answer."""


def _read(prompt: str, interactive: bool) -> str | None:
    """One line without its newline; None at the end of input. At a terminal, with line
    editing and history (readline), as `ollama run`."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    try:
        return input(prompt)
    except EOFError:
        print()
        return None


def _lines() -> Iterator[str]:
    """The user's messages until `/bye` or end of input: a line, or the lines between two
    `\"\"\"`; `/clear` comes through as itself, `/?` prints the commands, another `/word`
    is refused (a typo was sent to the model as a question)."""
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (input() then edits lines and keeps a history)
    while True:
        line = _read(">>> ", interactive)
        if line is None:
            return
        text = line.strip()
        if text.startswith('"""'):
            parts, rest = [], text[3:]
            while not rest.rstrip().endswith('"""'):
                parts.append(rest)
                more = _read("... ", interactive)
                if more is None:
                    return
                rest = more
            parts.append(rest.rstrip()[:-3])
            text = "\n".join(parts).strip()
        elif text in ("/bye", "/exit", "/quit"):
            return
        elif text in ("/?", "/help"):
            print(CHAT_HELP)
            continue
        elif text.startswith("/") and text != "/clear":
            error(f"Unknown command '{text.split()[0]}'. Type /? for help")
            continue
        if text:
            yield text


def _unknown(model: str, names: list[str]) -> typer.Exit:
    known = ", ".join(sorted(names)) or "none"
    return _fail(f"The model '{model}' does not exist (models: {known})")


def _check_http(http: httpx.Client, model: str) -> None:
    """Raise typer.Exit when the server refuses the key, or its model list (`GET /models`:
    ids, aliases, remote targets, routes; those the API key may use) does not have `model`,
    or has it as an embedding model. Unchecked when the key may not read the list (an
    inference-only key): the first answer then tells."""
    res = http.get("/models")
    if res.status_code == 401:
        raise _fail(server_error(res))
    if res.status_code != 200:
        return
    body = res.json()
    ids = [m["id"] for m in body["data"]] + [r["name"] for r in body.get("routes", [])]
    for entry in body["data"]:
        if model == entry["id"] or model in (entry.get("aliases") or ()):
            if entry.get("task") == "embed":
                raise _fail(f"model '{entry['id']}' only makes embeddings: chat with a model "
                            "that generates text")  # fmt: skip
            return
    if model not in ids:
        raise _unknown(model, ids)


def _chat_http(server: str, model: str, system: str | None, params: dict[str, Any]) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with client(server, timeout=None) as http:
        _check_http(http, model)
        for line in _lines():
            if line == "/clear":
                del history[1 if system else 0 :]
                continue
            history.append({"role": "user", "content": line})
            body = {"model": model, "messages": history, "stream": True, **params}
            answer = ""
            with (
                _stopped_by_ctrl_c(),
                http.stream("POST", "/v1/chat/completions", json=body) as res,
            ):
                if res.status_code != 200:
                    res.read()
                    history.pop()
                    _turn_failed(server_error(res))
                    continue
                for data in res.iter_lines():
                    if not data.startswith("data: ") or data == "data: [DONE]":
                        continue
                    chunk = json.loads(data[6:])
                    if "error" in chunk:
                        _write("\n")
                        _turn_failed(chunk["error"]["message"])
                        break
                    for choice in chunk.get("choices", []):
                        piece = choice.get("delta", {}).get("content") or ""
                        answer += piece
                        _write(piece)
            _write("\n\n")
            history.append({"role": "assistant", "content": answer})


@contextlib.contextmanager
def _stopped_by_ctrl_c() -> Iterator[None]:
    """Ctrl-C while an answer streams stops that answer (the request is closed, so the
    server stops generating) and the chat goes on, as in `ollama run`; what was shown stays
    in the history. Piped input: Ctrl-C ends the chat."""
    try:
        yield
    except KeyboardInterrupt:
        if not sys.stdin.isatty():
            raise
        _write("\n")


async def _chat_local(
    settings: Settings, model: str, system: str | None, params: dict[str, Any]
) -> None:
    from .api import Router

    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    loop = asyncio.get_running_loop()
    async with Router(settings=settings) as router:
        try:
            router.dispatcher.resolve(model)  # an id, alias, remote target or route
        except ModelNotFound:
            raise _unknown(model, router.models()) from None
        if (local := _local_target(router, model)) is not None:
            local.check_generates()  # an embedding model: RouterError, at once
        lines = _lines()
        while (line := await loop.run_in_executor(None, next, lines, None)) is not None:
            if line == "/clear":
                del history[1 if system else 0 :]
                continue
            history.append({"role": "user", "content": line})
            answer = ""
            try:
                async for piece in router.stream(history, model=model, **params):
                    answer += piece
                    _write(piece)
            except RouterError as exc:
                history.pop()
                _turn_failed(exc.message)
                continue
            _write("\n\n")
            history.append({"role": "assistant", "content": answer})


def _local_target(router: Any, model: str) -> Any:
    """The local model `model` names (None for a route or a remote target)."""
    from .routing.local import LocalTarget

    try:
        target = router.dispatcher.target(model)
    except ModelNotFound:  # a route
        return None
    return target if isinstance(target, LocalTarget) else None


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command()(ps)
    app.command()(show)
    app.command()(rm)
    app.command()(chat)
