"""The eviction decision on its own: snapshots in, a verdict out; no processes, no clocks."""

from __future__ import annotations

from llm_router.lifecycle.policy import Resident, Verdict, choose_victims

MiB = 2**20
BIG = 1000


def idle(model_id: str, size: int = 10, last_used: float = 0, *, pinned: bool = False) -> Resident:
    return Resident(model_id, size, last_used, busy=False, pinned=pinned)


def busy(model_id: str, size: int = 10, last_used: float = 0.0) -> Resident:
    return Resident(model_id, size, last_used, busy=True)


def test_room_left_evicts_nothing() -> None:
    verdict = choose_victims([idle("a"), idle("b")], need=10, budget=BIG, models_max=3)
    assert verdict == Verdict((), True)


def test_nothing_loaded_fits() -> None:
    assert choose_victims([], need=10, budget=10, models_max=1) == Verdict((), True)


def test_count_limit_evicts_least_recently_used_first() -> None:
    residents = [idle("new", last_used=30), idle("old", last_used=10), idle("mid", last_used=20)]
    verdict = choose_victims(residents, need=10, budget=BIG, models_max=2)
    assert verdict == Verdict(("old", "mid"), True)


def test_count_limit_evicts_only_as_many_as_needed() -> None:
    residents = [idle("b", last_used=2), idle("a", last_used=1)]
    assert choose_victims(residents, need=10, budget=BIG, models_max=2).victims == ("a",)


def test_memory_limit_evicts_lru_until_it_fits() -> None:
    residents = [idle("a", 40, 1), idle("b", 40, 2), idle("c", 40, 3)]
    # 120 used + 50 needed in 100: without a it is 130, without a and b it is 90.
    verdict = choose_victims(residents, need=50, budget=100, models_max=0)
    assert verdict == Verdict(("a", "b"), True)


def test_memory_limit_exact_fit_needs_no_eviction() -> None:
    assert choose_victims([idle("a", 60)], need=40, budget=100, models_max=0) == Verdict((), True)


def test_both_limits_apply_together() -> None:
    # The count allows one more, memory does not: memory decides.
    residents = [idle("a", 50, 1), idle("b", 40, 2)]
    assert choose_victims(residents, need=20, budget=100, models_max=5).victims == ("a",)
    # Memory allows one more, the count does not: the count decides.
    residents = [idle("a", 1, 1), idle("b", 1, 2)]
    assert choose_victims(residents, need=1, budget=100, models_max=2).victims == ("a",)


def test_busy_model_is_never_chosen() -> None:
    residents = [busy("old", last_used=1), idle("new", last_used=2)]
    verdict = choose_victims(residents, need=10, budget=BIG, models_max=2)
    assert verdict == Verdict(("new",), True)


def test_pinned_model_is_never_chosen() -> None:
    residents = [idle("pinned", last_used=1, pinned=True), idle("new", last_used=2)]
    verdict = choose_victims(residents, need=10, budget=BIG, models_max=2)
    assert verdict == Verdict(("new",), True)


def test_everything_busy_does_not_fit_and_evicts_nobody() -> None:
    residents = [busy("a", last_used=1), busy("b", last_used=2)]
    assert choose_victims(residents, need=10, budget=BIG, models_max=2) == Verdict((), False)


def test_partial_eviction_that_would_not_suffice_evicts_nobody() -> None:
    # Evicting the idle one alone still leaves the busy one too big: nobody is evicted.
    residents = [idle("small", 20, 1), busy("big", 70, 2)]
    assert choose_victims(residents, need=40, budget=100, models_max=0) == Verdict((), False)


def test_pinned_and_busy_together_block() -> None:
    residents = [idle("p", last_used=1, pinned=True), busy("b", last_used=2)]
    assert choose_victims(residents, need=1, budget=BIG, models_max=2) == Verdict((), False)


def test_models_max_zero_means_no_count_limit() -> None:
    residents = [idle(str(i), 1, i) for i in range(50)]
    assert choose_victims(residents, need=1, budget=BIG, models_max=0) == Verdict((), True)


def test_one_big_or_two_small() -> None:
    """A budget that holds the big model alone or both small ones (llama.cpp PR #25326's
    100 GB + 29 GB case, scaled down)."""
    budget, big, small = 120 * MiB, 100 * MiB, 29 * MiB
    # Two small ones loaded: the big one evicts both.
    residents = [idle("s1", small, 1), idle("s2", small, 2)]
    assert choose_victims(residents, big, budget, 0) == Verdict(("s1", "s2"), True)
    # The big one loaded: the first small one evicts it, the second small one fits beside.
    assert choose_victims([idle("big", big, 3)], small, budget, 0) == Verdict(("big",), True)
    assert choose_victims([idle("s1", small, 4)], small, budget, 0) == Verdict((), True)
    # A small one serving: the big one cannot come in until it is idle.
    residents = [busy("s1", small, 1), idle("s2", small, 2)]
    assert choose_victims(residents, big, budget, 0) == Verdict((), False)


def test_lru_order_ignores_input_order() -> None:
    residents = [idle(c, 10, t) for c, t in (("c", 3.0), ("a", 1.0), ("d", 4.0), ("b", 2.0))]
    verdict = choose_victims(residents, need=25, budget=40, models_max=0)
    assert verdict == Verdict(("a", "b", "c"), True)
