"""Strategies on synthetic candidates: pure, no clocks, no I/O."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from llm_router.errors import ConfigError
from llm_router.routing import (
    STRATEGIES,
    Balanced,
    Candidate,
    Capabilities,
    RoundRobin,
    RouteRequest,
    TargetSnapshot,
    ab_split,
    load_strategy,
    rank,
)
from llm_router.routing.strategies import estimated_cost, expected_seconds

CHAT = RouteRequest(prompt_tokens=100, max_tokens=100)


def cand(name: str, **kw: Any) -> Candidate:
    stats = {k: kw.pop(k) for k in list(kw) if k in TargetSnapshot.__dataclass_fields__}
    caps = {k: kw.pop(k) for k in list(kw) if k in Capabilities.__dataclass_fields__}
    return Candidate(name, stats=TargetSnapshot(**stats), capabilities=Capabilities(**caps), **kw)


def ids(candidates: list[Candidate]) -> list[str]:
    return [c.id for c in candidates]


def order(name: str, candidates: list[Candidate], request: RouteRequest = CHAT) -> list[str]:
    return ids(load_strategy(name)(request, candidates))


# -- filters shared by every strategy -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_skips_open_breakers(name: str) -> None:
    pool = [cand("a", breaker_open=True, quality=1.0), cand("b"), cand("c", breaker_open=True)]
    assert order(name, pool) == ["b"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_filters_by_context_length(name: str) -> None:
    pool = [cand("short", context_length=150, quality=1.0), cand("long", context_length=8192)]
    assert order(name, pool) == ["long"]
    # prompt 100 + max_tokens 50 fits exactly in 150
    fits = RouteRequest(prompt_tokens=100, max_tokens=50)
    assert sorted(order(name, pool, fits)) == ["long", "short"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_filters_by_kind(name: str) -> None:
    pool = [cand("llm"), cand("embedder", embedding=True, chat=False, completion=False)]
    assert order(name, pool, RouteRequest(kind="embedding", prompt_tokens=10)) == ["embedder"]
    assert order(name, pool, RouteRequest(kind="completion")) == ["llm"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_sends_tools_only_to_targets_that_make_tool_calls(name: str) -> None:
    pool = [cand("local", quality=1.0), cand("remote", tools=True, quality=0.1)]
    assert order(name, pool, RouteRequest(prompt_tokens=10, tools=True)) == ["remote"]
    assert sorted(order(name, pool, RouteRequest(prompt_tokens=10))) == ["local", "remote"]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_returns_nothing_when_nothing_is_eligible(name: str) -> None:
    assert order(name, [cand("a", breaker_open=True)]) == []
    assert order(name, []) == []


def test_unknown_context_length_is_never_filtered() -> None:
    huge = RouteRequest(prompt_tokens=10**7)
    assert order("quality-first", [cand("a")], huge) == ["a"]


# -- each strategy's ordering -------------------------------------------------------------------


def test_quality_first() -> None:
    pool = [cand("mid", quality=0.5), cand("top", quality=0.9), cand("low", quality=0.1)]
    assert order("quality-first", pool) == ["top", "mid", "low"]


def test_ties_keep_the_configured_order() -> None:
    pool = [cand("b"), cand("a"), cand("c")]
    for name in ("quality-first", "cost-optimized", "speed-priority", "least-loaded", "balanced"):
        assert order(name, pool) == ["b", "a", "c"], name


def test_cost_optimized_uses_this_requests_token_counts() -> None:
    cheap_in = cand("cheap-in", cost_input=1.0, cost_output=10.0)
    cheap_out = cand("cheap-out", cost_input=10.0, cost_output=1.0)
    long_prompt = RouteRequest(prompt_tokens=10_000, max_tokens=10)
    long_answer = RouteRequest(prompt_tokens=10, max_tokens=10_000)
    assert order("cost-optimized", [cheap_out, cheap_in], long_prompt) == ["cheap-in", "cheap-out"]
    assert order("cost-optimized", [cheap_in, cheap_out], long_answer) == ["cheap-out", "cheap-in"]


def test_cost_is_per_million_tokens_and_ties_prefer_quality() -> None:
    paid = cand("paid", cost_input=2.0, cost_output=4.0)
    assert estimated_cost(RouteRequest(prompt_tokens=500_000, max_tokens=250_000), paid) == 2.0
    pool = [cand("free-bad", quality=0.2), paid, cand("free-good", quality=0.8)]
    assert order("cost-optimized", pool) == ["free-good", "free-bad", "paid"]


def test_speed_priority_prefers_the_measured_faster_target() -> None:
    pool = [cand("slow", latency=2.0), cand("fast", latency=0.5), cand("mid", latency=1.0)]
    assert order("speed-priority", pool) == ["fast", "mid", "slow"]


def test_speed_priority_uses_ttft_and_decode_speed_for_long_answers() -> None:
    quick_start = cand("quick-start", ttft=0.1, tokens_per_second=10.0)  # 0.1 + n/10
    fast_decode = cand("fast-decode", ttft=1.0, tokens_per_second=100.0)  # 1.0 + n/100
    pool = [quick_start, fast_decode]
    assert order("speed-priority", pool, RouteRequest(max_tokens=5)) == [
        "quick-start",
        "fast-decode",
    ]
    assert order("speed-priority", pool, RouteRequest(max_tokens=500)) == [
        "fast-decode",
        "quick-start",
    ]


def test_speed_priority_counts_a_cold_load_as_cost() -> None:
    cold = cand("cold", latency=0.5, loaded=False, cold_load_seconds=3.0)
    warm = cand("warm", latency=2.0)
    assert order("speed-priority", [cold, warm]) == ["warm", "cold"]
    quick_load = cand("cold", latency=0.5, loaded=False, cold_load_seconds=1.0)
    assert order("speed-priority", [quick_load, warm]) == ["cold", "warm"]


def test_speed_priority_counts_queue_depth_as_cost() -> None:
    busy = cand("busy", latency=1.0, queued=3)  # 1 + 3 * 1
    idle = cand("idle", latency=2.5)
    assert order("speed-priority", [busy, idle]) == ["idle", "busy"]
    assert expected_seconds(CHAT, busy) == 4.0


@pytest.mark.parametrize("name", ["speed-priority", "balanced"])
def test_an_unmeasured_target_is_tried_once_then_given_the_median(name: str) -> None:
    """With one target measured, the other got its time exactly, and the tie kept the config's
    order: a faster target listed second was never tried (found from outside)."""
    pool = [cand("slow", latency=1.0), cand("new")]
    assert order(name, pool) == ["new", "slow"]  # nothing in flight to it: tried
    trying = [cand("slow", latency=3.0), cand("new", in_flight=1), cand("fast", latency=1.0)]
    assert order("speed-priority", trying) == ["fast", "new", "slow"]  # meanwhile: the median
    # nothing measured: only cold load and queue tell them apart
    pool = [cand("cold", loaded=False, cold_load_seconds=2.0), cand("warm")]
    assert order("speed-priority", pool) == ["warm", "cold"]


def test_least_loaded_counts_in_flight_and_queue() -> None:
    pool = [cand("a", in_flight=3), cand("b", in_flight=1, queued=1), cand("c", in_flight=1)]
    assert order("least-loaded", pool) == ["c", "b", "a"]


def test_least_loaded_counts_a_cold_load_as_requests() -> None:
    cold = cand("cold", latency=1.0, loaded=False, cold_load_seconds=4.0)  # idle, +4 requests
    assert order("least-loaded", [cold, cand("busy", latency=1.0, in_flight=3)]) == ["busy", "cold"]
    assert order("least-loaded", [cold, cand("busier", latency=1.0, in_flight=5)]) == [
        "cold",
        "busier",
    ]


def test_balanced_default_weights_trade_quality_against_speed_and_cost() -> None:
    smart_slow = cand("smart-slow", quality=0.9, latency=1.2)
    dumb_fast = cand("dumb-fast", quality=0.3, latency=1.0)
    assert order("balanced", [dumb_fast, smart_slow]) == ["smart-slow", "dumb-fast"]
    very_slow = cand("smart-slow", quality=0.9, latency=10.0, cost_output=30.0)
    assert order("balanced", [very_slow, dumb_fast]) == ["dumb-fast", "smart-slow"]


def test_balanced_weights_are_configurable() -> None:
    pool = [cand("smart", quality=0.9, latency=5.0), cand("fast", quality=0.5, latency=1.0)]
    only_speed = load_strategy("balanced", {"quality": 0, "cost": 0, "speed": 1, "load": 0})
    only_quality = load_strategy("balanced", {"quality": 1, "cost": 0, "speed": 0, "load": 0})
    assert ids(only_speed(CHAT, pool)) == ["fast", "smart"]
    assert ids(only_quality(CHAT, pool)) == ["smart", "fast"]


def test_balanced_counts_cold_load_and_queue() -> None:
    weights = {"quality": 0, "cost": 0, "speed": 1, "load": 0}
    balanced = Balanced(**weights)
    cold = cand("cold", latency=1.0, loaded=False, cold_load_seconds=5.0)
    queued = cand("queued", latency=1.0, queued=8)
    assert ids(balanced(CHAT, [cold, cand("warm", latency=2.0)])) == ["warm", "cold"]
    assert ids(balanced(CHAT, [queued, cand("idle", latency=2.0)])) == ["idle", "queued"]
    assert ids(Balanced(0, 0, 0, 1)(CHAT, [queued, cand("idle")])) == ["idle", "queued"]


def test_balanced_refuses_negative_weights() -> None:
    with pytest.raises(ConfigError, match="negative"):
        load_strategy("balanced", {"speed": -1})


def test_round_robin_rotates_over_eligible_candidates() -> None:
    strategy = load_strategy("round-robin")
    pool = [cand("a"), cand("b"), cand("c")]
    firsts = [strategy(CHAT, pool)[0].id for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert ids(strategy(CHAT, pool)) == ["a", "b", "c"]
    assert ids(strategy(CHAT, pool)) == ["b", "c", "a"]


def test_round_robin_state_is_per_instance() -> None:
    pool = [cand("a"), cand("b")]
    first, second = load_strategy("round-robin"), load_strategy("round-robin")
    assert isinstance(first, RoundRobin)
    first(CHAT, pool)
    assert second(CHAT, pool)[0].id == "a"


# -- resolving strategies -----------------------------------------------------------------------


def test_builtin_names() -> None:
    assert set(STRATEGIES) == {
        "quality-first",
        "cost-optimized",
        "speed-priority",
        "balanced",
        "round-robin",
        "least-loaded",
    }


def test_custom_function_by_import_path_is_ranked_with_the_rules_enforced() -> None:
    strategy = load_strategy("custom_strategy_mod:pick")
    pool = [cand("a"), cand("c", breaker_open=True), cand("b"), cand("d", context_length=10)]
    assert ids(strategy(CHAT, pool)) == ["d", "c", "b", "a"]  # the raw answer breaks the rules
    assert ids(rank(strategy, CHAT, pool)) == ["b", "a"]


def test_custom_class_is_instantiated_with_options() -> None:
    strategy = load_strategy("custom_strategy_mod:Prefer", {"first": "b"})
    assert ids(rank(strategy, CHAT, [cand("a"), cand("b")])) == ["b", "a"]


def test_rank_drops_duplicates_and_strangers() -> None:
    a = cand("a")

    def sloppy(request: RouteRequest, candidates: list[Candidate]) -> list[Candidate]:
        return [a, cand("stranger"), a]

    assert ids(rank(sloppy, CHAT, [a])) == ["a"]


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("fastest", None, "unknown strategy 'fastest': use one of quality-first"),
        ("no_such_module_xyz:pick", None, "cannot import 'no_such_module_xyz'"),
        ("custom_strategy_mod:missing", None, "has no 'missing'"),
        ("custom_strategy_mod:", None, "package.module:function"),
        ("custom_strategy_mod:NOT_CALLABLE", None, "is not callable"),
        ("custom_strategy_mod:pick", {"x": 1}, "is a function and takes no options"),
        ("custom_strategy_mod:Prefer", {}, "invalid options"),
        ("balanced", {"sped": 1}, "invalid options"),
    ],
)
def test_bad_specs_are_config_errors(
    spec: str, options: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_strategy(spec, options)


# -- A/B splits ---------------------------------------------------------------------------------


def test_ab_split_is_sticky_and_stable_across_processes() -> None:
    weights = {"old": 90.0, "new": 10.0}
    assert all(ab_split(weights, f"user-{i}") == ab_split(weights, f"user-{i}") for i in range(100))
    # sha256-based: these values are the same in every process and on every machine
    assert [ab_split({"a": 1, "b": 1}, k) for k in ("alice", "bob", "carol", "dave")] == [
        ab_split({"b": 1, "a": 1}, k) for k in ("alice", "bob", "carol", "dave")
    ]


def test_ab_split_pinned_values() -> None:
    # Guards against an accidental change of the hashing (which would move every user).
    got = [ab_split({"a": 1, "b": 1}, f"k{i}") for i in range(8)]
    assert got == ["a", "b", "a", "b", "a", "a", "a", "a"]


@pytest.mark.parametrize("weights", [{"a": 50, "b": 50}, {"a": 80, "b": 15, "c": 5}])
def test_ab_split_proportions_over_10000_keys(weights: dict[str, float]) -> None:
    counts = Counter(ab_split(weights, f"user-{i}") for i in range(10_000))
    total = sum(weights.values())
    for arm, weight in weights.items():
        assert abs(counts[arm] / 10_000 - weight / total) <= 0.02, (arm, counts)


def test_ab_split_salt_decorrelates_routes() -> None:
    weights = {"a": 1.0, "b": 1.0}
    same = sum(
        ab_split(weights, f"u{i}", salt="r1") == ab_split(weights, f"u{i}", salt="r2")
        for i in range(2000)
    )
    assert 800 < same < 1200


def test_ab_split_zero_weight_arm_gets_nobody() -> None:
    assert {ab_split({"a": 1, "off": 0}, f"u{i}") for i in range(200)} == {"a"}


@pytest.mark.parametrize("weights", [{}, {"a": 0}, {"a": 1, "b": -1}])
def test_ab_split_refuses_bad_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ab_split(weights, "key")


def test_routing_package_exports_exactly_its_all() -> None:
    import llm_router.routing as routing

    public = {name for name in vars(routing) if not name.startswith("_")}
    modules = {
        "breaker",
        "stats",
        "strategies",
        "annotations",
        "dispatcher",
        "attempt",
        "targets",
        "ensemble",
        "local",
        "remote",
        "upstream",
        "upstream_errors",
        "admission",
        "shared_breakers",
        "configured",
        "planning",
    }
    assert public - modules == set(routing.__all__)
    assert routing.__all__ == sorted(routing.__all__, key=lambda n: (not n.isupper(), n))
