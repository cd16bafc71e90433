"""Internal value types shared by every layer: what a generation asks for and what it yields.

They are plain frozen dataclasses, with no pydantic and no HTTP; worker/protocol.py turns them
into the worker channel's JSON and back."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_ORDER",
    "LLAMA_DEFAULTS",
    "Answers",
    "ChatMessage",
    "Constraint",
    "Embeddings",
    "FinishReason",
    "Finished",
    "Function",
    "GenerationEvent",
    "GenerationRequest",
    "LlamaSampling",
    "MessageFields",
    "PromptLogprobs",
    "SamplingParams",
    "TemplateOptions",
    "TextDelta",
    "TokenLogprob",
    "ToolCall",
    "Tools",
    "Usage",
]

# Local engines end with "stop" or "length"; a remote target may also say why it stopped with
# the others (OpenAI's values), passed on as they are.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


@dataclass(frozen=True, eq=False, slots=True)
class Answers:
    """The answers one request asks for side by side (its `n`, times a completion's prompts),
    each a generation holding a model slot of its own: how many, and this object, which they
    share (compared by identity), so a model's queue tells a waiter's siblings from other
    requests (lifecycle/leases.py)."""

    count: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call an assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A turn. An assistant's turn may hold `tool_calls`; a `tool` turn answers the call
    `tool_call_id`."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateOptions:
    """How a chat template renders a chat besides its messages, as llama-server takes them:
    `add_generation_prompt` false leaves the assistant's header off (the model writes it),
    and `kwargs` are more variables for the Jinja template (`enable_thinking`...), JSON
    values. A chat ending in an assistant's text is continued from it either way."""

    add_generation_prompt: bool = True
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Constraint:
    """What the generated text must match. `kind` "json": `source` is a JSON schema (as JSON
    text); "regex"; "lark": a Lark grammar (llguidance's dialect). `strict`: a schema the
    compiler cannot honour in full is refused, not read leniently. `param`: the request field
    it came from, named by a 400."""

    kind: Literal["json", "regex", "lark"]
    source: str
    strict: bool = False
    param: str = "response_format"


@dataclass(frozen=True, slots=True)
class Function:
    """A tool the model may call: `parameters` is its arguments' JSON schema, as JSON text."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Tools:
    """The tools a chat request offers. `choice`: "auto", "required", "none", or the name of
    the one function to call; `parallel`: more than one call in an answer."""

    functions: tuple[Function, ...]
    choice: str = "auto"
    parallel: bool = True


# llama-server's sampler chain, in its default order (common/common.h); a request's `samplers`
# gives another order, or fewer of them
DEFAULT_ORDER = (
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
)


@dataclass(frozen=True, slots=True)
class LlamaSampling:
    """llama.cpp's samplers beyond the common ones, as llama-server takes them in a request
    (its field names and defaults; `dry_penalty_last_n` -1: the whole context, as its older
    versions read it). Each default switches its sampler off. Only the llama.cpp engine has
    them: the others refuse a request that sets one (they would sample otherwise)."""

    typical_p: float = 1.0
    top_n_sigma: float = -1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    mirostat: int = 0  # 1: Mirostat, 2: Mirostat 2.0 (then only temperature applies before it)
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    min_keep: int = 0
    samplers: tuple[str, ...] | None = None  # the chain's order (names of DEFAULT_ORDER)

    @property
    def default_order(self) -> bool:
        """Whether the chain is llama-server's default (no `samplers`, or those in order)."""
        return self.samplers is None or self.samplers == DEFAULT_ORDER

    @property
    def dry(self) -> bool:
        return self.dry_multiplier != 0 and self.dry_base >= 1 and self.dry_penalty_last_n != 0

    def set_fields(self) -> list[str]:
        """The fields that differ from their defaults (what another engine would ignore)."""
        default = LLAMA_DEFAULTS
        return [f for f in self.__slots__ if getattr(self, f) != getattr(default, f)]


LLAMA_DEFAULTS = LlamaSampling()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters of one sequence. `temperature == 0` means greedy; `top_k == 0`,
    `top_p == 1` and `min_p == 0` switch those filters off; `seed=None` draws a fresh seed.
    Defaults are llama.cpp's (as llama-server applies to fields a request leaves out)."""

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    # llama-server's `repeat_last_n`: how many of the last tokens (the prompt's, then the
    # answer's) the penalties count; 0 switches them off, -1 is the whole context
    penalty_last_n: int = 64
    ignore_eos: bool = False  # llama.cpp's extension: never end on end-of-generation tokens
    # Log-probabilities of each generated token and of this many likeliest alternatives
    # (None: none at all; 0: the chosen token's only).
    logprobs: int | None = None
    # OpenAI's logit_bias: (token id, added to its logit) pairs, applied to the logits before
    # anything else, as llama.cpp's chain applies its logit-bias sampler first.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # llama-server's text keys of `logit_bias`: each text's tokens get its bias (the model's
    # tokenizer, no special tokens; GGUF models only), after the ids' biases
    logit_bias_text: tuple[tuple[str, float], ...] = ()
    llama: LlamaSampling | None = None  # llama.cpp's other samplers, when a request sets any

    def seed32(self) -> int:
        """The seed as the 32 bits the samplers take, a fresh one when `seed` is None. A
        request may give any 64-bit seed: one that fits in 32 bits (signed or not) is its low
        32 bits, as llama-server reads it; a wider one its two 32-bit halves xor-ed, so that
        seeds differing only in their high bits still differ. Never 2^32 - 1, which llama.cpp
        takes for "draw a random seed" (LLAMA_DEFAULT_SEED)."""
        if self.seed is None:
            return random.getrandbits(32)
        if -(2**31) <= self.seed < 2**32:
            bits = self.seed & 0xFFFFFFFF
        else:
            wide = self.seed & 0xFFFFFFFFFFFFFFFF
            bits = (wide >> 32) ^ (wide & 0xFFFFFFFF)
        return bits % 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Exactly one of `messages` (chat) and `prompt` (plain completion) is set. `constraint`:
    the answer's shape; `tools`: what a chat may call (tool_calls.prepare turns them into
    messages and a constraint before a local engine sees the request)."""

    params: SamplingParams = field(default_factory=SamplingParams)
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    constraint: Constraint | None = None
    tools: Tools | None = None
    prompt_tokens: tuple[int, ...] | None = None  # a completion's prompt given as token ids
    echo_logprobs: bool = False  # also the prompt tokens' log-probabilities (PromptLogprobs)
    template: TemplateOptions | None = None  # a chat's, when not the defaults


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log-probability (natural log) under the distribution it was sampled from
    (after temperature, before truncation), and the likeliest alternatives' (`top`, most
    likely first). `logprob` is None for a prompt's first token (nothing predicts it)."""

    token: bytes
    logprob: float | None
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text (whole UTF-8 characters, stop strings already cut), and, when
    asked for, the log-probabilities of the tokens it completes."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The prompt's tokens and their log-probabilities (a completion's `echo` with
    `logprobs`): sent once, before the first generated text."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class MessageFields:
    """Fields of the assistant's message other than its text, from a remote target (e.g.
    `tool_calls`, `refusal`, `reasoning_content`): a streamed delta's, or the whole message's
    when not streaming. Passed on to the client as the upstream sent them."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    stop: str | None = None  # the stop string that ended it (finish_reason "stop"), if one did


# What a generation yields, in order: text and message fields, then one Finished.
GenerationEvent = TextDelta | MessageFields | PromptLogprobs | Finished


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order, and the input tokens they took. `window`: the
    most tokens the model reads of one input, a longer one being cut to it (so an input whose
    count is the window may have been cut); None when unknown (a remote server)."""

    vectors: list[list[float]]
    prompt_tokens: int
    window: int | None = None
