"""Numbers in request bodies as OpenAI reads them: JSON's true and false are not numbers
(pydantic would read them as 1 and 0), nor is a string of digits (pydantic would read "3" as
3; OpenAI refuses it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Float", "Int"]


def _number(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    if isinstance(value, str):
        raise ValueError("a number is expected, not a string")
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
