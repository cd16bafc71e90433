"""Embedding requests and answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
)

from .fields import MAX_MODEL_NAME, MAX_TOKEN_ID, KeepAlive
from .numbers import Int

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
        | Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        ]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[TokenId], Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1, le=65536)
    user: str | None = None
    # the lifecycle controls of chat and completions (Ollama's `keep_alive` on its embed
    # calls too; llama-server's `autoload`): they were ignored here, an invalid one as well
    keep_alive: KeepAlive = None
    autoload: StrictBool | None = None

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
