"""What the routes of APIs served as a translation onto the chat path share (OpenAI's Responses
API, routes_responses.py; Anthropic's Messages API, routes_anthropic.py): a 400 the chat path
raises names the field of the request the client sent, not the chat field it became
(`messages`, `response_format`, `tools[0].function.parameters` were a Responses or Messages
client's to puzzle over)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest

__all__ = ["ChatNames"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ChatNames:
    """How an API names the chat fields its requests become.

    `fields`: a chat field -> this API's path to it; `messages`: what a `param` under chat's
    `messages` is called (without the index: this API's system and tool items shift them);
    `tool_param` and `tool_as`: a chat tool's part of a `param` and its name here (a regular
    expression and its replacement); `tool_loc`: the same in a validation error's location,
    the chat path under `tools[i]` and this API's."""

    fields: Mapping[str, tuple[str, ...]]
    messages: str
    tool_param: re.Pattern[str]
    tool_as: str
    tool_loc: tuple[tuple[str, ...], tuple[str, ...]]

    def param(self, param: str) -> str:
        """This API's name for chat's `param`."""
        head = re.split(r"[.\[]", param, maxsplit=1)[0]
        if head == "messages":
            return self.messages
        if head in self.fields:
            return ".".join(self.fields[head]) + param[len(head) :]
        return self.tool_param.sub(self.tool_as, param)

    def renamed(self, exc: BadRequest) -> BadRequest:
        """`exc`, raised by the chat path, naming this API's field (its message too)."""
        if exc.param is not None:
            ours = self.param(exc.param)
            if ours != exc.param:
                exc.message = exc.message.replace(f"`{exc.param}`", f"`{ours}`")
                exc.param = ours
        return exc

    def validated(self, model: type[M], chat: dict[str, Any]) -> M:
        """`chat` validated as `model`; a value chat refuses is a 400 whose locations are
        this API's fields."""
        try:
            return model.model_validate(chat)
        except ValidationError as exc:
            raise RequestValidationError([self._located(e) for e in exc.errors()]) from None

    def _located(self, error: Any) -> dict[str, Any]:
        loc = tuple(error["loc"])
        chat_part, ours = self.tool_loc
        if loc and isinstance(loc[0], str) and loc[0] in self.fields:
            loc = (*self.fields[loc[0]], *loc[1:])
        elif loc[:1] == ("tools",) and loc[2 : 2 + len(chat_part)] == chat_part:
            loc = (*loc[:2], *ours, *loc[2 + len(chat_part) :])
        return {**error, "loc": loc}
