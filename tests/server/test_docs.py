"""The API docs (`/docs`, `/redoc`) over HTTP, in-process: every file they load is served here,
nothing from a CDN (the pages render in a browser: test_dashboard_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inproc import app_client
from llm_router.server.routes_docs import ASSETS_URL, assets_dir

PAGES = ("/docs", "/redoc")


def _loads(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", PAGES)
async def test_a_docs_page_loads_its_files_from_this_server(tmp_path: Path, page: str) -> None:
    async with app_client(tmp_path) as c:
        res = await c.get(page)
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/html")
        assert not re.search(r"(?:https?:)?//", res.text)  # no CDN, no fonts from Google
        loads = _loads(res.text)
        assert loads and all(url.startswith(ASSETS_URL + "/") for url in loads), loads
        for url in loads:
            asset = await c.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].split(";")[0] in (
                "text/css",
                "text/javascript",
                "application/javascript",
                "image/png",
            ), url
        assert "/openapi.json" in res.text
        csp = res.headers["content-security-policy"]  # the browser refuses anything else
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "img-src 'self' data:" in csp and "script-src 'self' 'unsafe-inline'" in csp


async def test_swagger_ui_asks_no_online_validator(tmp_path: Path) -> None:
    """Swagger UI's default validator badge is an image from swagger.io."""
    async with app_client(tmp_path) as c:
        assert '"validatorUrl": null' in (await c.get("/docs")).text


async def test_the_assets_are_the_packages_files_and_nothing_else(tmp_path: Path) -> None:
    names = {p.name for p in assets_dir().iterdir()}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= names
    async with app_client(tmp_path) as c:
        body = (await c.get(f"{ASSETS_URL}/swagger-ui.css")).content
        assert body == (assets_dir() / "swagger-ui.css").read_bytes()
        for path in (f"{ASSETS_URL}/nope.js", f"{ASSETS_URL}/..%2F..%2Fcore.py"):
            res = await c.get(path)
            assert res.status_code == 404, path
            assert set(res.json()["error"]) == {"message", "type", "param", "code"}


async def test_with_keys_on_the_docs_need_none_and_the_api_still_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-docs-master")
    async with app_client(tmp_path, data_dir=tmp_path / "data") as c:
        for path in (*PAGES, "/docs/oauth2-redirect", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            assert (await c.get(f"{ASSETS_URL}/{name}")).status_code == 200, name
        assert (await c.get("/models")).status_code == 401
        assert (await c.get("/docs/other")).status_code == 401  # only the assets are public


async def test_the_host_check_covers_the_docs(tmp_path: Path) -> None:
    async with app_client(tmp_path) as c:
        for path in (*PAGES, f"{ASSETS_URL}/swagger-ui-bundle.js"):
            res = await c.get(path, headers={"host": "rebound.example"})
            assert res.status_code == 421, path


async def test_the_docs_are_not_in_the_api_document(tmp_path: Path) -> None:
    async with app_client(tmp_path) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
