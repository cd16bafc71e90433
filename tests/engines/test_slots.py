"""Slot choice and prefix sources: pure decisions over what each slot's cache holds."""

from __future__ import annotations

from llm_router.engines.slots import MIN_SHARED_PREFIX, choose_slot, closing_move, prefix_source

SYSTEM = list(range(100, 100 + MIN_SHARED_PREFIX + 8))


def test_a_short_prompt_takes_the_lowest_free_slot_whatever_it_shares() -> None:
    held = [[], [1, 2, 3], [1, 2], []]
    assert choose_slot([3, 1, 2], held, [1, 2, 3, 4]) == (1, 3)  # lowest free is 1 here
    assert choose_slot([3, 2], held, [1, 2, 3, 4]) == (2, 2)


def test_a_long_held_prefix_wins_over_packing() -> None:
    held = [[], [], [*SYSTEM, 7], []]
    assert choose_slot([0, 1, 2, 3], held, [*SYSTEM, 9]) == (2, len(SYSTEM))


def test_a_prefix_is_copied_only_from_a_slot_holding_enough_more_of_it() -> None:
    held = [[], [*SYSTEM, 5, 6], [SYSTEM[0]]]
    assert prefix_source(0, 0, held, [*SYSTEM, 9]) == (1, len(SYSTEM))
    assert prefix_source(2, 1, held, [*SYSTEM, 9]) == (1, len(SYSTEM))
    assert prefix_source(0, 0, held, [*SYSTEM[:10], 9]) is None  # 10 tokens: not worth it
    assert prefix_source(1, len(SYSTEM), held, [*SYSTEM, 9]) is None  # it holds it already


def test_consecutive_busy_slots_need_no_move() -> None:
    assert closing_move([], [0, 1, 2, 3]) is None
    assert closing_move([0, 1, 2], [3]) is None
    assert closing_move([2, 3], [0, 1]) is None  # consecutive anywhere is one decode pass


def _close(busy: list[int], free: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
    moves = []
    while (move := closing_move(busy, free)) is not None:
        moves.append(move)
        src, dst = move
        busy = sorted([b for b in busy if b != src] + [dst])
        free = sorted([f for f in free if f != dst] + [src])
    return moves, busy


def test_the_highest_busy_slot_moves_into_the_lowest_gap_until_none_is_left() -> None:
    assert _close([0, 2, 3, 5], [1, 4, 6, 7]) == ([(5, 1)], [0, 1, 2, 3])
    assert _close([0, 3, 5], [1, 2, 4, 6, 7]) == ([(5, 1), (3, 2)], [0, 1, 2])
    assert _close([1, 7], [0, 2, 3, 4, 5, 6]) == ([(7, 2)], [1, 2])
