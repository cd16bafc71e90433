"""Driving an Engine by hand, as a worker's loop does: submit, step until idle, collect."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_router.engines.base import Engine
from llm_router.engines.slots import common_prefix
from llm_router.errors import RouterError
from llm_router.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)

SYSTEM = ChatMessage("system", "You are a helpful assistant.")


@dataclass
class Result:
    text: str = ""
    deltas: list[str] = field(default_factory=list)
    finished: Finished | None = None
    error: RouterError | None = None


def run_all(engine: Engine, requests: list[GenerationRequest]) -> list[Result]:
    """Submit every request at once and step until the engine is idle."""
    results = [Result() for _ in requests]
    for seq, request in enumerate(requests):
        engine.submit(seq, request)
    while engine.busy:
        for seq, event in engine.step():
            r = results[seq]
            if isinstance(event, TextDelta):
                r.deltas.append(event.text)
                r.text += event.text
            elif isinstance(event, Finished):
                r.finished = event
            else:
                r.error = event
    return results


def run(engine: Engine, request: GenerationRequest) -> Result:
    return run_all(engine, [request])[0]


def greedy(prompt: str, max_tokens: int = 8, **params: object) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, **params)  # type: ignore[arg-type]
    return GenerationRequest(sampling, prompt=prompt)


def chat(question: str, max_tokens: int = 16, **params: object) -> GenerationRequest:
    sampling = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **params})  # type: ignore[arg-type]
    return GenerationRequest(sampling, messages=(SYSTEM, ChatMessage("user", question)))


def common_tokens(tokenizer: object, a: str, b: str) -> int:
    """How many leading tokens two texts share, by an HF tokenizer."""
    ta = tokenizer(a, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    tb = tokenizer(b, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return common_prefix(ta, tb)
