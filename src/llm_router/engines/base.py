"""The one small protocol every local engine implements.

An engine lives inside a worker process and is driven by that process's single loop thread:
no method is ever called concurrently, so engines need no locks. Generation is step-wise so an
engine can decode many sequences together (continuous batching); an engine that cannot simply
advances one sequence per step."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import BadRequest, ContextLengthExceeded, RouterError
from ..types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TemplateOptions,
    TextDelta,
)

__all__ = [
    "COUNTERS",
    "Engine",
    "EngineEvent",
    "LoadSpec",
    "check_prompt_fits",
    "check_token_ids",
    "cpu_cores",
    "no_chat_template",
    "prompt_token_count",
    "text_bias_refused",
]

EngineEvent = TextDelta | PromptLogprobs | Finished | RouterError
"""A RouterError ends its sequence with that error."""

# The fields of an engine's `info()` that only grow over its life (the llama.cpp engine's),
# with what each counts. A model's totals go on across its workers (lifecycle/state.py): the
# metrics built on them (metrics.py) never go down while the server runs.
COUNTERS = {
    "decode_steps": "llama_decode calls",
    "batch_sequences": "sequences summed over decode steps (divide by steps: batch occupancy)",
    "prompt_tokens_evaluated": "prompt tokens evaluated",
    "prompt_tokens_reused": "prompt tokens reused from a slot's KV cache",
    "prompt_prefix_copies": "prompt prefixes copied from another slot's KV cache",
    "slot_moves": "sequences moved to close a gap in the busy slots",
    "tokens_generated": "tokens generated",
}


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What a worker needs to load a model: the file or folder, the engine options
    (EngineOptions as a dict, unset fields absent) and what discovery learned from the model's
    metadata: its architecture and, for a GGUF, `general.finetune` (which tells an
    instruction-tuned file from a base one when it carries no chat template)."""

    path: str
    options: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    finetune: str | None = None


def cpu_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one): the default
    thread count of every engine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_prompt_fits(
    n_tokens: int, context_size: int | None, request: GenerationRequest, slots: int = 1
) -> None:
    """Raise ContextLengthExceeded (a 400) when a prompt leaves no room to generate, and
    BadRequest when it has no token at all (nothing to continue from). `slots`: the model's,
    each with `context_size` tokens of its own (said, as llama-server's `-c` is all of them
    together: a user who gave it read the total as one request's)."""
    if n_tokens == 0:
        raise BadRequest(
            "the prompt is empty: there is nothing to continue from",
            param="messages" if request.messages is not None else "prompt",
        )
    if context_size is not None and n_tokens >= context_size:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_size} tokens, "
            f"but the prompt has {n_tokens} tokens"
            + (", which leaves no room for the answer." if n_tokens == context_size else ".")
            + (
                f" The context is per slot: each of this model's {slots} slots has "
                f"{context_size} (llama-server's -c is the slots' total); fewer slots "
                "(-np, `parallel`) give each more."
                if slots > 1
                else ""
            ),
            param="messages" if request.messages is not None else "prompt",
        )


def check_token_ids(tokens: list[int], n_vocab: int, param: str = "tokens") -> None:
    """Raise BadRequest (naming `param`) unless every id is in the vocabulary."""
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise BadRequest(f"token id {bad} is not in [0, {n_vocab})", param=param)


