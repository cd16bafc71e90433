"""Durations and sizes as users write them: '5m', '30s', '1h30m', -1; '12GiB', '80%'."""

from __future__ import annotations

import math
import re

__all__ = ["parse_bytes", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZES = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_duration(value: str | float | int) -> float | None:
    """Seconds, or None for 'never' (any negative value). A bare number is seconds."""
    if isinstance(value, (int, float)):
        return _seconds(float(value), value)
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _seconds(number, value)
    if text.startswith("-"):
        parse_duration(text[1:])
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (use e.g. '30s', '5m', '1h', 0 or -1)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _seconds(number: float, value: object) -> float | None:
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"not a duration: {value!r}")
    return None if number < 0 else number


def parse_bytes(value: str | int, total: int) -> int:
    """Bytes; a percentage is of `total`."""
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    text = value.strip().lower().replace(" ", "")
    if text.endswith("%"):
        pct = float(text[:-1])
        if not 0 < pct <= 100:
            raise ValueError(f"percentage out of range: {value!r}")
        return int(total * pct / 100)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text)
    if not match or match.group(2) not in _SIZES:
        raise ValueError(f"not a size: {value!r} (use e.g. '8GiB', '500MB', '75%')")
    return int(float(match.group(1)) * _SIZES[match.group(2)])
