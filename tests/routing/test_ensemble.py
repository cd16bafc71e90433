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


async def test_vote_weights_count_by_alias_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    """Weights keyed by an alias (or a route) were matched against the target's id and
    silently ignored; a weight naming no target was accepted (found from outside)."""
    from inproc import app_client, fake_models
    from llm_router.config import ModelConfig

    models = fake_models(tmp_path, a={"reply": "yes"}, b={"reply": "no"}, c={"reply": "no"})
    models[0] = ModelConfig(id="a", path=models[0].path, engine="fake", aliases=["alpha"])
    body = {"targets": ["alpha", "b", "c"], "mode": "vote", "temperature": 0, "max_tokens": 3,
            "messages": [{"role": "user", "content": "?"}]}  # fmt: skip
    async with app_client(tmp_path, models=models) as client:
        plain = (await client.post("/v1/ensemble", json=body)).json()
        weighed = await client.post("/v1/ensemble", json={**body, "weights": {"alpha": 5}})
        unknown = await client.post("/v1/ensemble", json={**body, "weights": {"nope": 1}})
    assert plain["ensemble"]["chosen"] in ("b", "c")  # two against one
    assert weighed.status_code == 200 and weighed.json()["ensemble"]["chosen"] == "a"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "weights"


async def test_a_judge_is_checked_first_and_its_failure_is_not_the_ensembles(
    tmp_path: Path,
) -> None:
    """best-of with scorer judge and no judge asked (and paid) every target before its 400;
    a judge that failed failed the ensemble though every answer was in (found from outside)."""
    from inproc import app_client, fake_models

    models = fake_models(tmp_path, a={"reply": "yes"}, b={"reply": "yes sure"},
                         broken={"fail_load": True})  # fmt: skip
    body = {"targets": ["a", "b"], "mode": "best-of", "scorer": "judge", "max_tokens": 3,
            "messages": [{"role": "user", "content": "?"}]}  # fmt: skip
    async with app_client(tmp_path, models=models) as client:
        none = await client.post("/v1/ensemble", json=body)
        metrics = (await client.get("/metrics")).text
        failed = await client.post("/v1/ensemble", json={**body, "judge": "broken"})
    assert none.status_code == 400 and none.json()["error"]["param"] == "judge"
    assert "llm_router_requests_total{" not in metrics  # nothing was asked
    assert failed.status_code == 200, failed.text
    assert failed.json()["ensemble"]["scorer"].startswith("agreement (the judge failed")


async def test_a_judge_that_cannot_be_asked_is_refused_before_any_target(tmp_path: Path) -> None:
    """A judge that does not exist, or one that only makes embeddings, fell back to agreement
    under a 200 (`"scorer": "agreement (the judge failed: The model 'nope' does not exist)"`),
    where an unknown model is a 404 everywhere else (found from outside): a 404 and a 400
    naming `judge`, and no target asked."""
    from inproc import app_client, fake_models
    from llm_router.defaults import bundled_minilm

    minilm = bundled_minilm()
    assert minilm is not None
    (tmp_path / "minilm").symlink_to(minilm, target_is_directory=True)  # found by discovery
    models = fake_models(tmp_path, a={"reply": "yes"}, b={"reply": "yes sure"})
    body = {"targets": ["a", "b"], "mode": "best-of", "scorer": "judge", "max_tokens": 3,
            "messages": [{"role": "user", "content": "?"}]}  # fmt: skip
    async with app_client(tmp_path, models=models) as client:
        unknown = await client.post("/v1/ensemble", json={**body, "judge": "nope"})
        embeds = await client.post("/v1/ensemble", json={**body, "judge": "minilm"})
        metrics = (await client.get("/metrics")).text
        judged = await client.post("/v1/ensemble", json={**body, "judge": "a"})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["param"] == "judge" and "'nope'" in unknown.text
    assert embeds.status_code == 400, embeds.text
    assert embeds.json()["error"]["param"] == "judge" and "only makes embeddings" in embeds.text
    assert "llm_router_requests_total{" not in metrics  # nothing was asked
    assert judged.status_code == 200, judged.text  # a model that generates is asked
    assert judged.json()["ensemble"]["scorer"] == "agreement (the judge named no answer)"


async def test_first_lists_every_target_the_ones_cut_short_as_cancelled(tmp_path: Path) -> None:
    """`first` listed in `answers` only the targets it had waited for; README says the answer
    comes with every target's. Those still asked when the first answer came are there too,
    cancelled, with no text (and in `targets` order, as vote and best-of list theirs)."""
    from inproc import app_client, fake_models
    from routing.test_router_inproc import remote, upstream

    async with upstream() as (slow, url):
        slow.mode = "slow"
        slow.slow_for = 20  # 2 s: on a loaded machine the local model answered after it
        models = [remote("far", url, timeout=30), *fake_models(tmp_path, near={"reply": "yes"})]
        body = {"targets": ["far", "near"], "mode": "first", "max_tokens": 1,
                "messages": [{"role": "user", "content": "?"}]}  # fmt: skip
        async with app_client(tmp_path, models=models) as client:
            r = await client.post("/v1/ensemble", json=body)
    assert r.status_code == 200, r.text
    details = r.json()["ensemble"]
    assert details["chosen"] == "near"
    far, near = details["answers"]
    assert (near["model"], near["content"], near["error"]) == ("near", "yes", None)
    assert (far["model"], far["content"]) == ("far", None)
    assert far["error"] == "cancelled: another target answered first"
