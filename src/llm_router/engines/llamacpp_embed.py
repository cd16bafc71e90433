"""GGUF embedding models (BERT-style encoders, a `pooling_type` in the header) through llama.cpp,
and `open_gguf`, the llama.cpp entry of the engine table, which picks this engine or the
generative one by the file's header.

The context is made with `embeddings = true` and the model's own pooling; inputs are packed
several sequences to a batch (every token of a sequence in one micro-batch, as a bidirectional
encoder needs) and each sequence's pooled vector is L2-normalized, as llama-server and
sentence-transformers give them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import llama_cpp as lc

from ..errors import BadRequest, EngineError, InvalidModelFile, ModelLoadFailed
from ..formats.gguf import read_gguf_info
from ..types import ChatMessage, GenerationRequest, TemplateOptions
from .base import Engine, EngineEvent, LoadSpec, check_input_ids, check_token_ids, cpu_cores
from .llamacpp import LlamaCppEngine
from .llamacpp_load import context_params, load_model, new_context, token_piece, tokenize

__all__ = ["LlamaCppEmbeddingEngine", "open_gguf"]

MAX_SEQS = 32  # sequences per llama_decode
MIN_BATCH = 2048  # tokens per llama_decode (at least one whole context)


def open_gguf(spec: LoadSpec) -> Engine:
    """The engine for the GGUF at `spec.path`: embeddings for a file whose header sets a
    pooling type, generation otherwise. Blocks for the whole load."""
    try:
        pooling = read_gguf_info(Path(spec.path)).pooling_type
    except InvalidModelFile as exc:
        raise ModelLoadFailed(exc.message) from exc
    if pooling:  # 0 is LLAMA_POOLING_TYPE_NONE: one vector per token, not an embedding model
        return LlamaCppEmbeddingEngine(spec)
    return LlamaCppEngine(spec)


class LlamaCppEmbeddingEngine:
    """Engine for GGUF embedding models. Options read: `threads`, `context_size` (tokens kept
    per input; default the model's), `batch_size` (tokens per decode). Generation is refused."""

    def __init__(self, spec: LoadSpec) -> None:
        opts = spec.options
        self._model = model = load_model(spec)
        self._vocab = lc.llama_model_get_vocab(model)
        n_train = lc.llama_model_n_ctx_train(model)
        self.context_size = min(int(opts.get("context_size") or n_train), n_train)
        self.threads = int(opts.get("threads") or cpu_cores())
        self.batch_size = max(int(opts.get("batch_size") or MIN_BATCH), self.context_size)
        cparams = context_params(self.threads)
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.batch_size
        cparams.n_seq_max = MAX_SEQS
        cparams.embeddings = True
        cparams.pooling_type = lc.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's own
        self._ctx = new_context(model, cparams, spec.path)
        self._batch = lc.llama_batch_init(self.batch_size, 0, 1)
        self._dim = lc.llama_model_n_embd(model)
        self._encoder = bool(lc.llama_model_has_encoder(model)) and not bool(
            lc.llama_model_has_decoder(model)
        )

    # -- Engine protocol -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "engine": "llama.cpp",
            "task": "embed",
            "context_size": self.context_size,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "dimensions": self._dim,
        }

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        lc.llama_set_n_threads(self._ctx, threads, threads)

    @property
    def busy(self) -> bool:
        return False

    def submit(self, seq: int, request: GenerationRequest) -> None:
        raise BadRequest("this model only makes embeddings", param="model")

    def cancel(self, seq: int) -> None:
        return None

    def step(self) -> list[tuple[int, EngineEvent]]:
        return []

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        rows = [self._tokens(item) for item in inputs]
        vectors: list[list[float]] = []
        start = 0
        while start < len(rows):
            end, used = start, 0
            while end < len(rows) and end - start < MAX_SEQS:
                if used + len(rows[end]) > self.batch_size and end > start:
                    break
                used += len(rows[end])
                end += 1
            vectors.extend(self._decode(rows[start:end]))
            start = end
        return vectors, sum(len(r) for r in rows)

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return sum(len(self._tokens(item)) for item in inputs)

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return tokenize(self._vocab, text, add_bos=add_special, special=parse_special)

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        check_token_ids(tokens, lc.llama_vocab_n_tokens(self._vocab))
        return [token_piece(self._vocab, t, special=True) for t in tokens]

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        raise BadRequest("this model makes embeddings and has no chat template", param="model")

    def template_info(self) -> dict[str, str]:
        def text(token: int) -> str:
            piece = token_piece(self._vocab, token, special=True) if token >= 0 else b""
            return piece.decode("utf-8", "replace")

        return {
            "chat_template": "",
            "bos_token": text(lc.llama_vocab_bos(self._vocab)),
            "eos_token": text(lc.llama_vocab_eos(self._vocab)),
        }

    def close(self) -> None:
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    # -- internals -------------------------------------------------------------------------

    def _tokens(self, item: str | list[int]) -> list[int]:
        if isinstance(item, str):
            tokens = tokenize(self._vocab, item, add_bos=True, special=False)
        else:
            tokens = [int(t) for t in item]
        n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        check_input_ids([tokens], n_vocab)
        return tokens[: self.context_size]

    def _decode(self, rows: list[list[int]]) -> list[list[float]]:
        b = self._batch
        n = 0
        for seq, row in enumerate(rows):
            for pos, token in enumerate(row):
                b.token[n], b.pos[n], b.n_seq_id[n] = token, pos, 1
                b.seq_id[n][0] = seq
                b.logits[n] = True
                n += 1
        b.n_tokens = n
        memory = lc.llama_get_memory(self._ctx)
        if memory:
            lc.llama_memory_clear(memory, True)
        rc = (lc.llama_encode if self._encoder else lc.llama_decode)(self._ctx, b)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to embed (code {rc})")
        out = []
        for seq in range(len(rows)):
            pooled = lc.llama_get_embeddings_seq(self._ctx, seq)
            if not pooled:
                raise EngineError("llama.cpp pooled no embedding for this model")
            values = pooled[: self._dim]
            norm = math.sqrt(sum(v * v for v in values)) or 1.0
            out.append([v / norm for v in values])
        return out
