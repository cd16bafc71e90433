"""The API docs, `GET /docs` (Swagger UI) and `GET /redoc` (ReDoc), with every file they load
served by this server under `/docs/assets/`.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net, their icon from its site
and ReDoc's fonts from Google: on a machine without internet they stay blank. The pages here
are FastAPI's (`fastapi.openapi.docs`) pointed at the copies the `fastapi-offline` package
ships (Swagger UI 5 and ReDoc 2, the versions those pages are written for); ReDoc uses the
system fonts, and Swagger UI's online validator badge is off (it would ask swagger.io). A
Content-Security-Policy keeps the pages to this server: ReDoc's "API docs by Redocly" badge
still asks cdn.redoc.ly for its logo, which the browser then refuses (the badge shows no logo).
The pages' own inline script and the styles the two libraries write at run time are allowed.

Like `/openapi.json`, the pages and their assets need no key (gateway/keys.py); the Host check
applies to them as to every route."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "DOCS_URL", "REDOC_URL", "assets_dir", "install"]

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
}


def assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png
    (a directory of the installed package: its files are served as they are)."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Add the pages and their assets to `app`, built with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    redirect = app.swagger_ui_oauth2_redirect_url

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or ""),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + redirect if redirect else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers.update(_HEADERS)
        return page

    if redirect:

        @app.get(redirect, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            page = get_swagger_ui_oauth2_redirect_html()
            page.headers.update(_HEADERS)
            return page

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + (app.openapi_url or ""),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(_HEADERS)
        return page


def _root(request: Request) -> str:
    """The app's root path (behind a proxy that serves it under a prefix), as FastAPI's own
    pages read it."""
    return str(request.scope.get("root_path", "")).rstrip("/")
