"""Combining answers (pure), and which scorers a request may name."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import Mock

import pytest

from llm_router.errors import BadRequest, ConfigError
from llm_router.routing.ensemble import agreement, load_scorers, normalise, vote
from llm_router.serving.ensemble import EnsembleRequest, EnsembleService
from llm_router.serving.generate import GenerationService


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
    answers = [
        "The capital of France is Paris.",
        "Paris is the capital of France.",
        "I like turtles.",
        "The capital of France is Paris!",
    ]
    assert agreement("q", answers) in (0, 3)
    assert agreement("q", ["only one"]) == 0


def test_custom_scorers_come_from_the_configuration_only() -> None:
    scorers = load_scorers({"last": "custom_strategy_mod:pick_last"})
    assert scorers["agreement"] is agreement
    assert scorers["last"]("q", ["a", "b"]) == 1
    with pytest.raises(ConfigError, match=r"ensemble_scorers\.bad"):
        load_scorers({"bad": "no.such.module:f"})
    with pytest.raises(ConfigError, match="built in"):
        load_scorers({"judge": "custom_strategy_mod:pick_last"})


async def test_a_request_cannot_name_code_to_run(tmp_path: Path) -> None:
    """The critical finding: `"scorer": "shutil:rmtree"` with the last message naming a folder
    deleted it. A request may name only agreement, judge or a configured scorer; anything else
    is a 400 before any target is asked, and nothing is imported or run."""
    victim = tmp_path / "keep-me"
    victim.mkdir()
    generation = Mock(spec=GenerationService)
    service = EnsembleService(generation, load_scorers({}))
    body = {
        "targets": ["a", "b"],
        "mode": "best-of",
        "scorer": "shutil:rmtree",
        "messages": [{"role": "user", "content": str(victim)}],
    }
    with pytest.raises(BadRequest, match="unknown scorer 'shutil:rmtree'") as caught:
        await service.ensemble(EnsembleRequest.model_validate(body))
    assert caught.value.param == "scorer"
    assert victim.is_dir()
    assert generation.mock_calls == []
