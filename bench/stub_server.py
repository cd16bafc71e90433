"""A fast OpenAI-compatible stub on 127.0.0.1, for measuring what a router adds: a bare ASGI
app (no framework) answering chat completions, plain or as a short SSE stream, at once or
after DELAY_MS (a model's time to answer; the event loop serves other requests meanwhile).

    python bench/stub_server.py PORT [DELAY_MS]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import uvicorn

_USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
_PLAIN = json.dumps(
    {
        "id": "stub-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there friend", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _USAGE,
    }
).encode()


def _chunk(delta: dict[str, Any], finish: str | None, usage: bool = False) -> bytes:
    data: dict[str, Any] = {
        "id": "stub-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stub",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        data["usage"] = _USAGE
    return b"data: " + json.dumps(data).encode() + b"\n\n"


_STREAM = b"".join(
    [
        _chunk({"role": "assistant", "content": ""}, None),
        _chunk({"content": "Hello"}, None),
        _chunk({"content": " there"}, None),
        _chunk({"content": " friend"}, None),
        _chunk({}, "stop"),
        _chunk({}, None, usage=True),
        b"data: [DONE]\n\n",
    ]
)


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if scope["path"].endswith("/models"):
        payload, kind = (
            b'{"object":"list","data":[{"id":"stub","object":"model"}]}',
            b"application/json",
        )
    else:
        stream = b'"stream":true' in body.replace(b" ", b"")
        payload, kind = (_STREAM, b"text/event-stream") if stream else (_PLAIN, b"application/json")
        if DELAY:
            await asyncio.sleep(DELAY)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", kind), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


DELAY = 0.0  # seconds

if __name__ == "__main__":
    DELAY = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
