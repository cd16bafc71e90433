"""A custom routing strategy loaded by import path in tests/routing/test_strategies.py."""

from __future__ import annotations

from llm_router.routing import Candidate, RouteRequest


def pick(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
    """Alphabetical by id, reversed; ignores every rule (rank() must enforce them)."""
    return sorted(candidates, key=lambda c: c.id, reverse=True)


class Prefer:
    """A configurable class strategy: the named target first, the rest in order."""

    def __init__(self, first: str) -> None:
        self.first = first

    def __call__(self, request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: c.id != self.first)


NOT_CALLABLE = 42


def pick_last(question: str, answers: list[str]) -> int:
    """A custom best-of scorer for tests/routing/test_ensemble.py: always the last answer."""
    return len(answers) - 1
