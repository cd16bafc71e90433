"""`llm-router chat` (an interactive chat with history and streaming, as `ollama run`) and
`llm-router run` (one answer), against a running server (`--url`, or one on the configured
port) or the models in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from .cli import ConfigOpt, ModelsDirOpt, _settings
from .cli_console import error
from .cli_http import UrlOpt, client, find_server, server_error
from .cli_models import entry_of, fail
from .config import Settings
from .errors import ModelNotFound, RouterError
from .logs import setup_logging

__all__ = ["register"]

TemperatureOpt = Annotated[float | None, typer.Option(help="0 for greedy (default: the model's).")]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Longest answer (default: the model's).")]


def chat(
    model: Annotated[str, typer.Argument(help="Model or route.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None,
) -> None:
    """An interactive chat with history and streaming, as `ollama run` (`/?` lists the
    commands). A model the server does not have, or one that makes no text, is an error at
    once; with the input piped, so is any failed turn (exit status 1). An option not given
    is not sent: the model's `sampling` defaults apply, as a Modelfile's in `ollama run`.

    Ctrl-C stops a server's answer and the chat goes on (in this process: ends the chat)."""
    settings = _settings(config, models_dir=models_dir, log_level="warning", watch_interval=0)
    setup_logging(settings.log_level)
    server = find_server(url, settings)
    given = {"max_tokens": max_tokens, "temperature": temperature}
    params = {k: v for k, v in given.items() if v is not None}
    try:
        if server:
            _chat_http(server, model, system, params)
        else:
            asyncio.run(_chat_local(settings, model, system, params))
    except RouterError as exc:
        raise fail(exc.message) from None
    except httpx.HTTPError as exc:  # the server went away mid-chat
        _write("\n")  # not on the line of a half-shown answer
        raise fail(f"lost the server at {server}: {exc or type(exc).__name__}") from None
    except KeyboardInterrupt:
        print()
        raise typer.Exit(130) from None


def _turn_failed(message: str) -> None:
    """Say why a turn failed; with the input piped, end there (a script sees exit 1, where
    it saw the same error for every line and exit 0)."""
    if not sys.stdin.isatty():
        raise fail(message)
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
    return fail(f"The model '{model}' does not exist (models: {known})")


def _check_http(http: httpx.Client, model: str) -> None:
    """Raise typer.Exit when the server refuses the key, or its model list (`GET /models`:
    ids, aliases, remote targets, routes; those the API key may use) does not have `model`,
    or has it as an embedding model. Unchecked when the key may not read the list (an
    inference-only key): the first answer then tells."""
    res = http.get("/models")
    if res.status_code == 401:
        raise fail(server_error(res))
    if res.status_code != 200:
        return
    body = res.json()
    entry = entry_of(body["data"], model)
    if entry is not None and entry.get("task") == "embed":
        raise fail(f"model '{entry['id']}' only makes embeddings: chat with a model that "
                   "generates text")  # fmt: skip
    ids = [m["id"] for m in body["data"]] + [r["name"] for r in body.get("routes", [])]
    if entry is None and model not in ids:
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
                try:
                    for piece in _pieces(res):
                        answer += piece
                        _write(piece)
                except _StreamFailed as exc:
                    _write("\n")
                    _turn_failed(str(exc))
            _write("\n\n")
            history.append({"role": "assistant", "content": answer})


class _StreamFailed(Exception):
    """An error event in a streamed answer (its message)."""


def _pieces(res: httpx.Response) -> Iterator[str]:
    """The text of a streamed answer's events (chat's deltas, or a completion's text);
    raises _StreamFailed at an error event."""
    for data in res.iter_lines():
        if not data.startswith("data: ") or data == "data: [DONE]":
            continue
        chunk = json.loads(data[6:])
        if "error" in chunk:
            raise _StreamFailed(chunk["error"]["message"])
        for choice in chunk.get("choices", []):
            yield choice.get("text") or choice.get("delta", {}).get("content") or ""


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


def run(
    model: Annotated[str, typer.Argument(help="Model, alias or route.")],
    prompt: Annotated[
        str | None,
        typer.Argument(help="The user message (none, or -: read from the standard input)."),
    ] = None,
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    url: UrlOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    seed: Annotated[int | None, typer.Option()] = None,
    raw: Annotated[bool, typer.Option(help="Plain completion, no chat template.")] = False,
) -> None:
    """Answer PROMPT once, streaming to the terminal (`echo hi | llm-router run MODEL` reads
    it from the input, as `ollama run`): by a running server when one answers (`--url`, or
    the configured port), else by MODEL loaded in this process. An option not given is not
    sent: the model's `sampling` defaults apply."""
    if prompt is None or prompt == "-":
        if sys.stdin.isatty():
            error("give a PROMPT, or pipe one in")
            raise typer.Exit(2)
        prompt = sys.stdin.read().strip()
        if not prompt:
            error("the standard input held no prompt")
            raise typer.Exit(2)
    settings = _settings(config, models_dir=models_dir, log_level="warning", watch_interval=0)
    setup_logging(settings.log_level)
    server = find_server(url, settings)
    given = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    params = {k: v for k, v in given.items() if v is not None}
    try:
        if server:
            _run_http(server, model, prompt, params, raw)
        else:
            asyncio.run(_run_local(settings, model, prompt, params, raw))
    except RouterError as exc:
        raise fail(exc.message) from None
    except httpx.HTTPError as exc:  # the server went away mid-answer
        _write("\n")
        raise fail(f"lost the server at {server}: {exc or type(exc).__name__}") from None
    _write("\n")


def _run_http(server: str, model: str, prompt: str, params: dict[str, Any], raw: bool) -> None:
    path, body = (
        ("/v1/completions", {"prompt": prompt})
        if raw
        else ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]})
    )
    with (
        client(server, timeout=None) as http,
        http.stream("POST", path, json={"model": model, "stream": True, **body, **params}) as res,
    ):
        if res.status_code != 200:
            res.read()
            raise fail(server_error(res))
        try:
            for piece in _pieces(res):
                _write(piece)
        except _StreamFailed as exc:
            _write("\n")
            raise fail(str(exc)) from None


async def _run_local(
    settings: Settings, model: str, prompt: str, params: dict[str, Any], raw: bool
) -> None:
    from .api import Router

    async with Router(settings=settings) as router:
        async for text in router.stream(prompt, model=model, raw=raw, **params):
            _write(text)


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
    app.command()(chat)
    app.command()(run)
