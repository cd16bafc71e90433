"""A GGUF model's text side for the llama.cpp engine: its vocabulary (tokens, pieces, special
tokens), its chat template, and prompts: a request's tokens, and prompts refused as too long
before they are tokenized. The decode loop (llamacpp.py) asks it for a prompt's tokens once a
request, and for each generated token's piece (cached)."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp as lc

from ..errors import BadRequest, ContextLengthExceeded
from ..types import ChatMessage, GenerationRequest, TemplateOptions
from .base import LoadSpec, no_chat_template
from .chat_template import ChatTemplate, chat_tokens, prompt_text, template_for
from .llamacpp_load import lltokenizer, token_piece, tokenize
from .prompt_bounds import TurnMarkers

__all__ = ["LlamaText"]


class LlamaText:
    """The vocabulary and chat template of a loaded model (`model`, llama.cpp's pointer), and
    the prompts of requests to it, in a context of `context_size` tokens a sequence."""

    def __init__(self, model: Any, spec: LoadSpec, context_size: int) -> None:
        self._model = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.context_size = context_size
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.bos = lc.llama_vocab_bos(self.vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._longest_piece: int | None = None  # bytes of the longest token, once needed
        self._markers: TurnMarkers | None = None  # the chat template's turn markers, once needed
        self._eog: list[int] | None = None
        self.template = self._load_template(spec)

    # -- vocabulary ------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """Tokens of `text`; with `special`, special tokens written in it are parsed."""
        return tokenize(self.vocab, text, add_bos=add_bos, special=special)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """A token's bytes (cached: the decode loop asks once a generated token)."""
        if not special and token in self._pieces:
            return self._pieces[token]
        piece = token_piece(self.vocab, token, special=special)
        if not special:
            self._pieces[token] = piece
        return piece

    def special_piece(self, token: int) -> bytes:
        return self.piece(token, special=True)

    def special_text(self, token: int) -> str:
        """A special token (BOS, EOS) as text; "" for a vocabulary without it (-1)."""
        return self.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    def lltokenizer(self) -> Any:
        """llguidance's tokenizer, built once, on the first constrained request."""
        return lltokenizer(self.vocab, self.eog_tokens())

    # -- chat template ---------------------------------------------------------------------

    def _load_template(self, spec: LoadSpec) -> ChatTemplate | None:
        raw = lc.llama_model_chat_template(self._model, None)
        embedded = raw.decode("utf-8", "replace") if raw else None
        chosen = template_for(
            spec.architecture,
            embedded,
            spec.options.get("chat_template"),
            self._meta("general.finetune"),
        )
        if chosen is None:
            return None
        source, stops = chosen
        bos = self.special_text(self.bos)
        eos = self.special_text(lc.llama_vocab_eos(self.vocab))
        return ChatTemplate(source, bos_token=bos, eos_token=eos, stops=stops)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, 256)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        if self.template is None:
            raise no_chat_template()
        return prompt_text(self.template, messages, adds_bos=self.add_bos, options=options)

    def template_info(self) -> dict[str, str]:
        return {
            "chat_template": self.template.source if self.template else "",
            "bos_token": self.special_text(self.bos),
            "eos_token": self.special_text(lc.llama_vocab_eos(self.vocab)),
        }

    # -- prompts ---------------------------------------------------------------------------

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens of a request's prompt or chat (the template applied)."""
        if request.messages is None:
            return self.tokenize(request.prompt or "", add_bos=self.add_bos)
        if self.template is None:
            raise no_chat_template()
        bos = self.template.bos_token

        def tokenize(text: str, special: bool, first: bool) -> list[int]:
            starts_with_bos = bool(bos) and text.startswith(bos)
            add_bos = first and self.add_bos and not starts_with_bos
            return self.tokenize(text, add_bos=add_bos, special=special)

        return chat_tokens(
            self.template, request.messages, tokenize, self._refuse_rendered, request.template
        )

    def refuse_surely_too_long(self, request: GenerationRequest) -> None:
        """A prompt so long in bytes that even with the vocabulary's longest tokens it would
        not fit is refused before it is tokenized: tokenizing megabytes would stall every
        stream of this model (tokenization runs in the decode loop)."""
        text = request.prompt if request.messages is None else None
        size = (
            len(text.encode())
            if text is not None
            else sum(len(m.content.encode()) for m in request.messages or ())
        )
        self._refuse_at_least(size // self._longest(size), request.messages is not None)

    def _refuse_rendered(self, text: str) -> None:
        """A rendered chat: by its bytes (the template's text counts too), then by its turn
        markers (engines/prompt_bounds.py: a chat of many short messages)."""
        size = len(text.encode())
        self._refuse_at_least(size // self._longest(size), True)
        if self._markers is None:
            self._markers = TurnMarkers(self._marker_texts())
        self._refuse_at_least(self._markers.at_least(text, self.context_size), True)

    def _refuse_at_least(self, at_least: int, chat: bool) -> None:
        if at_least >= self.context_size:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_size} tokens, but the "
                f"prompt has at least {at_least} tokens.",
                param="messages" if chat else "prompt",
            )

    def _longest(self, size: int) -> int:
        """Bytes of the vocabulary's longest token (read once needed: prompts of at most 64
        bytes a context token are tokenized without asking, no token is that long)."""
        if size <= 64 * self.context_size:
            return 64
        if self._longest_piece is None:
            self._longest_piece = max(
                (len(lc.llama_vocab_get_text(self.vocab, t) or b"") for t in range(self.n_vocab)),
                default=1,
            )
        return max(self._longest_piece, 1)

    def _marker_texts(self) -> list[str]:
        """The control tokens the template writes for a one-message chat, as text."""
        assert self.template is not None
        try:
            text = self.template.render([ChatMessage("user", "x")])
        except BadRequest:  # a template that wants more than one message: no markers known
            return []
        tokens = self.tokenize(text, add_bos=False, special=True)
        control = [
            t
            for t in tokens
            if lc.llama_vocab_get_attr(self.vocab, t) & lc.LLAMA_TOKEN_ATTR_CONTROL
        ]
        return [self.piece(t, special=True).decode("utf-8", "replace") for t in control]
