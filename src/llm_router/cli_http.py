"""How the commands find and talk to a running server: `--url`, else the configured host and
port if a server answers there (a quick `GET /health`), else none and the command works in
this process where it can. `LLM_ROUTER_API_KEY` is sent as the bearer key when set."""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer

from .compat import http_url
from .config import Settings

__all__ = ["ServerUrlOpt", "UrlOpt", "auth_headers", "client", "find_server", "server_error"]

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A running server, e.g. http://127.0.0.1:8080 or 127.0.0.1:8080 (default: the "
        "configured host and port when a server answers there, else work in this process).",
    ),
]
# For the commands that need a server (`ps`): there is no "in this process" for them.
ServerUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="The running server, e.g. http://127.0.0.1:8080 or 127.0.0.1:8080 (default: the "
        "one on the configured host and port; this command needs a running server).",
    ),
]


def auth_headers() -> dict[str, str]:
    key = os.environ.get("LLM_ROUTER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def client(url: str, timeout: float | None = 30.0) -> httpx.Client:
    return httpx.Client(base_url=http_url(url), headers=auth_headers(), timeout=timeout)


def _health(url: str) -> str | None:
    """What `/health` at `url` says: "ok", "draining" (shutting down: it takes no new
    requests), or None when no llm-router server answers there."""
    try:
        res = httpx.get(http_url(url) + "/health", timeout=0.5, headers=auth_headers())
        status = res.json().get("status")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if res.status_code == 200 and status == "ok":
        return "ok"
    return "draining" if res.status_code == 503 and status == "draining" else None


def _answers(url: str) -> bool:
    return _health(url) == "ok"


def find_server(url: str | None, settings: Settings) -> str | None:
    """The server to talk to: `url` (http:// when it has no scheme, as OLLAMA_HOST; it must
    answer: else typer.BadParameter), or the configured address when a server answers there,
    else None."""
    if url:
        health = _health(full := http_url(url))
        if health == "draining":
            raise typer.BadParameter(
                f"the server at {url} is shutting down and takes no new requests",
                param_hint="--url",
            )
        if health is None:
            raise typer.BadParameter(f"no llm-router server answers at {url}", param_hint="--url")
        return full
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    default = f"http://{host}:{settings.port}"
    return default if _answers(default) else None


def server_error(res: httpx.Response) -> str:
    """The message of an error answer (the OpenAI envelope), else its status line; for a
    refused key, what to set (the envelope speaks to HTTP clients: "an Authorization
    header")."""
    try:
        body: Any = res.json()
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"{res.status_code} {res.reason_phrase}"
    if res.status_code == 401:
        have = "the key in LLM_ROUTER_API_KEY" if auth_headers() else "no key"
        return f"{message} (the CLI sent {have}: set LLM_ROUTER_API_KEY to a key of this server)"
    if res.status_code == 403:
        return f"{message} (set LLM_ROUTER_API_KEY to a key with that scope)"
    return message
