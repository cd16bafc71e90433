"""The least a Python hop can add: a bare ASGI app (no framework, no routing, no parsing) on
uvicorn that forwards each POST to one upstream with aiohttp and relays the answer's bytes as
they come. A control for `bench/overhead.py`: what any extra process costs on this machine.

    python bench/bare_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn
from stub_server import read_body

UPSTREAM = sys.argv[2].rstrip("/") if len(sys.argv) > 2 else ""
_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if _session is None:
        _session = aiohttp.ClientSession()
    async with _session.request(
        scope["method"],
        UPSTREAM + scope["path"],
        data=body,
        headers={"content-type": "application/json"},
    ) as upstream:
        kind = upstream.headers.get("content-type", "application/json").encode()
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [(b"content-type", kind)],
            }
        )
        async for block in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": block, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
