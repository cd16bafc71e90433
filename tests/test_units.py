"""Durations and sizes as users write them in the config and in requests."""

from __future__ import annotations

import pytest

from llm_router.units import parse_bytes, parse_duration

# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        (" 5M ", 300.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (0, 0.0),
        ("0", 0.0),
        (12.5, 12.5),
        (30, 30.0),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [-1, -0.5, "-1", "-5m", -3600])
def test_negative_duration_means_never(value: str | float) -> None:
    assert parse_duration(value) is None


@pytest.mark.parametrize(
    "value",
    ["", "5 minutes", "5 m", "m", "5x", "forever", "1h 30m", "5m!", "ms", "nan", "-forever"],
)
def test_bad_duration_raises(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_nan_duration_raises() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(float("nan"))


# -- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8GiB", 8 * 1024**3),
        ("8gib", 8 * 1024**3),
        ("8 GiB", 8 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("512MiB", 512 * 1024**2),
        ("1.5GB", 1_500_000_000),
        ("2k", 2000),
        ("1TiB", 1024**4),
        ("4096", 4096),
        ("100b", 100),
        (4096, 4096),
    ],
)
def test_parse_bytes(value: str | int, expected: int) -> None:
    assert parse_bytes(value, 10**12) == expected


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [("75%", 8000, 6000), ("100%", 8000, 8000), ("12.5%", 8000, 1000), ("80 %", 1000, 800)],
)
def test_percentage_is_of_the_total(value: str, total: int, expected: int) -> None:
    assert parse_bytes(value, total) == expected


@pytest.mark.parametrize(
    "value", ["lots", "", "8XB", "GiB", "0%", "150%", "-5%", "%", "abc%", "1e9", -1]
)
def test_bad_size_raises(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_bytes(value, 1000)
