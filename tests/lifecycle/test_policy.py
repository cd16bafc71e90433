"""The admission and reconcile decisions on their own: snapshots in, a plan out; no processes,
no clocks. Hand-picked cases first, then properties over random snapshots."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_router.lifecycle.policy import Plan, Reconciled, Resident, plan_admission, reconcile

MiB = 2**20
BIG = 1000


def idle(model_id: str, size: int = 10, last_used: float = 0, *, pinned: bool = False) -> Resident:
    return Resident(model_id, size, last_used, busy=False, pinned=pinned)


def busy(model_id: str, size: int = 10, last_used: float = 0.0) -> Resident:
    return Resident(model_id, size, last_used, busy=True)


def loading(model_id: str, size: int = 10) -> Resident:
    return Resident(model_id, size, 0, busy=False, settled=False)


def leaving(model_id: str, size: int = 10) -> Resident:
    return Resident(model_id, size, 0, busy=False, settled=False, leaving=True)


START = Plan(start=True)
WAIT = Plan(start=False)


def test_room_left_starts_at_once() -> None:
    assert plan_admission([idle("a"), idle("b")], need=10, budget=BIG, models_max=3) == START


def test_nothing_loaded_fits() -> None:
    assert plan_admission([], need=10, budget=10, models_max=1) == START


def test_count_limit_evicts_least_recently_used_first() -> None:
    residents = [idle("new", last_used=30), idle("old", last_used=10), idle("mid", last_used=20)]
    plan = plan_admission(residents, need=10, budget=BIG, models_max=2)
    assert plan == Plan(start=False, evict=("old", "mid"))


def test_count_limit_evicts_only_as_many_as_needed() -> None:
    residents = [idle("b", last_used=2), idle("a", last_used=1)]
    assert plan_admission(residents, need=10, budget=BIG, models_max=2).evict == ("a",)


def test_memory_limit_evicts_lru_until_it_fits() -> None:
    residents = [idle("a", 40, 1), idle("b", 40, 2), idle("c", 40, 3)]
    # 120 used + 50 needed in 100: without a it is 130, without a and b it is 90.
    plan = plan_admission(residents, need=50, budget=100, models_max=0)
    assert plan == Plan(start=False, evict=("a", "b"))


def test_memory_limit_exact_fit_starts() -> None:
    assert plan_admission([idle("a", 60)], need=40, budget=100, models_max=0) == START


def test_both_limits_apply_together() -> None:
    # The count allows one more, memory does not: memory decides.
    residents = [idle("a", 50, 1), idle("b", 40, 2)]
    assert plan_admission(residents, need=20, budget=100, models_max=5).evict == ("a",)
    # Memory allows one more, the count does not: the count decides.
    residents = [idle("a", 1, 1), idle("b", 1, 2)]
    assert plan_admission(residents, need=1, budget=100, models_max=2).evict == ("a",)


def test_idle_models_go_before_busy_ones() -> None:
    residents = [busy("old", last_used=1), idle("new", last_used=2)]
    assert plan_admission(residents, need=10, budget=BIG, models_max=2) == Plan(
        start=False, evict=("new",)
    )


def test_busy_model_is_drained_not_cut_off() -> None:
    """llama.cpp #21678: a busy model is never evicted mid-request; it is drained (serves what
    is queued for it, takes nothing new) so that the waiting load gets room in bounded time."""
    residents = [busy("a", last_used=1), busy("b", last_used=2)]
    assert plan_admission(residents, need=10, budget=BIG, models_max=2) == Plan(
        start=False, drain=("a",)
    )


def test_pinned_model_is_never_chosen() -> None:
    residents = [idle("pinned", last_used=1, pinned=True), idle("new", last_used=2)]
    assert plan_admission(residents, need=10, budget=BIG, models_max=2).evict == ("new",)


def test_loading_models_are_never_chosen() -> None:
    """The circular wait of llama.cpp's router and of this project's first scheduler: models
    being loaded are not victims, and a model waiting for room is not a resident at all."""
    assert plan_admission([loading("a"), loading("b")], 10, BIG, 2) == WAIT
    assert plan_admission([loading("a"), idle("b", last_used=5)], 10, BIG, 2) == Plan(
        start=False, evict=("b",)
    )


def test_leaving_models_count_until_gone_and_are_not_planned_twice() -> None:
    # `a` is on its way out: no second victim is chosen, and the load waits for it to go.
    assert plan_admission([leaving("a"), idle("b", last_used=1)], 10, BIG, 2) == WAIT
    # Once gone, the load fits.
    assert plan_admission([idle("b", last_used=1)], 10, BIG, 2) == START


def test_partial_eviction_that_would_not_suffice_disturbs_nobody() -> None:
    residents = [idle("small", 20, 1), Resident("big", 70, 2, busy=True, pinned=True)]
    assert plan_admission(residents, need=40, budget=100, models_max=0) == WAIT


def test_pinned_and_loading_together_block() -> None:
    residents = [idle("p", last_used=1, pinned=True), loading("b")]
    assert plan_admission(residents, need=1, budget=BIG, models_max=2) == WAIT


def test_models_max_zero_means_no_count_limit() -> None:
    residents = [idle(str(i), 1, i) for i in range(50)]
    assert plan_admission(residents, need=1, budget=BIG, models_max=0) == START


def test_one_big_or_two_small() -> None:
    """A budget that holds the big model alone or both small ones (llama.cpp PR #25326's
    100 GB + 29 GB case, scaled down)."""
    budget, big, small = 120 * MiB, 100 * MiB, 29 * MiB
    residents = [idle("s1", small, 1), idle("s2", small, 2)]
    assert plan_admission(residents, big, budget, 0) == Plan(start=False, evict=("s1", "s2"))
    assert plan_admission([idle("big", big, 3)], small, budget, 0).evict == ("big",)
    assert plan_admission([idle("s1", small, 4)], small, budget, 0) == START
    # A small one serving: the idle one goes now, the busy one drains.
    residents = [busy("s1", small, 1), idle("s2", small, 2)]
    assert plan_admission(residents, big, budget, 0) == Plan(
        start=False, evict=("s2",), drain=("s1",)
    )


def test_reconcile_evicts_idle_lru_until_under_budget() -> None:
    residents = [idle("a", 40, 1), busy("b", 40, 0), idle("c", 40, 3)]
    assert reconcile(residents, budget=90) == Reconciled(("a",), True)
    # not enough with the idle ones gone: the busy one drains, then goes once idle
    assert reconcile(residents, budget=30) == Reconciled(("a", "c"), False, ("b",))
    assert reconcile([leaving("a", 500), idle("b", 10)], budget=20) == Reconciled((), True)


def test_reconcile_evicts_idle_lru_down_to_a_lower_models_max() -> None:
    """A reload that lowers `models_max`: the least recently used idle models go until the
    count fits; then busy ones drain (under steady traffic they were never idle, and the
    lower limit never held); pinned ones stay even if that leaves it over."""
    residents = [idle("a", 1, 1), busy("b", 1, 0), idle("c", 1, 3), idle("d", 1, 2)]
    assert reconcile(residents, BIG, models_max=2) == Reconciled(("a", "d"), True)
    assert reconcile(residents, BIG, models_max=0) == Reconciled((), True)
    pinned = [busy("b", 1, 0), idle("p", 1, 1, pinned=True)]
    assert reconcile(pinned, BIG, models_max=1) == Reconciled((), False, ("b",))
    assert reconcile([busy("b", 1, 0), busy("c", 1, 1)], BIG, 1).drain == ("b",)
    both_pinned = [idle("p", 1, 0, pinned=True), idle("q", 1, 1, pinned=True)]
    assert reconcile(both_pinned, BIG, 1) == Reconciled((), False)  # nothing would help


# -- properties over random snapshots ----------------------------------------------------------

residents_st = st.lists(
    st.builds(
        Resident,
        id=st.uuids().map(str),
        bytes=st.integers(1, 100),
        last_used=st.floats(0, 100),
        busy=st.booleans(),
        pinned=st.booleans(),
        settled=st.booleans(),
        leaving=st.booleans(),
    ),
    max_size=6,
)


@settings(max_examples=400, derandomize=True)
@given(residents_st, st.integers(1, 100), st.integers(1, 300), st.integers(0, 4))
def test_a_plan_keeps_the_invariant(
    residents: list[Resident], need: int, budget: int, models_max: int
) -> None:
    """Start only when the load fits beside everyone (leaving ones too); choose only settled,
    unpinned, not leaving models; idle ones are evicted and busy ones drained; and what is
    chosen makes room once it is gone (or nothing is chosen at all)."""
    plan = plan_admission(residents, need, budget, models_max)
    used, count = sum(r.bytes for r in residents), len(residents)
    fits_now = used + need <= budget and (models_max == 0 or count < models_max)
    assert plan.start == fits_now
    by_id = {r.id: r for r in residents}
    chosen = [by_id[i] for i in plan.evict + plan.drain]
    assert all(r.settled and not r.pinned and not r.leaving for r in chosen)
    assert all(not by_id[i].busy for i in plan.evict)
    assert all(by_id[i].busy for i in plan.drain)
    if plan.start:
        assert chosen == []
    if chosen:
        rest = [r for r in residents if not r.leaving and r not in chosen]
        assert sum(r.bytes for r in rest) + need <= budget
        assert models_max == 0 or len(rest) < models_max
        # No busy model is drained while an idle one could have gone instead.
        if plan.drain:
            spare = [
                r
                for r in residents
                if r.settled
                and not r.pinned
                and not r.leaving
                and not r.busy
                and r.id not in plan.evict
            ]
            assert spare == []


@settings(max_examples=400, derandomize=True)
@given(residents_st, st.integers(1, 300), st.integers(0, 4))
def test_reconcile_evicts_only_idle_settled_models_and_only_as_many_as_needed(
    residents: list[Resident], budget: int, models_max: int
) -> None:
    """Victims are idle, settled, unpinned and staying; once they are gone the rest fits
    exactly when `fits` says so; and every victim but the last was not yet enough (least
    recently used first: no more evicted than needed). Drained models are busy, settled and
    unpinned, only when the victims are not enough, and with them gone too it fits."""
    done = reconcile(residents, budget, models_max)
    victims, fits = done.evict, done.fits
    by_id = {r.id: r for r in residents}
    assert len(set(victims)) == len(victims)
    chosen = [by_id[i] for i in victims]
    assert all(r.settled and not r.pinned and not r.leaving and not r.busy for r in chosen)
    assert [r.last_used for r in chosen] == sorted(r.last_used for r in chosen)

    def fit(rest: list[Resident]) -> bool:
        return sum(r.bytes for r in rest) <= budget and (models_max == 0 or len(rest) <= models_max)

    staying = [r for r in residents if not r.leaving]
    assert fit([r for r in staying if r.id not in victims]) == fits
    for n in range(len(victims)):
        assert not fit([r for r in staying if r.id not in victims[:n]])
    drained = [by_id[i] for i in done.drain]
    assert all(r.busy and r.settled and not r.pinned and not r.leaving for r in drained)
    assert not (fits and drained)
    if drained:
        assert fit([r for r in staying if r.id not in (*victims, *done.drain)])


def test_a_model_just_loaded_is_not_given_up_for_a_waiting_load() -> None:
    """Idle or busy, a model loaded less than `drain_after` ago stays (the load waits, and
    nobody else is disturbed for it), so two models taking turns do not swap per request."""
    new = [Resident("a", 10, 5, busy=False, new=True), Resident("b", 10, 1, busy=True, new=True)]
    assert plan_admission(new, 10, 100, models_max=2) == Plan(start=False)
    mixed = [Resident("a", 10, 5, busy=False, new=True), idle("old", 10, 9)]
    assert plan_admission(mixed, 10, 100, models_max=2) == Plan(start=False, evict=("old",))
