"""Pure scheduling decisions: which loaded models to evict to make room. No I/O, no clocks;
the manager feeds snapshots in and carries the answer out."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Resident", "Verdict", "choose_victims"]


@dataclass(frozen=True, slots=True)
class Resident:
    id: str
    bytes: int
    last_used: float
    busy: bool  # serving, has waiters, or loading: never evicted
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    victims: tuple[str, ...]  # evict these (least recently used first), then load
    fits: bool  # False: not enough can be evicted now; wait for a busy model to go idle


def choose_victims(residents: list[Resident], need: int, budget: int, models_max: int) -> Verdict:
    """Evict least-recently-used idle models until one more model of `need` bytes fits in
    `budget` and in `models_max` (0: no count limit). Busy and pinned models stay."""
    used = sum(r.bytes for r in residents)
    count = len(residents)
    victims: list[str] = []

    def fits() -> bool:
        return used + need <= budget and (models_max == 0 or count + 1 <= models_max)

    for r in sorted(residents, key=lambda r: r.last_used):
        if fits():
            break
        if r.busy or r.pinned:
            continue
        victims.append(r.id)
        used -= r.bytes
        count -= 1
    ok = fits()
    return Verdict(tuple(victims) if ok else (), ok)
