"""What the routes of APIs served as a translation onto the chat path share (OpenAI's Responses
API, routes_responses.py; Anthropic's Messages API, routes_anthropic.py): a 400 the chat path
raises names the field of the request the client sent, not the chat field it became
(`messages`, `response_format`, `tools[0].function.parameters` were a Responses or Messages
client's to puzzle over); and a chat stream read into the API's own events (`events`)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest
from ..protocol import ChatCompletionChunk, RenderedChunk
from ..protocol.chat_stream import ChatStreamEvents

__all__ = ["ChatNames", "events"]

log = logging.getLogger(__name__)

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


def _data(chunk: BaseModel | RenderedChunk) -> dict[str, Any]:
    """A chat chunk as JSON, with the stop string that ended a choice (`stopped_by`, which
    the chat path keeps from OpenAI's clients)."""
    if isinstance(chunk, RenderedChunk):
        data: dict[str, Any] = json.loads(chunk.json)
        return data
    data = chunk.model_dump(exclude_none=True)
    if isinstance(chunk, ChatCompletionChunk):
        for choice, out in zip(chunk.choices, data.get("choices") or (), strict=False):
            if choice.stopped_by is not None:
                out["stopped_by"] = choice.stopped_by
    return data


async def events(
    made: ChatStreamEvents,
    chunks: AsyncIterator[BaseModel | RenderedChunk],
    names: ChatNames,
    failed: Callable[[Exception], RenderedChunk],
    ending: Callable[[], None] | None = None,
) -> AsyncIterator[RenderedChunk]:
    """The events `made` makes of a chat stream. The first is made only once the chat
    stream's first chunk exists, so an error before it (an unknown model, a prompt too long)
    is an ordinary HTTP error, naming this API's field; one after is the event `failed`
    makes of it, which ends the stream. `ending` runs before the last events go out (a
    client may hang up once it has them)."""
    async with aclosing(chunks):  # type: ignore[type-var]
        try:
            first = await anext(chunks, None)
        except BadRequest as exc:
            raise names.renamed(exc) from None
        data = _data(first) if first is not None else {}
        for event in made.start(str(data.get("model") or made.model)):
            yield event
        for event in made.chunk(data):
            yield event
        try:
            async for chunk in chunks:
                for event in made.chunk(_data(chunk)):
                    yield event
        except Exception as exc:  # the answer has started: report in-band, then end
            log.warning("stream failed after it started: %s", exc)
            yield failed(exc)
            return
        last = made.done()
        if ending is not None:
            ending()
        for event in last:
            yield event
