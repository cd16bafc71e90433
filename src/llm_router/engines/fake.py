"""A scripted engine for tests: no weights, behaviour read from a small JSON "model" file.

`{"load_seconds", "token_seconds", "reply", "parallel", "fail_load", "ballast_mb"}`: it sleeps
to load, optionally fails or holds `ballast_mb` MiB of touched memory (so the worker's RSS is
real; `estimate_mb` makes the lifecycle's estimate of it another number), then batches like the real engine: one sleep per step advances every running sequence
by one word of `reply`, cycling. Its vocabulary (for /tokenize) is the 256 byte values and a
BOS, id 256, written `<s>`; its chat template a plain `role: content` transcript."""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadFailed
from ..types import ChatMessage, FinishReason, GenerationRequest, TemplateOptions, Usage
from .base import LoadSpec, check_prompt_fits, check_token_ids
from .sequences import Events, Sequences, emit, finish_text, out_of_room
from .text import TextAssembler

__all__ = ["FakeEngine"]

DEFAULT_CONTEXT = 2048
DEFAULT_PARALLEL = 4
EMBED_DIM = 8
BOS, BOS_TEXT = 256, "<s>"
TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


@dataclass(slots=True)
class _Seq:
    seq: int
    prompt_tokens: int
    max_tokens: int | None
    text: TextAssembler
    generated: int = 0
    crash: bool = False  # a prompt saying CRASH_STEP makes step() raise (an engine bug)


class FakeEngine:
    """Engine for JSON test models. Blocks in `__init__` for `load_seconds` and in `step` for
    `token_seconds`; raises ModelLoadFailed when the file asks for it or is not valid JSON."""

    def __init__(self, spec: LoadSpec) -> None:
        try:
            with open(spec.path, encoding="utf-8") as file:
                script: dict[str, Any] = json.load(file)
        except (OSError, ValueError) as exc:
            raise ModelLoadFailed(f"fake engine cannot read {spec.path}: {exc}") from None
        time.sleep(float(script.get("load_seconds", 0.0)))
        if script.get("fail_load"):
            raise ModelLoadFailed(f"fake engine was told to fail loading {spec.path}")
        mib = int(script.get("ballast_mb", 0))
        self._ballast = b"\x01" * (mib * 2**20)  # every page written, so it counts in RSS
        self.token_seconds = float(script.get("token_seconds", 0.0))
        self.words = str(script.get("reply", "hello")).split() or ["hello"]
        opts = spec.options
        self.parallel = int(opts.get("parallel") or script.get("parallel") or DEFAULT_PARALLEL)
        self.context_size = int(opts.get("context_size") or DEFAULT_CONTEXT)
        self.threads = int(opts.get("threads") or 1)
        self._seqs: Sequences[_Seq] = Sequences(self.parallel, "fake")

    def info(self) -> dict[str, Any]:
        return {
            "engine": "fake",
            "context_size": self.context_size,
            "parallel": self.parallel,
            "threads": self.threads,
            "slots_busy": len(self._seqs.running),
            "ballast_bytes": len(self._ballast),
        }

    @property
    def busy(self) -> bool:
        return self._seqs.busy

    def submit(self, seq: int, request: GenerationRequest) -> None:
        if request.messages is not None:
            prompt = " ".join(m.content for m in request.messages)
        else:
            prompt = request.prompt or ""
        n_prompt = len(prompt.split()) or 1  # an empty prompt starts from a BOS, as llama.cpp's
        check_prompt_fits(n_prompt, self.context_size, request)
        params = request.params
        self._seqs.add(
            _Seq(
                seq,
                n_prompt,
                params.max_tokens,
                TextAssembler(params.stop),
                crash="CRASH_STEP" in prompt,
            )
        )

    def cancel(self, seq: int) -> None:
        self._seqs.cancel(seq)

    def step(self) -> Events:
        running = self._seqs.admit()
        if not running:
            return []
        if any(s.crash for s in running):
            raise RuntimeError("the fake engine was told to crash in step()")
        time.sleep(self.token_seconds)
        return self._seqs.advance(running, self._advance)

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """Deterministic unit vectors: words (or token ids) hashed into EMBED_DIM buckets."""
        vectors: list[list[float]] = []
        n_tokens = 0
        for item in inputs:
            tokens = item.split() if isinstance(item, str) else [str(t) for t in item]
            n_tokens += len(tokens)
            vec = [0.0] * EMBED_DIM
            for token in tokens:
                vec[zlib.crc32(token.encode()) % EMBED_DIM] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vectors.append([v / norm for v in vec])
        return vectors, n_tokens

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return sum(len(item.split()) if isinstance(item, str) else len(item) for item in inputs)

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        if parse_special:
            parts = data.split(BOS_TEXT.encode())
            tokens = [t for i, p in enumerate(parts) for t in ([BOS] if i else []) + list(p)]
        else:
            tokens = list(data)
        return [BOS, *tokens] if add_special else tokens

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        check_token_ids(tokens, BOS + 1)
        return [BOS_TEXT.encode() if t == BOS else bytes([t]) for t in tokens]

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        lines = "".join(f"{m.role}: {m.content}\n" for m in messages)
        return lines + ("assistant:" if options is None or options.add_generation_prompt else "")

    def template_info(self) -> dict[str, str]:
        return {"chat_template": TEMPLATE, "bos_token": BOS_TEXT, "eos_token": ""}

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def close(self) -> None:
        self._seqs.clear()
        self._ballast = b""

    def _advance(self, s: _Seq, events: Events) -> None:
        if s.max_tokens == 0:
            return self._finish(s, "length", events)
        word = self.words[s.generated % len(self.words)]
        piece = word if s.generated == 0 else " " + word
        s.generated += 1
        if emit(events, s.seq, s.text, piece.encode()):
            return self._finish(s, "stop", events, flush=False)
        if out_of_room(s.prompt_tokens, s.generated, s.max_tokens, self.context_size):
            self._finish(s, "length", events)

    def _finish(self, s: _Seq, reason: FinishReason, events: Events, flush: bool = True) -> None:
        self._seqs.end(s)
        usage = Usage(s.prompt_tokens, s.generated)
        finish_text(events, s.seq, s.text, reason, usage, flush=flush)
