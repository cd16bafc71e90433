"""The dashboard's files over HTTP, in-process: served from the package, nothing from elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

from inproc import app_client
from llm_router.server.routes_dashboard import ASSETS


async def test_the_page_and_its_assets_are_served_from_the_package(tmp_path: Path) -> None:
    async with app_client(tmp_path) as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text)
        assert sorted(assets) == ["/dashboard/dashboard.css", "/dashboard/dashboard.js"]
        for path in assets:
            res = await c.get(path)
            assert res.status_code == 200, path
            assert res.headers["content-type"].split(";")[0] in ("text/css", "text/javascript")
            assert res.headers["x-content-type-options"] == "nosniff"


async def test_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    """No CDN, no font or script from the internet: the machines may have none. The policy
    header makes the browser refuse anything else too."""
    for name, (body, _) in ASSETS.items():
        text = body.decode()
        assert not re.search(r"(?:src|href|url\()\s*=?\s*[\"']?(?:https?:)?//", text), name
    async with app_client(tmp_path) as c:
        csp = (await c.get("/")).headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp


async def test_an_unknown_asset_is_a_404_envelope_and_paths_cannot_escape(tmp_path: Path) -> None:
    async with app_client(tmp_path) as c:
        for path in ("/dashboard/nope.js", "/dashboard/..%2F..%2Fconfig.py", "/dashboard/"):
            res = await c.get(path)
            assert res.status_code == 404, path
            assert set(res.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_dashboard_is_not_in_the_api_document(tmp_path: Path) -> None:
    async with app_client(tmp_path) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)
