"""JSON request bodies are parsed by one parser on every route: pydantic-core's, which the hot
routes validate their raw bytes with (routes_openai.parse_body).

FastAPI's own routes parsed theirs with `json.loads`, which takes what JSON's grammar allows
but no text can hold: an escaped lone UTF-16 surrogate (`"\\ud800"`). pydantic passes such a
string on where a field is a plain `str`, and the first thing to encode it (a worker's
request, a log line) failed with a 500; pydantic-core's parser refuses it as invalid JSON, a
400 as on the hot routes. Each router is made with `route_class=JSONRoute`; a test checks
every route with a JSON body is one."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["JSONRoute"]


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:  # FastAPI answers this one as a `json_invalid` 400
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class JSONRoute(APIRoute):
    """A FastAPI route whose JSON body is parsed as the hot routes parse theirs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return handle
