"""TargetStats on a hand-driven clock: EWMAs, the sliding error window, load bookkeeping."""

from __future__ import annotations

import pytest

from llm_router.routing import TargetSnapshot, TargetStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fresh_stats_are_unmeasured() -> None:
    assert TargetStats().snapshot() == TargetSnapshot()


def test_first_sample_sets_the_ewma_then_alpha_weights_new_ones() -> None:
    stats = TargetStats(alpha=0.5)
    stats.record_start()
    stats.record_success(2.0, 0)
    stats.record_start()
    stats.record_success(4.0, 0)
    assert stats.snapshot().latency == pytest.approx(3.0)


def test_default_alpha_is_a_fifth() -> None:
    stats = TargetStats()
    for latency in (1.0, 6.0):
        stats.record_start()
        stats.record_success(latency, 0)
    assert stats.snapshot().latency == pytest.approx(2.0)


def test_time_to_first_token_ewma() -> None:
    stats = TargetStats(alpha=0.5)
    stats.record_first_token(0.2)
    stats.record_first_token(0.4)
    assert stats.snapshot().ttft == pytest.approx(0.3)


def test_tokens_per_second_counts_decode_time_after_the_first_token() -> None:
    stats = TargetStats()
    stats.record_start()
    stats.record_success(3.0, 100, ttft=1.0)
    assert stats.snapshot().tokens_per_second == pytest.approx(50.0)


def test_tokens_per_second_without_ttft_uses_the_whole_latency() -> None:
    stats = TargetStats()
    stats.record_start()
    stats.record_success(4.0, 100)
    assert stats.snapshot().tokens_per_second == pytest.approx(25.0)


def test_an_answer_that_came_all_at_once_leaves_speed_as_it_was() -> None:
    """A constrained tool call is held until whole: its first event is nearly its end, and
    64 tokens in 10 ms is no decode speed (the next request would be routed by it)."""
    stats = TargetStats()
    stats.record_start()
    stats.record_success(3.0, 100, ttft=1.0)
    stats.record_start()
    stats.record_success(2.0, 64, ttft=1.99)
    assert stats.snapshot().tokens_per_second == pytest.approx(50.0)


def test_no_tokens_leaves_speed_unmeasured() -> None:
    stats = TargetStats()
    stats.record_start()
    stats.record_success(1.0, 0)
    assert stats.snapshot().tokens_per_second is None


def test_in_flight_rises_and_falls_with_every_kind_of_end() -> None:
    stats = TargetStats()
    for _ in range(3):
        stats.record_start()
    assert stats.snapshot().in_flight == 3
    stats.record_success(1.0, 1)
    stats.record_failure()
    stats.record_cancelled()
    assert stats.snapshot().in_flight == 0
    stats.record_cancelled()  # an unmatched end never goes negative
    assert stats.snapshot().in_flight == 0


def test_cancellation_is_not_an_outcome() -> None:
    stats = TargetStats()
    stats.record_start()
    stats.record_cancelled()
    assert stats.snapshot().outcomes == 0


def test_error_rate_over_the_last_n_outcomes() -> None:
    stats = TargetStats(window_size=4, clock=Clock())
    for ok in (False, False, True, True, True, False):
        stats.record_start()
        stats.record_success(1.0, 1) if ok else stats.record_failure()
    snap = stats.snapshot()
    assert (snap.error_rate, snap.outcomes) == (0.25, 4)


def test_error_rate_forgets_outcomes_older_than_the_window() -> None:
    clock = Clock()
    stats = TargetStats(window_seconds=10, clock=clock)
    stats.record_failure()
    clock.now += 6
    stats.record_success(1.0, 1)
    assert stats.error_rate() == (0.5, 2)
    clock.now += 5  # the failure is 11 s old now
    assert stats.error_rate() == (0.0, 1)
    clock.now += 6
    assert stats.error_rate() == (0.0, 0)


def test_queue_and_loaded_state() -> None:
    stats = TargetStats(loaded=False, cold_load_seconds=3.0)
    stats.set_queued(5)
    snap = stats.snapshot()
    assert (snap.queued, snap.loaded, snap.cold_load_seconds) == (5, False, 3.0)
    stats.set_queued(-1)
    stats.set_loaded(True)
    assert (stats.snapshot().queued, stats.snapshot().loaded) == (0, True)


def test_measured_cold_load_replaces_the_estimate_then_averages() -> None:
    stats = TargetStats(alpha=0.5, cold_load_seconds=10.0)
    stats.record_cold_load(2.0)
    assert stats.snapshot().cold_load_seconds == 2.0
    stats.record_cold_load(4.0)
    assert stats.snapshot().cold_load_seconds == pytest.approx(3.0)


def test_snapshot_is_a_frozen_copy() -> None:
    stats = TargetStats()
    snap = stats.snapshot()
    stats.record_start()
    assert snap.in_flight == 0
    with pytest.raises(AttributeError):
        snap.in_flight = 3  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"alpha": 0}, {"alpha": 1.5}, {"window_size": 0}])
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TargetStats(**kwargs)  # type: ignore[arg-type]
