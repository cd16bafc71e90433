"""Combining several targets' answers to one question: pure functions, no I/O.

`vote` counts answers that say the same thing (after normalising case, punctuation and
spacing), each weighted by its target's weight; `agreement` scores each answer by how much it
agrees with the others (the best-of scorer that needs no judge); `load_scorer` resolves a
custom `module:function(question, answers) -> index`."""

from __future__ import annotations

import difflib
import importlib
import re
import string
from collections.abc import Callable, Mapping, Sequence

from ..errors import BadRequest

__all__ = ["Scorer", "agreement", "load_scorer", "normalise", "vote"]

Scorer = Callable[[str, Sequence[str]], int]
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise(answer: str) -> str:
    return " ".join(_PUNCT.sub(" ", answer.lower()).split())


def vote(
    answers: Sequence[tuple[str, str]], weights: Mapping[str, float]
) -> tuple[int, dict[str, float]]:
    """`answers`: (target, text). Returns the index of the winning answer (the first one given
    of the winning group) and the weight each normalised answer got."""
    tally: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (target, text) in enumerate(answers):
        key = normalise(text)
        tally[key] = tally.get(key, 0.0) + weights.get(target, 1.0)
        first.setdefault(key, i)
    best = max(tally, key=lambda k: (tally[k], -first[k]))
    return first[best], tally


def agreement(question: str, answers: Sequence[str]) -> int:
    """The answer most similar, on average, to all the others (ties: the first)."""
    if len(answers) < 2:
        return 0
    normal = [normalise(a) for a in answers]
    scores = [
        sum(difflib.SequenceMatcher(None, a, b).ratio() for j, b in enumerate(normal) if j != i)
        for i, a in enumerate(normal)
    ]
    return max(range(len(answers)), key=lambda i: (scores[i], -i))


def load_scorer(spec: str) -> Scorer:
    """'agreement' or an import path 'package.module:function'."""
    if spec == "agreement":
        return agreement
    module, _, name = spec.partition(":")
    try:
        scorer = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise BadRequest(f"unknown scorer {spec!r}: use 'agreement', 'judge' or "
                         "'package.module:function'", param="scorer") from None  # fmt: skip
    if not callable(scorer):
        raise BadRequest(f"scorer {spec!r} is not callable", param="scorer")
    return scorer  # type: ignore[no-any-return]
