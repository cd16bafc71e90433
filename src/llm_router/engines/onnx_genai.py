"""ONNX text-generation models through onnxruntime-genai: folders with `genai_config.json` (as
its model builder writes them, e.g. by `llm-router convert --to onnx`).

Tokenization is `tokenizers` on the folder's `tokenizer.json` (its post-processor adds BOS where
the model wants one; genai's own tokenizer does not). Each sequence has its own genai Generator
(its own KV buffer); every `step()` appends one token to each: the prompt on its first step.
Sampling is the project's own (`Sampler`) on the logits genai hands out, so parameters mean
what they mean on the other engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og
from tokenizers import Tokenizer

from ..errors import BadRequest, ModelLoadFailed
from ..formats.hf import read_chat_template, read_json
from ..types import ChatMessage, GenerationRequest, TemplateOptions
from .base import LoadSpec, check_token_ids, cpu_cores, no_chat_template
from .chat_template import ChatTemplate, chat_tokens, prompt_text, template_for
from .sequences import Events
from .token_seqs import TokenSeq, TokenSequences
from .vocab import plain_pieces, plain_tokens

__all__ = ["OnnxGenaiEngine"]

DEFAULT_CONTEXT = 2048
MIN_MAX_LENGTH = 512  # genai misbehaves with a smaller KV buffer (measured-here.md)
DEFAULT_PARALLEL = 4


def _token_text(value: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


class OnnxGenaiEngine:
    """Engine for onnxruntime-genai folders. Options read: `threads`, `parallel`,
    `context_size` (KV buffer per sequence; default min(model, 2048)), `chat_template`; and
    `spec.finetune`, as the transformers engine. A thread change reopens the model once no
    sequence runs (genai fixes threads per session)."""

    def __init__(self, spec: LoadSpec) -> None:
        folder = Path(spec.path)
        if not (folder / "genai_config.json").is_file():
            raise ModelLoadFailed(
                f"{folder}: no genai_config.json (not an onnxruntime-genai folder)"
            )
        opts = spec.options
        self._folder = folder
        self.threads = int(opts.get("threads") or cpu_cores())
        self._model = self._open(self.threads)
        self._pending_threads: int | None = None
        genai = read_json(folder / "genai_config.json").get("model") or {}
        trained = int(genai.get("context_length") or DEFAULT_CONTEXT)
        self.context_size = min(
            int(opts.get("context_size") or min(trained, DEFAULT_CONTEXT)), trained
        )
        self.parallel = int(opts.get("parallel") or DEFAULT_PARALLEL)
        try:
            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise ModelLoadFailed(f"{folder / 'tokenizer.json'}: {exc}") from exc
        eos = genai.get("eos_token_id")
        self._eos = set(eos) if isinstance(eos, list) else {int(eos)} if eos is not None else set()
        self._template, self._stops = self._load_template(spec, str(genai.get("type") or ""))
        # genai raises RuntimeError or its own errors: any Exception fails the one sequence.
        self._seqs = TokenSequences(
            self.parallel,
            "onnxruntime-genai",
            (Exception,),
            eos=self._eos,
            context_size=self.context_size,
            decode=self._decode,
            transcript_stops=self._stops,
            tokenizer_json=self._tok.to_str,
        )
        self._stats = {"prompt_tokens_evaluated": 0}

    def _open(self, threads: int) -> Any:
        if hasattr(og, "disable_telemetry_events"):
            og.disable_telemetry_events()
        try:
            config = og.Config(str(self._folder))
            config.clear_providers()
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            return og.Model(config)
        except Exception as exc:  # genai raises RuntimeError or its own errors
            raise ModelLoadFailed(
                f"onnxruntime-genai could not load {self._folder}: {exc}"
            ) from exc

    def _load_template(
        self, spec: LoadSpec, arch: str
    ) -> tuple[ChatTemplate | None, tuple[str, ...]]:
        chosen = template_for(
            spec.architecture or arch,
            read_chat_template(self._folder),
            spec.options.get("chat_template"),
            spec.finetune,
        )
        if chosen is None:
            return None, ()
        config_file = self._folder / "tokenizer_config.json"
        config = read_json(config_file) if config_file.is_file() else {}
        source, stops = chosen
        template = ChatTemplate(
            source,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            stops=stops,
        )
        return template, stops

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "engine": "onnxruntime-genai",
            "task": "generate",
            "threads": self.threads,
            "context_size": self.context_size,
            "parallel": self.parallel,
            "chat_template": self._template is not None,
            **self._seqs.counts(),
            **self._stats,
            "tokens_generated": self._seqs.tokens_generated,
        }

    def set_threads(self, threads: int) -> None:
        self._pending_threads = threads if threads != self.threads else None
        self._reopen_if_idle()

    @property
    def busy(self) -> bool:
        return self._seqs.busy

    def submit(self, seq: int, request: GenerationRequest) -> None:
        self._seqs.submit(seq, request, self._prompt_tokens(request))

    def cancel(self, seq: int) -> None:
        self._seqs.cancel(seq)
        self._reopen_if_idle()

    def step(self) -> Events:
        self._reopen_if_idle()
        return self._seqs.step(self._advance)

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        raise BadRequest("this model makes text, not embeddings", param="model")

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return self.embed(inputs)[1]  # refused, as `embed` is

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return plain_tokens(self._tok, text, add_special=add_special, parse_special=parse_special)

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        return plain_pieces(self._tok, tokens)

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        if self._template is None:
            raise no_chat_template()
        bos = self._tok.token_to_id(self._template.bos_token) if self._template.bos_token else None
        added = self.token_ids("", add_special=True, parse_special=True)
        adds_bos = bos is not None and added[:1] == [bos]
        return prompt_text(self._template, messages, adds_bos=adds_bos, options=options)

    def template_info(self) -> dict[str, str]:
        t = self._template
        return {
            "chat_template": t.source if t else "",
            "bos_token": t.bos_token if t else "",
            "eos_token": t.eos_token if t else "",
        }

    def close(self) -> None:
        self._seqs.clear()
        self._model = None

    # -- internals -------------------------------------------------------------------------

    def _reopen_if_idle(self) -> None:
        if self._pending_threads is not None and not self._seqs.running:
            self._model = self._open(self._pending_threads)
            self.threads, self._pending_threads = self._pending_threads, None

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt_tokens is not None:
            tokens = list(request.prompt_tokens)
            check_token_ids(tokens, self._tok.get_vocab_size(), param="prompt")
            return tokens
        if request.messages is None:
            return list(self._tok.encode(request.prompt or "").ids)
        if self._template is None:
            raise no_chat_template()
        return chat_tokens(
            self._template, request.messages, self._tokenize, options=request.template
        )

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        self._tok.encode_special_tokens = not special  # special tokens written as plain text
        try:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        finally:
            self._tok.encode_special_tokens = False

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def _advance(self, s: TokenSeq, events: Events) -> None:
        """Append one token to `s` (its whole prompt the first time) through its genai
        Generator, kept in `s.state` while it runs; blocks for it."""
        if self._seqs.asked_none(s, events):
            return
        if s.state is None:
            params = og.GeneratorParams(self._model)
            budget = len(s.prompt) + (s.sampler.params.max_tokens or self.context_size)
            max_length = max(min(budget, self.context_size), MIN_MAX_LENGTH)
            params.set_search_options(max_length=max_length)
            generator = s.state = og.Generator(self._model, params)
            generator.append_tokens(s.prompt)
            self._stats["prompt_tokens_evaluated"] += len(s.prompt)
        else:
            generator = s.state
            generator.append_tokens(s.generated[-1:])
        token = self._seqs.pick(s, np.asarray(generator.get_logits()))
        if not self._seqs.take(s, token, events):
            s.state = None
