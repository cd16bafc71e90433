"""llama-server's own endpoints, in its shapes: `POST /tokenize`, `/detokenize`,
`/apply-template` and `GET /props`. As in llama-server's router mode, a request names its model
(`model`, a local model's id or alias); the answer is that model's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .embeddings import TokenId
from .fields import EXAMPLE_MODEL, MAX_MODEL_NAME
from .requests import ChatCompletionRequest

__all__ = [
    "ApplyTemplateRequest",
    "ApplyTemplateResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "GenerationSettings",
    "Modalities",
    "ModelProps",
    "RouterProps",
    "TokenPiece",
    "TokenizeRequest",
    "TokenizeResponse",
]


# The most text (characters) and tokens one request may ask about: the work runs in the model's
# worker between decode steps, so this bounds how long its streams wait (measured here with
# llama.cpp: ~0.25 s to tokenize a million characters, ~0.5 s more for their pieces) and how
# big the answer grows.
MAX_TOKENIZE = 1_000_000


class _ModelRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_MODEL_NAME,
        examples=[EXAMPLE_MODEL],
        description="Left out: the server's `default_model` (with `serve -m`, its one model).",
    )
    autoload: StrictBool | None = Field(
        None, description="false: answer only if the model is loaded (never load it for this)."
    )


class TokenizeRequest(_ModelRequest):
    content: str = Field(max_length=MAX_TOKENIZE, description="The text to tokenize.")
    add_special: StrictBool = Field(
        False, description="Add the special tokens the model's tokenizer adds (BOS...)."
    )
    parse_special: StrictBool = Field(
        True, description="Read special tokens written in the text as special tokens."
    )
    with_pieces: StrictBool = Field(False, description="Give each token's text with its id.")


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int] = Field(
        description="The token's text; its bytes when they are not valid UTF-8 alone."
    )


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(_ModelRequest):
    tokens: list[TokenId] = Field(
        max_length=MAX_TOKENIZE, description="Token ids of the model's vocabulary."
    )


class DetokenizeResponse(BaseModel):
    content: str


class ApplyTemplateRequest(ChatCompletionRequest):
    """A chat completion request: its messages, with the configured system prompt and any
    tools, rendered as the model's chat template renders them for a generation."""

    model: str | None = Field(  # type: ignore[assignment]
        None,
        min_length=1,
        max_length=MAX_MODEL_NAME,
        description="Left out: the server's `default_model` (with `serve -m`, its one model).",
    )


class ApplyTemplateResponse(BaseModel):
    prompt: str = Field(
        description="The rendered prompt, generation prompt included; tokenized with "
        "`add_special`, the tokens a chat completion evaluates."
    )


class GenerationSettings(BaseModel):
    n_ctx: int = Field(description="Context per slot, in tokens (0: not one model).")
    params: dict[str, Any] = Field(description="Sampling defaults for fields a request omits.")


class Modalities(BaseModel):
    vision: bool = False
    video: bool = False
    audio: bool = False


class ModelProps(BaseModel):
    """llama-server's `/props` for one model, without `model_path` (no file system layout is
    shown to clients)."""

    default_generation_settings: GenerationSettings
    total_slots: int
    model_alias: str
    modalities: Modalities = Field(default_factory=Modalities)
    chat_template: str
    bos_token: str
    eos_token: str
    build_info: str
    is_sleeping: bool = False
    endpoint_slots: bool = False
    endpoint_props: bool = False
    endpoint_metrics: bool = True


class RouterProps(BaseModel):
    """llama-server's router-mode `/props` without `?model=`: the router's own."""

    role: Literal["router"] = "router"
    max_instances: int
    models_autoload: bool
    model_alias: str = "llm-router"
    default_generation_settings: GenerationSettings
    build_info: str
