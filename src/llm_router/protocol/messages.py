"""A chat request's turns and their content parts, as OpenAI's API sends them: validated on the
way in (a 400 names the turn and the part), converted to the internal turn (`to_message`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadRequest, Unsupported
from ..types import ChatMessage, ToolCall
from .structured import FunctionCallIn, ToolCallIn, tool_calls_of

__all__ = ["ChatMessageIn", "ContentPart", "MediaPart", "RefusalPart", "TextPart"]


class TextPart(BaseModel):
    """A content part of a message: text (the only kind models here read)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str

    def text_of(self) -> str:
        return self.text


class RefusalPart(BaseModel):
    """An assistant's refusal, given back in a conversation's history: its text."""

    model_config = ConfigDict(extra="allow")

    type: Literal["refusal"]
    refusal: str

    def text_of(self) -> str:
        return self.refusal


class MediaPart(BaseModel):
    """An image, audio or file part, which OpenAI's API takes and no model here reads: a
    400 naming it (`to_message`), rather than pydantic's words for a union none matched."""

    model_config = ConfigDict(extra="allow")

    type: Literal["image_url", "input_audio", "file"]

    def text_of(self) -> str:
        raise AssertionError("refused by ChatMessageIn.to_message")


ContentPart = Annotated[TextPart | RefusalPart | MediaPart, Field(discriminator="type")]


class ChatMessageIn(BaseModel):
    """A turn. OpenAI's deprecated function calling: an assistant's `function_call`, and a
    `function` turn with the result of the function `name`."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=128)] | None = None
    tool_call_id: str | None = Field(None, max_length=256)
    function_call: FunctionCallIn | None = None
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text_of() for part in self.content)

    def _check_parts(self, index: int) -> None:
        """Raises Unsupported for an image, audio or file part, BadRequest for a refusal
        outside an assistant's message (OpenAI's API allows it there only)."""
        for j, part in enumerate(self.content if isinstance(self.content, list) else ()):
            where = f"messages.[{index}].content.[{j}].type"
            if isinstance(part, MediaPart):
                raise Unsupported(
                    f"messages[{index}].content[{j}] is an '{part.type}' part: image, audio "
                    "and file input is not supported by this server (its models read text); "
                    "send the content as text parts",
                    param=where,
                )
            if isinstance(part, RefusalPart) and self.role != "assistant":
                raise BadRequest(
                    f"messages[{index}].content[{j}]: a 'refusal' part is an assistant's; "
                    f"a '{self.role}' message takes text parts",
                    param=where,
                )

    def to_message(self, index: int = 0) -> ChatMessage:
        """The internal turn. A legacy call's id is its function's name, which is what a
        `function` turn answering it names. Raises BadRequest for what OpenAI refuses: a
        user, system or tool turn without `content`, an empty list of content parts, a tool
        turn without `tool_call_id`."""
        if self.content is None and self.role in ("system", "developer", "user", "tool"):
            raise BadRequest(
                f"messages[{index}]: a '{self.role}' message needs `content`",
                param=f"messages.[{index}].content",
            )
        if self.content == []:
            raise BadRequest(
                f"messages[{index}]: `content` is an empty list; give at least one part "
                "(or a string)",
                param=f"messages.[{index}].content",
            )
        self._check_parts(index)
        if self.role == "tool" and not self.tool_call_id:
            raise BadRequest(
                f"messages[{index}]: a 'tool' message needs the `tool_call_id` it answers",
                param=f"messages.[{index}].tool_call_id",
            )
        calls = tool_calls_of(self.tool_calls)
        fc = self.function_call
        if fc is not None and not calls:
            calls = (ToolCall(fc.name, fc.name, fc.arguments),)
        if self.role == "function":
            return ChatMessage("tool", self.text(), (), self.name or "")
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, self.text(), calls, self.tool_call_id)
