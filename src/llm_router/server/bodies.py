"""JSON request bodies are parsed by one parser on every route: pydantic-core's, which the hot
routes validate their raw bytes with (routes_openai.parse_body).

FastAPI's own routes parsed theirs with `json.loads`, which takes what JSON's grammar allows
but no text can hold: an escaped lone UTF-16 surrogate (`"\\ud800"`). pydantic passes such a
string on where a field is a plain `str`, and the first thing to encode it (a worker's
request, a log line) failed with a 500; pydantic-core's parser refuses it as invalid JSON, a
400 as on the hot routes. Each router is made with `route_class=JSONRoute`; a test checks
every route with a JSON body is one.

pydantic-core's words for that refusal describe an escape cut short ("unexpected end of hex
escape" for `"\\ud83d"`, awaiting the pair's second half), so `invalid_json` looks for the
unpaired surrogate itself and names it and where it is."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.routing import APIRoute

__all__ = ["MAX_DEPTH", "JSONRoute", "invalid_json", "too_deep"]

MAX_DEPTH = 201  # objects and arrays inside each other, the body's own counted: pydantic-core's


def invalid_json(body: bytes, parser_says: str) -> tuple[str, str | None]:
    """Why pydantic-core refused `body`, and the top-level field at fault when one is: its
    own words, unless a string there holds an unpaired UTF-16 surrogate, or the body nests
    deeper than it reads (its "recursion limit exceeded at line 1 column 3666" named
    neither the limit nor the field). Read again with `json.loads`, which takes both: only
    on this error's path, never on a valid body's."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return parser_says, None  # not JSON to either parser: the parser said why
    if (deep := too_deep(doc)) is not None:
        at = ".".join(deep[:6]) + (".…" if len(deep) > 6 else "")
        return (
            f"`{deep[0]}` nests objects and arrays too deep: a body may hold at most "
            f"{MAX_DEPTH} levels of them inside each other, its own counted (at `{at}`)"
        ), deep[0]
    found = _unpaired_surrogate(doc)
    if found is None:
        return parser_says, None
    where, char = found
    at = f" in `{where}`" if where else ""
    return (
        f"a string{at} holds an unpaired UTF-16 surrogate (\\u{ord(char):04x}), which is no "
        "character: send the character itself, or both halves of its surrogate pair"
    ), None


def too_deep(doc: Any) -> list[str] | None:
    """The keys (and list indices) down to the first object or array nested past MAX_DEPTH
    levels, or None. A body whose top level is deep already has no key: `["body"]`."""
    todo: list[tuple[list[str], Any]] = [([], doc)]
    while todo:
        path, value = todo.pop()
        if not isinstance(value, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            return path or ["body"]
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        todo.extend(([*path, str(k)], v) for k, v in pairs)
    return None


def _unpaired_surrogate(doc: Any) -> tuple[str, str] | None:
    """The dotted path of the first string holding a lone surrogate (an object's, for one
    of its keys), and that surrogate."""
    todo: list[tuple[str, Any]] = [("", doc)]
    while todo:
        path, value = todo.pop()
        if isinstance(value, dict):
            for text in value:
                if (char := _lone(text)) is not None:
                    return path, char
            todo.extend(reversed([(_join(path, k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            todo.extend(reversed([(_join(path, str(i)), v) for i, v in enumerate(value)]))
        elif isinstance(value, str) and (char := _lone(value)) is not None:
            return path, char
    return None


def _lone(text: str) -> str | None:
    return next((c for c in text if "\ud800" <= c <= "\udfff"), None)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:  # FastAPI answers this one as a `json_invalid` 400
                raise json.JSONDecodeError(invalid_json(body, str(exc))[0], "", 0) from None
        return self._json


class JSONRoute(APIRoute):
    """A FastAPI route whose JSON body is parsed as the hot routes parse theirs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return handle
