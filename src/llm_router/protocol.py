"""OpenAI wire types for the endpoints we serve. Request models validate and convert themselves
to internal types (`to_request()`); response models are what goes out as JSON.

Unknown request fields are accepted and ignored (clients send many), wrong types and values are
a 400 naming the field. Fields OpenAI's schema lists as required are always sent, as null where
they do not apply (`logprobs`, `refusal`)."""

from __future__ import annotations

import json
import random
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from .types import ChatMessage, FinishReason, GenerationRequest, SamplingParams, Usage

__all__ = [
    "OPENAI_CHAT_FIELDS",
    "OPENAI_COMPLETION_FIELDS",
    "OPENAI_EMBEDDING_FIELDS",
    "SAMPLING_EXTENSIONS",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Completion",
    "CompletionChunk",
    "CompletionRequest",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "ModelCard",
    "ModelList",
    "RenderedChunk",
    "TextChunks",
    "UsageOut",
    "dump_chunk",
]


# Request fields OpenAI's API defines (tests/data/openai_schemas.json, vendored from its
# openapi.yaml; a test keeps these equal), and the llama.cpp sampling fields this API models:
# the only fields of a request passed on to a remote target (plus `forward_fields` from the
# configuration), so that nothing unknown reaches a paid upstream.
OPENAI_CHAT_FIELDS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options",
})  # fmt: skip
OPENAI_COMPLETION_FIELDS = frozenset({
    "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "model", "n",
    "presence_penalty", "prompt", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user",
})  # fmt: skip
OPENAI_EMBEDDING_FIELDS = frozenset({"dimensions", "encoding_format", "input", "model", "user"})
SAMPLING_EXTENSIONS = frozenset({"top_k", "min_p", "repeat_penalty"})

MAX_MODEL_NAME = 256
MAX_TOKENS = 2**31 - 1  # the engines' token counts are C ints
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # any 64-bit seed, signed or not


class _Request(BaseModel):
    """Fields every generation request shares. Numbers must be finite, and every sampling
    value is bounded to what the engines' samplers take without overflow or NaN."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, ge=0.01, le=10)
    ignore_eos: bool | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    # Ollama-style lifecycle controls: seconds / "5m" / -1 / 0, and llama-server's autoload.
    keep_alive: str | float | None = None
    autoload: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def sampling(self) -> SamplingParams:
        given: dict[str, Any] = {
            k: v
            for k, v in {
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "min_p": self.min_p, "seed": self.seed,
                "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty,
                "repeat_penalty": self.repeat_penalty,
                "ignore_eos": self.ignore_eos,
            }.items()
            if v is not None
        }  # fmt: skip
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens, stop=tuple(stop), **given
        )


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content part type {part.get('type')!r} is not supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1)

    def to_request(self, system_prompt: str | None = None) -> GenerationRequest:
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.text())
            for m in self.messages
        ]
        if system_prompt and not any(m.role == "system" for m in messages):
            messages.insert(0, ChatMessage("system", system_prompt))
        return GenerationRequest(params=self.sampling(), messages=tuple(messages))


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value

    def to_request(self) -> GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationRequest(params=self.sampling(), prompt=prompt)


# -- responses ------------------------------------------------------------------------------


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
    logprobs: None = None


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
    logprobs: None = None

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
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut | None = None


CompletionChunk = Completion  # OpenAI streams completions as `text_completion` objects too


def dump_chunk(chunk: BaseModel | RenderedChunk) -> str:
    """A stream chunk's JSON; `usage` appears only in the chunk that carries it."""
    if isinstance(chunk, RenderedChunk):
        return chunk.json
    exclude = {"usage"} if getattr(chunk, "usage", 0) is None else None
    return chunk.model_dump_json(exclude=exclude)


class RenderedChunk:
    """A stream chunk already rendered to JSON (see TextChunks)."""

    __slots__ = ("json",)

    def __init__(self, json: str) -> None:
        self.json = json


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-runner-router"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- embeddings -----------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(BaseModel):
    """`input`: a string, a list of strings, a token array or a list of token arrays."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        shape = "a string, a list of strings, a token array or a list of token arrays"
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"input must be {shape}")
        if not items:
            raise ValueError("input must not be empty")
        tokens = all(_token(t) for t in items)
        if not tokens and not all(isinstance(i, str) and i for i in items):
            if not all(isinstance(r, list) and r and all(_token(t) for t in r) for r in items):
                raise ValueError(f"input must be {shape}, with no empty string or array")
        if len(items) > MAX_EMBEDDING_INPUTS and not tokens:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or a list of token arrays."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(t, int) for t in value):  # one token array
            return [[int(t) for t in value if isinstance(t, int)]]
        if all(isinstance(t, str) for t in value):
            return [t for t in value if isinstance(t, str)]
        return [[int(t) for t in row] for row in value if isinstance(row, list)]


def _token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