def check_input_ids(rows: list[list[int]], n_vocab: int) -> None:
    """Raise BadRequest (naming `input`) unless an embedding request's token ids are all in
    the model's vocabulary. Ids are the model's own, not OpenAI's: LangChain's
    OpenAIEmbeddings sends ids from OpenAI's tokenizer by default (found from outside), so
    the message says how to make it send text."""
    bad = next((t for row in rows for t in row if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise BadRequest(
            f"token id {bad} is not in [0, {n_vocab}): token ids in `input` are this model's "
            "own (its /tokenize gives them), not OpenAI's; LangChain's OpenAIEmbeddings sends "
            "OpenAI's unless given check_embedding_ctx_length=False, which makes it send text",
            param="input",
        )


def logit_bias(
    params: SamplingParams, n_vocab: int, tokenize: Callable[[str], list[int]] | None = None
) -> tuple[Any, Any] | None:
    """A request's `logit_bias` as (ids, values) arrays to add to the logits, one entry a
    token (at most the vocabulary, whatever the keys: 1024 text keys of 256 characters are
    ~700k tokens); None when it has none. A text key's tokens (`tokenize`, as llama-server)
    take its bias; the biases of one token, from several keys or several times in one text,
    add up, as llama-server applies each of its entries in turn. Raises BadRequest (naming
    `logit_bias`) for an id outside the vocabulary, or for a text key where there is no
    `tokenize`."""
    if not (params.logit_bias or params.logit_bias_text):
        return None
    import numpy as np

    ids = [t for t, _ in params.logit_bias]
    check_token_ids(ids, n_vocab, param="logit_bias")
    values = [b for _, b in params.logit_bias]
    for text, bias in params.logit_bias_text:
        if tokenize is None:
            raise text_bias_refused()
        tokens = tokenize(text)
        ids += tokens
        values += [bias] * len(tokens)
    if not ids:
        return None
    distinct, where = np.unique(np.array(ids, dtype=np.intp), return_inverse=True)
    sums = np.bincount(where, weights=np.array(values), minlength=len(distinct))
    return distinct, sums.astype(np.float32)


def text_bias_refused() -> BadRequest:
    return BadRequest(
        "`logit_bias` with a text key (its tokens biased, as llama-server) is served by GGUF "
        "models (llama.cpp) only: give token ids (POST /tokenize gives a text's)",
        param="logit_bias",
    )


def prompt_token_count(
    engine: Engine,
    text: str,
    messages: tuple[ChatMessage, ...] | None = None,
    options: TemplateOptions | None = None,
) -> int:
    """How many tokens `messages` through the chat template (else `text`) make, with the
    special tokens added and parsed: a prompt's count for limits (routing/admission.py)."""
    if messages is not None:
        text = engine.chat_prompt(messages, options)
    return len(engine.token_ids(text, add_special=True, parse_special=True))


def no_chat_template() -> BadRequest:
    return BadRequest(
        "this model has no chat template: use /v1/completions, or set `chat_template` "
        "for it in the configuration",
        param="messages",
    )


class Engine(Protocol):
    def info(self) -> dict[str, Any]:
        """A snapshot of facts for `GET /models`: context per slot, slots, threads..."""
        ...

    def submit(self, seq: int, request: GenerationRequest) -> None:
        """Queue a generation under the caller's id `seq`. Raises BadRequest (e.g.
        ContextLengthExceeded) at once when the request can never be served."""
        ...

    def cancel(self, seq: int) -> None:
        """Drop a sequence, queued or running; its resources are free after the next step."""
        ...

    @property
    def busy(self) -> bool:
        """True while any sequence is queued or running."""
        ...

    def step(self) -> list[tuple[int, EngineEvent]]:
        """Advance every running sequence by one decode step; blocks for its duration."""
        ...

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """Embedding vectors for `inputs` (texts or token arrays) and the number of input
        tokens. Blocks for the whole batch. Engines without embeddings raise BadRequest."""
        ...

    def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        """The input tokens `embed` counts for `inputs` (each cut where `embed` cuts it),
        without embedding them: a request's count for limits (routing/admission.py).
        Engines without embeddings raise BadRequest."""
        ...

    # llama-server's /tokenize, /detokenize, /apply-template and /props. Each runs on the
    # worker's loop thread between decode steps, as `submit` does, and blocks the model's
    # streams for its duration (the request sizes are bounded in protocol/llama.py).

    def token_ids(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """The tokens of `text`: with `add_special`, the BOS/EOS the model's tokenizer adds;
        with `parse_special`, special tokens written in the text are parsed as such."""
        ...

    def token_pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes, special tokens written out; joined, the detokenized text.
        Raises BadRequest (param `tokens`) for an id not in the vocabulary."""
        ...

    def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        """The chat template rendered for `messages` with the generation prompt, as
        llama-server's /apply-template gives it: without the template's leading BOS text when
        tokenizing with `add_special` adds one, so that `token_ids(prompt, add_special=True,
        parse_special=True)` are the tokens a chat of these messages evaluates. Raises
        BadRequest when the model has no template or the template refuses them."""
        ...

    def template_info(self) -> dict[str, str]:
        """`chat_template` (its source, "" for none), `bos_token` and `eos_token` (as text)."""
        ...

    def set_threads(self, threads: int) -> None:
        """Use this many CPU threads from the next step on (the router's thread budget)."""
        ...

    def close(self) -> None: ...
