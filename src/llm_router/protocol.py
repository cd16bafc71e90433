"""OpenAI wire types for the endpoints we serve. Request models validate and convert themselves
to internal types (`to_request()`); response models are what goes out as JSON.

Unknown request fields are accepted and ignored (clients send many), wrong types and values are
a 400 naming the field. Fields OpenAI's schema lists as required are always sent, as null where
they do not apply (`logprobs`, `refusal`)."""

from __future__ import annotations

import json
import random
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_serializer,
)

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
EXAMPLE_MODEL = "SmolLM2-135M-Instruct.Q4_1"  # the bundled chat model, for the API document
MAX_TOKENS = 2**31 - 1  # the engines' token counts are C ints
SEED_MIN, SEED_MAX = -(2**53), 2**53  # integers every JSON parser reads exactly
MAX_TOKEN_ID = 2**31 - 1  # token ids are C ints (an engine checks its own vocabulary)


def _not_bool(value: object) -> object:
    """JSON's true and false are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


class _Request(BaseModel):
    """Fields every generation request shares. Numbers must be finite, and every sampling
    value is bounded to what the engines' samplers take without overflow or NaN."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, examples=[EXAMPLE_MODEL])
    max_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=0, le=1_000_000)
    min_p: Float | None = Field(None, ge=0, le=1)
    seed: Int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    repeat_penalty: Float | None = Field(None, ge=0.01, le=10)
    ignore_eos: StrictBool | None = None
    n: Int = Field(1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    # Ollama-style lifecycle controls: seconds / "5m" / -1 / 0, and llama-server's autoload.
    keep_alive: str | Float | None = None
    autoload: StrictBool | None = None

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


class TextPart(BaseModel):
    """A content part of a message: text (the only kind served; images are not)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


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
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] = Field(
        description="One prompt (a string, or a list of one)."
    )
    max_tokens: Int | None = Field(16, ge=1, le=MAX_TOKENS)  # OpenAI's default for completions
    echo: StrictBool = False

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
def _token_id(value: object) -> object:
    """A token id: an integer (JSON's 5.0 is one too), never a boolean."""
    if isinstance(value, bool):
        raise ValueError("a token id is an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


TokenId = Annotated[int, BeforeValidator(_token_id), Field(ge=0, le=MAX_TOKEN_ID)]


class EmbeddingRequest(BaseModel):
    """`input`: a string, a list of strings, a token array or a list of token arrays."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, examples=["all-MiniLM-L6-v2"])
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    )  # fmt: skip
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1, le=65536)
    user: str | None = None

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
