"""What chat and text completions answer, whole or as stream chunks. Fields OpenAI's schema
lists as required are always sent, as null where they do not apply (`logprobs`, `refusal`)."""

from __future__ import annotations

import json
import random
import time
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
)

from ..types import FinishReason, Usage
from .logprobs import ChatLogprobs, CompletionLogprobs


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        )


def new_id(prefix: str) -> str:
    return f"{prefix}-{random.getrandbits(96):024x}"  # no syscall, unlike uuid4


def now() -> int:
    return int(time.time())


ChatFinish = FinishReason


class AssistantMessage(BaseModel):
    """Extra fields (`tool_calls`, a remote target's `reasoning_content`...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: ChatFinish
    logprobs: ChatLogprobs | None = None
    stopped_by: str | None = Field(None, exclude=True)  # for /v1/messages: not OpenAI's


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut


class ChatDelta(BaseModel):
    model_config = ConfigDict(extra="allow")  # a remote target's `tool_calls`, ...

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: ChatFinish | None = None
    logprobs: ChatLogprobs | None = None
    stopped_by: str | None = Field(None, exclude=True)  # for /v1/messages: not OpenAI's

    @field_serializer("delta")
    def _delta(self, delta: ChatDelta) -> dict[str, Any]:
        return delta.model_dump(exclude_none=True)  # `role: null` is not valid OpenAI


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None


CompletionChunk = Completion  # OpenAI streams completions as `text_completion` objects too


def dump_chunk(chunk: BaseModel | RenderedChunk) -> str:
    """A stream chunk's JSON; `usage` appears only in the chunk that carries it, or as null
    where it is set so (`stream_options.include_usage`: OpenAI's other chunks say null)."""
    if isinstance(chunk, RenderedChunk):
        return chunk.json
    unset = getattr(chunk, "usage", 0) is None and "usage" not in chunk.model_fields_set
    exclude = {"usage"} if unset else None
    return chunk.model_dump_json(exclude=exclude)


class RenderedChunk:
    """A stream chunk already rendered to JSON (see TextChunks); `event` names it on the
    wire (an SSE `event:` line, as Anthropic's streams have), None for OpenAI's unnamed."""

    __slots__ = ("event", "json")

    def __init__(self, json: str, event: str | None = None) -> None:
        self.json = json
        self.event = event


class TextChunks:
    """The text chunks of one stream, rendered from `template`: a chunk model whose text is
    `MARK`. Everything around the text is serialized once, by the model, so the shape stays the
    model's; each token then costs one JSON string escape instead of building and dumping three
    models (measured: 0.5 us against 9 us, on the path every streamed token takes)."""

    MARK = "\u2063llm-router-text\u2063"

    def __init__(self, template: BaseModel) -> None:
        head, sep, tail = dump_chunk(template).partition(json.dumps(self.MARK, ensure_ascii=False))
        if not sep:
            raise ValueError("the template chunk does not carry TextChunks.MARK as its text")
        self._head, self._tail = head, tail

    def chunk(self, text: str) -> RenderedChunk:
        return RenderedChunk(self._head + json.dumps(text, ensure_ascii=False) + self._tail)


class ModelStatus(BaseModel):
    value: str  # llama.cpp router's: unloaded, loading, loaded, unloading, error (+ waiting)


class ModelCard(BaseModel):
    """OpenAI's model object, with llama.cpp router mode's `status` and `aliases` (its web UI
    reads `status.value` from `/v1/models` once `/props` says `role: router`). A remote
    target or a route is always `loaded`: nothing loads it here."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-runner-router"
    aliases: list[str] = Field(default_factory=list)
    status: ModelStatus = Field(default_factory=lambda: ModelStatus(value="loaded"))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
