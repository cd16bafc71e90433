"""The dashboard: `GET /` and its assets under `/dashboard/`, files shipped in the package.

The page is plain HTML, CSS and one vanilla JavaScript file (server/static/): no build step, no
framework, no CDN, so it works on machines without internet and reads like the rest of the
code. It talks to the same public API as any client (`GET /models`, `GET /models/events`,
`POST /models/load|unload`, `GET /metrics`, `/v1/*`), sending `Authorization: Bearer <key>`
when the user has typed one, so it can see exactly what that key may see. Model status comes
from the events stream (read with `fetch()`, which, unlike `EventSource`, can send the key).

The files are read once, at import, and served from memory: a request costs no file access
and cannot name a path (only the names in `ASSETS` exist)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

__all__ = ["ASSETS", "routes"]

routes = APIRouter(include_in_schema=False)

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere; inline scripts and other origins are refused.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("llm_router") / "server" / "static"
    assets: dict[str, tuple[bytes, str]] = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _TYPES:
            assets[item.name] = (item.read_bytes(), _TYPES[suffix])
    return assets


ASSETS = _load()


def _asset(name: str) -> Response:
    body, media_type = ASSETS[name]
    return Response(body, media_type=media_type, headers=_HEADERS)


@routes.get("/")
async def index() -> Response:
    return _asset("index.html")


@routes.get("/dashboard/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no dashboard file {name!r}")
    return _asset(name)
