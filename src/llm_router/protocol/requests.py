"""Requests of chat and text completions: validated on the way in (a 400 names the field),
converted to the internal request (`to_request()`). Unknown fields are accepted and ignored
(clients send many); only OpenAI's own are ever passed on to a remote target."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, NoReturn

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..errors import BadRequest
from ..types import ChatMessage, GenerationRequest, SamplingParams, TemplateOptions
from .fields import (
    EXAMPLE_MODEL,
    MAX_MODEL_NAME,
    MAX_N,
    MAX_PROMPTS,
    MAX_STOPS,
    MAX_TOKEN_ID,
    MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    SEED_MAX,
    SEED_MIN,
    TOKEN_ID_KEY,
    KeepAlive,
    LogitBias,
    null_is,
    nullable,
    nullable_or_no_limit,
)
from .llama_sampling import llama_sampling
from .messages import ChatMessageIn
from .numbers import Float, Int
from .structured import (
    FunctionCallChoice,
    FunctionList,
    ShapeFields,
    ToolChoice,
    ToolList,
    constraint_of,
    functions_of,
    tools_of,
)

_TOKENS = "Input should be -1 (no limit) or a number of tokens from {least}"
_N_PROBS = f"Input should be a number of alternatives from 0 to {MAX_TOP_LOGPROBS}"


def _invalid(field: str, value: Any, error: PydanticCustomError, title: str) -> NoReturn:
    """Raise a validation error about one field of the body."""
    detail = InitErrorDetails(type=error, loc=(field,), input=value)
    raise ValidationError.from_exception_data(title, [detail])


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` a boolean, as OpenAI's schema says ("yes" was
    taken as true); other options pass (a remote target may know them)."""

    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class _Request(ShapeFields):
    """Fields every generation request shares (with the answer's shape, ShapeFields). Numbers must be finite, and every sampling
    value is bounded to what the engines' samplers take without overflow or NaN."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    # The fewest tokens an answer may ask for: OpenAI's chat refuses 0; its completions take
    # it (an echo with logprobs and no answer scores a prompt).
    least_tokens: ClassVar[int] = 1

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, examples=[EXAMPLE_MODEL])
    max_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    top_k: Int | None = Field(None, ge=0, le=1_000_000)
    min_p: Float | None = Field(None, ge=0, le=1)
    seed: Int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    # OpenAI takes 4; llama-server any number, and its clients (SillyTavern...) send more
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    presence_penalty: Float | None = Field(None, ge=-2, le=2)
    frequency_penalty: Float | None = Field(None, ge=-2, le=2)
    repeat_penalty: Float | None = Field(None, ge=0.01, le=10)
    ignore_eos: StrictBool | None = None
    logit_bias: LogitBias | None = Field(
        None,
        description="Token ids (as strings) mapped to a bias from -100 to 100, added to "
        "their logits before sampling (-100 bans a token, 100 all but forces it). As "
        "llama-server also: a key that is text biases its tokens (GGUF models), a list of "
        "[id or text, bias] pairs, and false for -100.",
    )
    n: Annotated[Int, null_is(1)] = Field(
        1,
        json_schema_extra=nullable,
        ge=1,
        le=MAX_N,
        description="Answers to generate (at most the server's `max_n`, 8 by default).",
    )
    stream: Annotated[StrictBool, null_is(False)] = Field(False, json_schema_extra=nullable)
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # Ollama-style lifecycle controls: seconds / "5m" / -1 / 0, and llama-server's autoload.
    keep_alive: KeepAlive = None
    autoload: StrictBool | None = None

    # llama.cpp's ways of saying "no limit" and "a random seed", which its clients send (its
    # web UI sends `max_tokens: -1` by default, and was refused): `max_tokens` or `n_predict`
    # -1 is no limit (the context's end), `n_predict` is `max_tokens`, and `seed` -1 (or
    # 4294967295, LLAMA_DEFAULT_SEED) is a random seed, which the cache must not take for a
    # fixed one. Field by field, and after: a model validator run before would have every
    # body parsed into Python first (~1 us a request on the hot path, measured).

    @field_validator("max_tokens", "max_completion_tokens", mode="before")
    @classmethod
    def _no_limit(cls, value: Any, info: ValidationInfo) -> Any:
        if type(value) is int and value < cls.least_tokens:
            if value != -1:  # "should be >= 1" said nothing of the -1 it takes
                raise PydanticCustomError("no_limit", _TOKENS.format(least=cls.least_tokens))
            return cls._unlimited(info.field_name or "max_tokens")
        return value

    @classmethod
    def _unlimited(cls, field: str) -> int | None:
        """No limit: what leaving the field out means where that is no limit (chat), else the
        most there is (completions' default is 16); the context ends the answer."""
        return None if cls.model_fields[field].default is None else MAX_TOKENS

    @field_validator("seed")
    @classmethod
    def _random_seed(cls, value: int | None) -> int | None:
        return None if value in (-1, 2**32 - 1) else value

    @model_validator(mode="after")
    def _llama_fields(self) -> Any:
        """llama-server's `n_predict` (`max_tokens`) and `n_probs` (the alternatives reported
        per token: `top_logprobs` on chat, `logprobs` on completions, as llama-server reads
        them); an error names the field (a model validator's errors name none)."""
        extra = self.model_extra
        if not extra:
            return self
        if "n_predict" in extra and "max_tokens" not in self.model_fields_set:
            n = extra["n_predict"]
            if type(n) is not int or not (n == -1 or self.least_tokens <= n <= MAX_TOKENS):
                error = PydanticCustomError("no_limit", _TOKENS.format(least=self.least_tokens))
                _invalid("n_predict", n, error, type(self).__name__)
            self.max_tokens = self._unlimited("max_tokens") if n == -1 else n
        if (n := extra.get("n_probs")) is not None:
            if type(n) is not int or not 0 <= n <= MAX_TOP_LOGPROBS:
                error = PydanticCustomError("n_probs", _N_PROBS)
                _invalid("n_probs", n, error, type(self).__name__)
            if n:
                self._take_n_probs(n)
        return self

    def _take_n_probs(self, n: int) -> None:
        """Report `n` alternatives per token, as llama-server's `n_probs` does."""

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise BadRequest(
                "`stream_options` is only allowed when `stream` is true", param="stream_options"
            )

    def logprobs_asked(self) -> int | None:
        """Alternatives per token the answer reports (0: the chosen token only), or None."""
        return None

    def sampling(self) -> SamplingParams:
        self._check_stream_options()
        given: dict[str, Any] = {
            k: v
            for k, v in {
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "min_p": self.min_p,
                "seed": self.seed,
                "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty,
                "repeat_penalty": self.repeat_penalty,
                "ignore_eos": self.ignore_eos,
            }.items()
            if v is not None
        }
        if extra := self.model_extra:  # llama-server's other samplers (llama_sampling.py)
            given["llama"], last_n = llama_sampling(extra)
            if last_n is not None:
                given["penalty_last_n"] = last_n
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        ids, texts = self._logit_bias()
        return SamplingParams(
            max_tokens=(
                self.max_tokens
                if self.max_completion_tokens is None
                else self.max_completion_tokens
            ),
            stop=tuple(stop),
            logprobs=self.logprobs_asked(),
            logit_bias=ids,
            logit_bias_text=texts,
            **given,
        )

    def _logit_bias(self) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[str, float], ...]]:
        """`logit_bias` as sorted (token id, bias) pairs, and (text, bias) pairs in the
        request's order (its tokens: the engine's tokenizer). An object's key is an id where
        llama-server's strtol reads one (" 28", "+28", "028"), else text; in a list a number
        is an id, a string text. The biases of one id add up, as llama-server applies each
        entry in turn. BadRequest for an id that is negative or past the C ints (in either
        form), a key that is empty or a bias outside [-100, 100] (OpenAI's bounds)."""
        bias = self.logit_bias or {}
        entries = bias.items() if isinstance(bias, dict) else bias
        ids: dict[int, float] = {}
        texts: list[tuple[str, float]] = []
        for key, value in entries:
            if not -100 <= value <= 100:
                raise BadRequest(f"bias {value} is outside [-100, 100]", param="logit_bias")
            if isinstance(key, str) and isinstance(bias, dict) and TOKEN_ID_KEY.fullmatch(key):
                key = int(key)
            if isinstance(key, int):
                if not 0 <= key <= MAX_TOKEN_ID:
                    raise BadRequest(f"{key} is not a token id", param="logit_bias")
                ids[key] = ids.get(key, 0.0) + float(value)
            elif not key:
                raise BadRequest("an empty text is no token", param="logit_bias")
            else:
                texts.append((key, float(value)))
        return tuple(sorted(ids.items())), tuple(texts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: ToolList | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: FunctionList | None = Field(
        None,
        description="Deprecated by OpenAI for `tools`: the answer's one call comes as "
        "`message.function_call`, with `finish_reason` `function_call`.",
    )
    function_call: FunctionCallChoice | None = Field(
        None, description="Deprecated by OpenAI for `tool_choice`."
    )
    logprobs: StrictBool | None = Field(
        None, description="Report each answer token's log-probability."
    )
    top_logprobs: Int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With `logprobs`: also this many likeliest tokens at each position.",
    )
    add_generation_prompt: StrictBool | None = Field(
        None,
        description="llama-server's: false leaves the assistant's header off the prompt (the "
        "model writes it). A chat ending in an assistant's text is continued from it either "
        "way.",
    )
    chat_template_kwargs: Annotated[dict[str, Any], Field(max_length=64)] | None = Field(
        None,
        description="llama-server's: more variables for the model's Jinja chat template "
        "(`enable_thinking`...).",
    )

    def _take_n_probs(self, n: int) -> None:
        # llama-server: `logprobs: true` reads `top_logprobs` (its `n_probs`), else `n_probs`
        if not self.logprobs:
            self.logprobs, self.top_logprobs = True, n

    def logprobs_asked(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def legacy_functions(self) -> bool:
        """Tools offered the deprecated way (`functions`): answered with `function_call`."""
        return bool(self.functions)

    def to_request(self, system_prompt: str | None = None) -> GenerationRequest:
        messages = [m.to_message(i) for i, m in enumerate(self.messages)]
        if system_prompt and not any(m.role == "system" for m in messages):
            messages.insert(0, ChatMessage("system", system_prompt))
        if self.functions and self.tools:
            raise BadRequest(
                "offer tools in `tools` or in the deprecated `functions`, not both",
                param="functions",
            )
        tools = functions_of(self.functions, self.function_call)
        if tools is None:
            tools = tools_of(self.tools, self.tool_choice, self.parallel_tool_calls)
        return GenerationRequest(
            params=self.sampling(),
            messages=tuple(messages),
            constraint=constraint_of(self),
            tools=tools,
            template=self._template_options(),
        )

    def _template_options(self) -> TemplateOptions | None:
        """llama-server's `add_generation_prompt` and `chat_template_kwargs`; None: neither."""
        if self.add_generation_prompt is None and not self.chat_template_kwargs:
            return None
        kwargs = tuple((self.chat_template_kwargs or {}).items())
        return TemplateOptions(self.add_generation_prompt is not False, kwargs)


TokenId = Annotated[Int, Field(ge=0, le=MAX_TOKEN_ID)]
TokenList = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_Request):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenList
        | Annotated[list[TokenList], Field(min_length=1, max_length=MAX_PROMPTS)]
    ) = Field(
        description="A prompt, a list of prompts (one answer each, times `n`), a prompt as "
        "token ids, or a list of those."
    )
    least_tokens: ClassVar[int] = 0
    # OpenAI's default for completions; null means it too (not "no limit"). 0: no answer,
    # `finish_reason` "length" (with `echo` and `logprobs`, the prompt scored).
    max_tokens: Annotated[Int, null_is(16)] = Field(
        16, ge=0, le=MAX_TOKENS, json_schema_extra=nullable_or_no_limit
    )
    echo: Annotated[StrictBool, null_is(False)] = Field(False, json_schema_extra=nullable)
    logprobs: Int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Report each token's log-probability and this many likeliest alternatives.",
    )

    def _take_n_probs(self, n: int) -> None:
        self.logprobs = n  # llama-server reads `logprobs` only when `n_probs` is not given

    def logprobs_asked(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or a list of token ids."""
        p: Any = self.prompt
        if isinstance(p, str) or isinstance(p[0], int):
            return [p]  # one prompt: a text, or token ids
        return list(p)

    def _check_unsupported(self) -> None:
        """OpenAI's `suffix` (text after the insertion) and `best_of` (answers ranked on the
        server) are not done here: refused rather than ignored."""
        extra = self.model_extra or {}
        if extra.get("suffix"):
            raise BadRequest(
                "`suffix` (the text after the insertion point, for filling in the middle) is "
                "not supported: the answer continues `prompt` only, so leave `suffix` out and "
                "give the text before the insertion point as `prompt`",
                param="suffix",
            )
        best_of = extra.get("best_of")
        if best_of is None or best_of == self.n:
            return
        if not isinstance(best_of, int) or isinstance(best_of, bool) or best_of < self.n:
            raise BadRequest("`best_of` must be an integer at least `n`", param="best_of")
        raise BadRequest(
            "`best_of` above `n` is not supported (answers are not ranked on the server): ask "
            "for `n` answers with `logprobs` and rank them",
            param="best_of",
        )

    def to_requests(self) -> list[GenerationRequest]:
        """One request per prompt."""
        self._check_unsupported()
        params = self.sampling()
        constraint = constraint_of(self)
        echo = self.echo and params.logprobs is not None
        return [
            GenerationRequest(
                params=params,
                prompt=p if isinstance(p, str) else None,
                prompt_tokens=None if isinstance(p, str) else tuple(p),
                constraint=constraint,
                echo_logprobs=echo,
            )
            for p in self.prompts()
        ]

    def to_request(self) -> GenerationRequest:
        """The request of the first prompt (callers that take one)."""
        return self.to_requests()[0]
