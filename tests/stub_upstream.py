"""A tiny OpenAI-compatible upstream for fault injection, run as its own process:

    python tests/stub_upstream.py PORT

POST /control {"mode": "ok" | "500" | "429" | "hang" | "frozen", "delay": seconds per chunk,
"reply": str} changes how it answers ("hang": no answer to a plain request, a stream's headers
and then nothing; "frozen": not even headers, on any path, /v1/models too); GET /stats says how many requests it saw, how many clients hung up
before the answer was complete, and the last request's body. A chat request with `tools` is
answered with a call of the first tool (streamed in three pieces, as OpenAI does)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

state: dict[str, Any] = {
    "mode": "ok",
    "delay": 0.0,
    "reply": "stub says hello",
    "requests": 0,
    "disconnects": 0,
    "completed": 0,
}


async def control(request: Request) -> Response:
    state.update(await request.json())
    return JSONResponse({"ok": True})


async def stats(_: Request) -> Response:
    return JSONResponse(state)


async def models(request: Request) -> Response:
    if state["mode"] == "frozen":
        await _client_left(request, 3600)
        return Response(status_code=499)
    if state["mode"] == "500":
        return JSONResponse({"error": {"message": "down"}}, 500)
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}],
        }
    )


def _chunk(kind: str, model: str, text: str | None, finish: str | None) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": text} if text else {},
            "finish_reason": finish,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": "stub-1",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }


async def _client_left(request: Request, seconds: float) -> bool:
    """Wait `seconds`; True if the client disconnected first (the body is already read)."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait_for(asyncio.shield(watcher), seconds)
        return True
    except TimeoutError:
        return False
    finally:
        watcher.cancel()


async def answer(request: Request) -> Response:
    state["requests"] += 1
    body = await request.json()
    state["last_body"] = body
    kind = "chat" if request.url.path.endswith("chat/completions") else "completion"
    mode = state["mode"]
    if mode == "500":
        return JSONResponse(
            {
                "error": {
                    "message": "injected failure",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            500,
        )
    if mode == "429":
        return JSONResponse(
            {
                "error": {
                    "message": "slow down",
                    "type": "rate_limit_error",
                    "param": None,
                    "code": None,
                }
            },
            429,
            headers={"Retry-After": "1"},
        )
    silent = mode == "frozen" or (mode == "hang" and not body.get("stream"))
    if silent and await _client_left(request, 3600):
        state["disconnects"] += 1
        return Response(status_code=499)
    words = str(state["reply"]).split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    usage = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}
    model = body.get("model", "stub")
    if kind == "chat" and body.get("tools"):
        return _tool_call(body, model, usage)
    if not body.get("stream"):
        if await _client_left(request, state["delay"] * len(pieces)):
            state["disconnects"] += 1
            return Response(status_code=499)
        state["completed"] += 1
        text = "".join(pieces)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if kind == "chat"
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        return JSONResponse(
            {
                "id": "stub-1",
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": 0,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def stream() -> AsyncIterator[bytes]:
        try:
            if mode == "hang":
                await asyncio.sleep(3600)
            for piece in pieces:
                await asyncio.sleep(state["delay"])
                yield f"data: {json.dumps(_chunk(kind, model, piece, None))}\n\n".encode()
            final = _chunk(kind, model, None, "stop")
            yield f"data: {json.dumps(final)}\n\n".encode()
            yield f"data: {json.dumps({**final, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            state["completed"] += 1
        except asyncio.CancelledError:
            state["disconnects"] += 1
            raise

    return StreamingResponse(stream(), media_type="text/event-stream")


def _tool_call(body: dict[str, Any], model: str, usage: dict[str, int]) -> Response:
    name = body["tools"][0]["function"]["name"]
    args = ['{"city": ', '"Paris"}']
    if not body.get("stream"):
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": "".join(args)},
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return JSONResponse(
            {
                "id": "stub-1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            }
        )
    deltas = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ],
        }
    ]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in args]

    async def stream() -> AsyncIterator[bytes]:
        for delta in deltas:
            chunk = {
                "id": "stub-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        final = {
            "id": "stub-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        }
        yield f"data: {json.dumps(final)}\n\n".encode()
        yield f"data: {json.dumps({**final, 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/control", control, methods=["POST"]),
        Route("/stats", stats),
        Route("/v1/models", models),
        Route("/v1/chat/completions", answer, methods=["POST"]),
        Route("/v1/completions", answer, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
