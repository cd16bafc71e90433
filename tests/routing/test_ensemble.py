"""Combining answers: pure."""

from __future__ import annotations

import pytest

from llm_router.errors import BadRequest
from llm_router.routing.ensemble import agreement, load_scorer, normalise, vote


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("  The capital is PARIS!! ") == normalise("the capital is paris")


def test_majority_wins_and_ties_go_to_the_first() -> None:
    answers = [("a", "Paris."), ("b", "Lyon"), ("c", "paris")]
    index, tally = vote(answers, {})
    assert index == 0 and tally == {"paris": 2.0, "lyon": 1.0}
    assert vote([("a", "x"), ("b", "y")], {})[0] == 0


def test_weights_can_outvote_a_majority() -> None:
    answers = [("a", "Paris"), ("b", "Lyon"), ("c", "Paris")]
    index, tally = vote(answers, {"b": 3.0})
    assert answers[index][1] == "Lyon" and tally["lyon"] == 3.0


def test_agreement_picks_the_consensus_answer() -> None:
    answers = ["The capital of France is Paris.", "Paris is the capital of France.",
               "I like turtles.", "The capital of France is Paris!"]  # fmt: skip
    assert agreement("q", answers) in (0, 3)
    assert agreement("q", ["only one"]) == 0


def test_custom_scorer_by_import_path() -> None:
    assert load_scorer("agreement") is agreement
    assert load_scorer("custom_strategy_mod:pick_last")("q", ["a", "b"]) == 1
    with pytest.raises(BadRequest):
        load_scorer("no.such.module:f")
