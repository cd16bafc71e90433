"""What a request that does not validate is told: the field it is about and why, from
pydantic's errors, the same for the server's 400 (server/errors.py) and the Python API's
BadRequest (api.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["describe_invalid"]

_WHERE = frozenset({"body", "query", "path", "header", "cookie"})  # FastAPI's first loc
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _path(loc: Sequence[Any]) -> list[str]:
    """The request field an error is about, as ["messages", "0", "content"]: pydantic's
    location without where it was (the body, the query string: `limit`, not `query.limit`)
    and without the names it gives a union's members (`constrained-str`, `list[int]`,
    `str`), which are no field of the request."""
    return [
        f"[{p}]" if isinstance(p, int) else str(p)  # OpenAI's `messages.[0].content`
        for i, p in enumerate(loc)
        if isinstance(p, int)
        or (not (i == 0 and p in _WHERE) and p not in _TAGS and _FIELD.fullmatch(p))
    ]


_BOUNDS = {
    "greater_than": "greater than",
    "greater_than_equal": "greater than or equal to",
    "less_than": "less than",
    "less_than_equal": "less than or equal to",
}


def _reason(error: Any) -> str:
    """pydantic's message, without the "Value error, " it puts before a validator's own.
    A bound that is an integer is written from the bound itself: pydantic writes one past
    2^63 through a float (`seed` 2^64 was "less than or equal to 18446744073709552000", a
    bound 2^64 meets)."""
    ctx = error.get("ctx") or {}
    kind = error.get("type")
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    bound = next(iter(ctx.values()), None) if kind in _BOUNDS else None
    if isinstance(bound, int) and not isinstance(bound, bool):
        return f"Input should be {_BOUNDS[kind]} {bound}"
    return str(error.get("msg"))


def describe_invalid(errors: Sequence[Any]) -> tuple[str | None, str]:
    """(param, message) for pydantic's `errors()` about the first field that fails: a value
    that matches none of a union's shapes fails each of them, so the message names the field
    they share; other fields' errors are left to the next attempt (their reasons, joined,
    read as the first field's)."""
    first = errors[0] if errors else {}
    field = _path(first.get("loc", ()))[:1]
    about = [e for e in errors if _path(e.get("loc", ()))[:1] == field]
    paths = [_path(e.get("loc", ())) for e in about]
    common = paths[0] if paths else []
    for path in paths[1:]:
        common = [a for a, b in zip(common, path, strict=False) if a == b][: len(common)]
    param = ".".join(common) or None
    reasons = list(dict.fromkeys(_reason(e) for e in about))[:3]
    why = reasons[0] if len(reasons) == 1 else "; ".join(reasons)
    return param, f"Invalid value for '{param}': {why}" if param else why
