"""Chat templates: the Jinja template a model file carries, or the one known for its
architecture when the file has none (the bundled Gemma 3 base carries none; llama.cpp's own
fallbacks, llama-2 or ChatML, are wrong for it)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import BadRequest, ModelLoadFailed
from ..types import ChatMessage, TemplateOptions

__all__ = [
    "KNOWN_TEMPLATES",
    "TURN_END_TOKENS",
    "ChatTemplate",
    "Tokenize",
    "chat_tokens",
    "prompt_text",
    "template_for",
]

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# For base (not instruction-tuned) models: a plain transcript, which they continue sensibly
# ("Assistant: The capital of France is Paris."), where a turn format they were never trained
# on makes them babble. Generation stops before the model writes the next "User:" turn.
TRANSCRIPT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
TRANSCRIPT_STOPS = ("\nUser:", "\nSystem:")
# The tokens that end a turn in the known templates: a model stops on them as on its EOS
# (llama.cpp counts them end-of-generation; an HF folder converted from a GGUF names only EOS).
TURN_END_TOKENS = ("<end_of_turn>", "<|im_end|>")
INSTRUCT_TAGS = ("it", "instruct", "chat")

# Architecture (GGUF `general.architecture`) -> template, for instruction-tuned files that
# carry none.
KNOWN_TEMPLATES: dict[str, str] = {
    "gemma": GEMMA_TEMPLATE,
    "gemma2": GEMMA_TEMPLATE,
    "gemma3": GEMMA_TEMPLATE,
    "gemma3n": GEMMA_TEMPLATE,
    "qwen2": CHATML_TEMPLATE,
}


def _raise(message: str) -> NoReturn:
    raise BadRequest(f"chat template refused the conversation: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled template. `render` is pure; it raises BadRequest for a conversation the
    template refuses (e.g. roles out of order) and never leaks a Jinja error."""

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", stops: tuple[str, ...] = ()
    ) -> None:
        # As transformers compiles chat templates: the same sandbox, options and extension.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ModelLoadFailed(f"the chat template does not compile: {exc}") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.stops = stops

    def render(
        self, messages: Sequence[ChatMessage], options: TemplateOptions | None = None
    ) -> str:
        """The prompt for `messages`, the generation prompt added (unless `options` say not).
        A chat ending with an assistant message (with text, no tool calls) is continued from
        it, as llama-server and Ollama do (a prefill): the turns before it with the generation
        prompt, then its text, with no end of turn."""
        last = messages[-1] if len(messages) > 1 else None  # a chat of one: as it is
        if last is not None and last.role == "assistant" and last.content and not last.tool_calls:
            return self._render(messages[:-1], options, True) + last.content
        return self._render(messages, options, options is None or options.add_generation_prompt)

    def _render(
        self, messages: Sequence[ChatMessage], options: TemplateOptions | None, generation: bool
    ) -> str:
        variables: dict[str, Any] = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        if options is not None:  # llama-server's chat_template_kwargs, over the tokens' names
            variables.update(options.kwargs)
        try:
            return self._template.render(
                variables,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=generation,
            )
        except (TemplateError, TypeError, ValueError) as exc:
            raise BadRequest(f"cannot apply the chat template: {exc}", param="messages") from None

    def render_parts(
        self, messages: Sequence[ChatMessage], options: TemplateOptions | None = None
    ) -> list[tuple[str, bool]]:
        """The rendered prompt in pieces: `(text, True)` where a message's content was placed,
        `(text, False)` for the template's own text, so that an engine can tokenize only the
        latter with special tokens parsed (`<|im_end|>` typed in a message is text, not a
        turn end). Joined, the pieces are `render(messages)`; when the template changes the
        contents in a way other than trimming them, one piece of template text is returned
        (the caller then refuses contents that hold special tokens)."""
        whole = self.render(messages, options)
        nonce = secrets.token_hex(6)
        opens = [f"\ue000{nonce}{i}\ue001" for i in range(len(messages))]
        closes = [f"\ue002{nonce}{i}\ue003" for i in range(len(messages))]
        marked = self.render(
            [ChatMessage(m.role, opens[i] + m.content + closes[i]) for i, m in enumerate(messages)],
            options,
        )
        pieces: list[tuple[str, bool]] = []
        rest = marked
        for i in range(len(messages)):
            before, found, after = rest.partition(opens[i])
            content, found2, rest = after.partition(closes[i])
            if not (found and found2):
                continue  # this message is not in the prompt (a template may leave one out)
            pieces += [(before, False), (content, True)]
        pieces.append((rest, False))
        for trim in (False, True):
            tried = [(t.strip() if trim and content else t, content) for t, content in pieces]
            if "".join(t for t, _ in tried) == whole:
                return [(t, c) for t, c in tried if t]
        return [(whole, False)]


Tokenize = Callable[[str, bool, bool], list[int]]
"""(text, parse special tokens, first piece of the prompt) -> tokens."""


def chat_tokens(
    template: ChatTemplate,
    messages: Sequence[ChatMessage],
    tokenize: Tokenize,
    check: Callable[[str], None] | None = None,
    options: TemplateOptions | None = None,
) -> list[int]:
    """The tokens of a chat rendered by `template`, special tokens parsed only in the
    template's own text. An ordinary chat is tokenized whole, as the template renders it; one
    whose messages hold special-token text (a forged `<|im_end|>` turn, say) piece by piece
    (`render_parts`), its contents as plain text. Raises BadRequest when the pieces cannot be
    told apart. `check(text)` sees the rendered chat before anything is tokenized (and may
    refuse it: engines/prompt_bounds.py)."""
    text = template.render(messages, options)
    if check is not None:
        check(text)
    if not any(
        tokenize(m.content, True, False) != tokenize(m.content, False, False) for m in messages
    ):
        return tokenize(text, True, True)
    parts = template.render_parts(messages, options)
    if len(parts) == 1:
        raise BadRequest(
            "a message contains a special token of this model's chat format", param="messages"
        )
    return [
        t for i, (piece, content) in enumerate(parts) for t in tokenize(piece, not content, i == 0)
    ]


def prompt_text(
    template: ChatTemplate,
    messages: Sequence[ChatMessage],
    *,
    adds_bos: bool,
    options: TemplateOptions | None = None,
) -> str:
    """The prompt `template` renders for `messages`, as llama-server's /apply-template gives
    it: without its leading BOS text when the tokenizer adds a BOS itself (`adds_bos`), so
    that tokenizing it with special tokens added gives one BOS, as the chat does."""
    text = template.render(messages, options)
    bos = template.bos_token
    return text[len(bos) :] if adds_bos and bos and text.startswith(bos) else text


def template_for(
    architecture: str | None, embedded: str | None, override: str | None, finetune: str | None
) -> tuple[str, tuple[str, ...]] | None:
    """The template to use and the stop strings it implies: the configured override, else the
    file's, else for an instruction-tuned file (`general.finetune`) the one known for its
    architecture, else for a base model the plain transcript. None: chat is refused."""
    if override or embedded:
        return (override or embedded or ""), ()
    tuned = any(tag in (finetune or "").lower().replace("-", " ").split() for tag in INSTRUCT_TAGS)
    if tuned:
        known = KNOWN_TEMPLATES.get(architecture or "")
        return (known, ()) if known else None
    return TRANSCRIPT_TEMPLATE, TRANSCRIPT_STOPS
