"""HF models (safetensors folders, bare safetensors or PyTorch checkpoints beside a config.json)
through transformers on CPU, and sentence-transformers folders for embeddings.

Each sequence keeps its own KV cache (`past_key_values`); every `step()` runs one forward per
running sequence: the whole prompt on its first step, then its last token. No batching across
sequences yet: simple, and each sequence's greedy output stays identical to running it alone
(transformers' own continuous batching reached 126 tok/s aggregate over 16 requests in bf16
here, against ~25 tok/s for one stream: the next step if this engine needs throughput)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..errors import BadRequest
from ..types import ChatMessage, GenerationRequest, TemplateOptions
from .base import LoadSpec, check_input_ids, check_token_ids, cpu_cores, no_chat_template
from .chat_template import TURN_END_TOKENS, ChatTemplate, chat_tokens, prompt_text, template_for
from .detok import decoded_pieces
from .hf_load import load
from .pooling import embed_in_batches, read_pooling
from .sequences import Events
from .token_seqs import TokenSeq, TokenSequences

__all__ = ["TransformersEngine"]

DEFAULT_PARALLEL = 4
DEFAULT_CONTEXT = 2048  # a text model's context unless configured: min(model's, this)
EMBED_BATCH = 32


class TransformersEngine:
    """Engine for HF models. Options read: `dtype` (auto | float32 | bfloat16 | float16),
    `threads`, `parallel` (sequences decoded in turn), `context_size`, `chat_template`,
    `allow_pickle` (load PyTorch checkpoints that need unpickling). `spec.finetune` (e.g.
    "instruct") picks a known chat template when the files carry none."""

    def __init__(self, spec: LoadSpec) -> None:
        opts = spec.options
        self.threads = int(opts.get("threads") or cpu_cores())
        torch.set_num_threads(self.threads)
        loaded = load(spec.path, opts)
        self._model, self._tok, self.task = loaded.model, loaded.tokenizer, loaded.task
        cfg = self._model.config
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        asked = opts.get("context_size")
        if not asked and limit and self.task != "embed":  # as llama.cpp's: min(model's, 2048)
            asked = DEFAULT_CONTEXT  # (it took SmolLM2's 8192, and its estimate 2.6 GiB)
        self.context_size: int | None = min(asked, limit) if asked and limit else asked or limit
        self.parallel = int(opts.get("parallel") or DEFAULT_PARALLEL)
        self._stats = {"forward_calls": 0, "prompt_tokens_evaluated": 0}
        self._eos: set[int] = set()
        self._stops: tuple[str, ...] = ()
        if self.task == "embed":
            self._pooling = read_pooling(loaded.folder)
        else:
            self._eos = self._eos_ids()
            self._template, self._stops = self._load_template(spec)
            accepts = inspect.signature(self._model.forward).parameters
            self._keep_logits = "logits_to_keep" in accepts
            # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns).
            self._cache_arg = "cache" if "cache" in accepts else "past_key_values"
        self._seqs = TokenSequences(
            self.parallel,
            "transformers",
            (RuntimeError, ValueError, IndexError),
            eos=self._eos,
            context_size=self.context_size,
            decode=self._decode,
            transcript_stops=self._stops,
            tokenizer_json=self._tokenizer_json,
        )

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "engine": "transformers",
            "task": self.task,
            "dtype": str(self._model.dtype).removeprefix("torch."),
            # an embedding model's: where its inputs are cut (the pooling config's length)
            "context_size": self._embed_limit() if self.task == "embed" else self.context_size,
            "parallel": self.parallel,
            "threads": self.threads,
            "chat_template": self.task == "generate" and self._template is not None,
            **self._seqs.counts(),
            **self._stats,
            "tokens_generated": self._seqs.tokens_generated,
        }

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        torch.set_num_threads(threads)

    @property
    def busy(self) -> bool:
        return self._seqs.busy

    def submit(self, seq: int, request: GenerationRequest) -> None:
        if self.task != "generate":
            raise BadRequest("this model only makes embeddings", param="model")
        self._seqs.submit(seq, request, self._prompt_tokens(request))

    def cancel(self, seq: int) -> None:
        self._seqs.cancel(seq)

    def step(self) -> Events:
        return self._seqs.step(self._advance)

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        if self.task != "embed":
            raise BadRequest("this model makes text, not embeddings", param="model")
        return embed_in_batches(inputs, EMBED_BATCH, self._embed_batch)

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        if self.task != "embed":
            raise BadRequest("this model makes text, not embeddings", param="model")
        limit = self._embed_limit()
        if inputs and isinstance(inputs[0], str):
            ids = self._tok(list(inputs), truncation=True, max_length=limit)["input_ids"]
            return sum(len(row) for row in ids)
        return sum(len(row[:limit]) for row in inputs)

    def _embed_batch(self, batch: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        ids, mask = self._encode(batch)
        with torch.inference_mode():
            out = self._model(input_ids=ids, attention_mask=mask)
        states = out.last_hidden_state.float().numpy()
        return self._pooling(states, mask.numpy().astype(np.int64)).tolist(), int(mask.sum())

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        encoded = self._tok(
            text, add_special_tokens=add_special, split_special_tokens=not parse_special
        )
        return list(encoded["input_ids"])

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        check_token_ids(tokens, len(self._tok))
        return decoded_pieces(lambda ids: str(self._tok.decode(ids)), tokens)

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        if self.task != "generate":
            raise BadRequest("this model makes embeddings and has no chat template", param="model")
        if self._template is None:
            raise no_chat_template()
        bos = self._tok.bos_token_id
        added = self.token_ids("", add_special=True, parse_special=True)
        adds_bos = bos is not None and added[:1] == [bos]
        return prompt_text(self._chat_template(), messages, adds_bos=adds_bos, options=options)

    def template_info(self) -> dict[str, str]:
        chat = self.task == "generate" and self._template is not None
        return {
            "chat_template": self._chat_template().source if chat else "",
            "bos_token": str(self._tok.bos_token or ""),
            "eos_token": str(self._tok.eos_token or ""),
        }

    def close(self) -> None:
        self._seqs.clear()
        self._model = None

    # -- prompt ----------------------------------------------------------------------------

    def _tokenizer_json(self) -> str:
        return str(self._tok.backend_tokenizer.to_str())

    def _eos_ids(self) -> set[int]:
        found: set[int] = set()
        gen = getattr(self._model, "generation_config", None)
        for source in (
            getattr(gen, "eos_token_id", None),
            self._model.config.eos_token_id,
            self._tok.eos_token_id,
        ):
            if isinstance(source, int):
                found.add(source)
            elif isinstance(source, list | tuple):
                found.update(int(t) for t in source)
        vocab = self._tok.get_vocab()
        found.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
        return found

    def _load_template(self, spec: LoadSpec) -> tuple[ChatTemplate | str | None, tuple[str, ...]]:
        """The configured template, else the tokenizer's (rendered by transformers), else one
        known for the architecture or the plain transcript (`template_for`)."""
        override = spec.options.get("chat_template")
        if not override and getattr(self._tok, "chat_template", None):
            return "tokenizer", ()
        chosen = template_for(
            spec.architecture or self._model.config.model_type, None, override, spec.finetune
        )
        if chosen is None:
            return None, ()
        source, stops = chosen
        bos, eos = self._tok.bos_token or "", self._tok.eos_token or ""
        return ChatTemplate(source, bos_token=bos, eos_token=eos, stops=stops), stops

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt_tokens is not None:
            tokens = list(request.prompt_tokens)
            check_token_ids(tokens, len(self._tok), param="prompt")
            return tokens
        if request.messages is None:
            return list(self._tok(request.prompt or "")["input_ids"])
        if self._template is None:
            raise no_chat_template()
        # The template writes any BOS itself, as transformers' own apply_chat_template assumes.
        return chat_tokens(
            self._chat_template(), request.messages, self._tokenize, options=request.template
        )

    def _chat_template(self) -> ChatTemplate:
        if isinstance(self._template, ChatTemplate):
            return self._template
        # The tokenizer's own template, compiled here as every other (transformers renders
        # it the same way: a sandboxed Jinja environment with the same helpers).
        source = str(self._tok.chat_template)
        self._template = ChatTemplate(
            source, bos_token=self._tok.bos_token or "", eos_token=self._tok.eos_token or ""
        )
        return self._template

    def _tokenize(self, text: str, special: bool, first: bool) -> list[int]:
        encoded = self._tok(text, add_special_tokens=False, split_special_tokens=not special)
        return list(encoded["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def _embed_limit(self) -> int | None:
        """Where embedding inputs are cut: the pooling config's length, else the context."""
        return self._pooling.max_length or self.context_size

    def _encode(self, inputs: list[str] | list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self._embed_limit()
        if inputs and isinstance(inputs[0], str):
            enc = self._tok(
                list(inputs), padding=True, truncation=True, max_length=limit, return_tensors="pt"
            )
            return enc["input_ids"], enc["attention_mask"]
        rows = [list(map(int, r))[:limit] for r in inputs]
        n_vocab = len(self._tok)
        check_input_ids(rows, n_vocab)
        width = max((len(r) for r in rows), default=0)
        pad = int(self._tok.pad_token_id or 0)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask

    # -- decoding --------------------------------------------------------------------------

    def _advance(self, s: TokenSeq, events: Events) -> None:
        """One forward of `s` (its whole prompt the first time, its KV cache in `s.state`
        then); blocks for it."""
        if self._seqs.asked_none(s, events):
            return
        first = s.state is None
        feed = s.prompt if first else s.generated[-1:]
        kwargs: dict[str, Any] = {"use_cache": True, self._cache_arg: s.state}
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([feed]), **kwargs)
        s.state = getattr(out, self._cache_arg)
        self._stats["forward_calls"] += 1
        if first:
            self._stats["prompt_tokens_evaluated"] += len(feed)
        token = self._seqs.pick(s, out.logits[0, -1].float().numpy())
        self._seqs.take(s, token, events)
