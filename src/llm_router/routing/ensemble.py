"""Combining several targets' answers to one question: pure functions, no I/O.

`vote` counts answers that say the same thing (after normalising case, punctuation and
spacing), each weighted by its target's weight; `agreement` scores each answer by how much it
agrees with the others (the best-of scorer that needs no judge); `load_scorers` resolves the
custom `module:function(question, answers) -> index` scorers the configuration names, once, at
start-up: a request can only pick one of those by name, never name code to import."""

from __future__ import annotations

import difflib
import importlib
import re
import string
from collections.abc import Callable, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["Scorer", "agreement", "import_scorer", "load_scorers", "normalise", "vote"]

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


def import_scorer(name: str, path: str) -> Scorer:
    """The scorer a config entry names by import path 'package.module:function'. Only the
    configuration names code to run, never a request. Raises ConfigError."""
    module, _, attr = path.partition(":")
    try:
        scorer = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"ensemble_scorers.{name}: cannot import {path!r} ({exc})") from None
    if not callable(scorer):
        raise ConfigError(f"ensemble_scorers.{name}: {path!r} is not callable")
    return scorer  # type: ignore[no-any-return]


def load_scorers(configured: Mapping[str, str]) -> dict[str, Scorer]:
    """The scorers a request may name: `agreement` and the configured ones (imported now,
    at start-up). `judge` is not a function: the ensemble service asks a model."""
    scorers: dict[str, Scorer] = {"agreement": agreement}
    for name, path in configured.items():
        if name in ("agreement", "judge"):
            raise ConfigError(f"ensemble_scorers.{name}: that name is built in")
        scorers[name] = import_scorer(name, path)
    return scorers
