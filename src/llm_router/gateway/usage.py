"""Usage reports: the time range a report covers and the columns it has, shared by
`GET /admin/usage` and `llm-router usage`."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ..errors import BadRequest

__all__ = ["COLUMNS", "GROUPS", "parse_range", "parse_time"]

GROUPS = ("key", "model", "target", "route", "day")
COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "errors",
    "avg_latency",
    "avg_ttft",
)
DEFAULT_DAYS = 30


def parse_time(value: str, param: str) -> float:
    """A Unix time, or an ISO date / date-time (UTC unless it says otherwise)."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):  # nan made an empty range, and 1e400 a misleading one
            raise BadRequest(f"{param}: {value!r} is not a time", param=param)
        return number
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{param}: {value!r} is neither a Unix time nor an ISO date", param=param
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_range(start: str | None, end: str | None, now: float) -> tuple[float, float]:
    finish = parse_time(end, "end") if end else now + 1
    begin = parse_time(start, "start") if start else finish - DEFAULT_DAYS * 86400
    if begin >= finish:
        raise BadRequest("start must be before end", param="start")
    return begin, finish
