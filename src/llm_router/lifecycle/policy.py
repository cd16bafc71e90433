"""Pure scheduling decisions: when a waiting load may start, and what must leave first. No I/O,
no clocks; the manager feeds snapshots in and carries the answer out.

The invariant these decisions keep (with the manager starting a load only on `Plan.start`):
at most `models_max` models hold or are acquiring a worker (`loading`, `loaded`, `unloading`),
and their bytes (measured, or estimated while loading) plus the one being admitted stay within
the budget. A load that waits for room holds nothing, so waiting loads can never wait on each
other: the circular wait of several models all `loading` at once cannot arise."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Plan", "Reconciled", "Resident", "pinned_out", "plan_admission", "reconcile"]


@dataclass(frozen=True, slots=True)
class Resident:
    """A model that holds (or is acquiring, or releasing) a worker, as the decisions see it."""

    id: str
    bytes: int
    last_used: float  # any increasing measure of the last use: least recently used goes first
    busy: bool  # serving, or has requests that will be served before it can go
    pinned: bool = False
    settled: bool = True  # False while loading or unloading: it cannot be evicted now
    leaving: bool = False  # unloading: counted until it is gone, but never planned on
    new: bool = False  # loaded less than `drain_after` ago: not given up for a waiting load yet


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do for the load at the head of the queue. `start`: load it now. Otherwise unload
    `evict` (idle, least recently used first) and stop admitting new requests to `drain` (busy
    models whose current requests finish first), then decide again once room changes. All
    empty and no start: nothing can make room now (pinned or loading models fill it)."""

    start: bool
    evict: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()


def _fits(used: int, count: int, need: int, budget: int, models_max: int) -> bool:
    return used + need <= budget and (models_max == 0 or count + 1 <= models_max)


def pinned_out(residents: list[Resident], need: int, budget: int, models_max: int) -> bool:
    """Whether a load of `need` bytes can never start beside the pinned models (they never
    leave; one leaving, for a reload, does not count): waiting for room would wait until the
    configuration changes."""
    pins = [r for r in residents if r.pinned and not r.leaving]
    return not _fits(sum(r.bytes for r in pins), len(pins), need, budget, models_max)


def plan_admission(residents: list[Resident], need: int, budget: int, models_max: int) -> Plan:
    """The next step for a load of `need` bytes. It starts only when it fits beside every
    resident, leaving ones included. Otherwise idle models are chosen before busy ones (a busy
    model is drained, never cut off), least recently used first; pinned, loading and leaving
    models are never chosen, nor new ones (each load serves a while: two models taking turns
    in one place would otherwise swap for every request, the load's cost each time)."""
    used = sum(r.bytes for r in residents)
    if _fits(used, len(residents), need, budget, models_max):
        return Plan(start=True)
    staying = [r for r in residents if not r.leaving]
    used, count = sum(r.bytes for r in staying), len(staying)
    candidates = [r for r in staying if r.settled and not r.pinned and not r.new]
    order = sorted(candidates, key=lambda r: (r.busy, r.last_used))
    evict: list[str] = []
    drain: list[str] = []
    for r in order:
        if _fits(used, count, need, budget, models_max):
            break
        (drain if r.busy else evict).append(r.id)
        used -= r.bytes
        count -= 1
    if not _fits(used, count, need, budget, models_max):
        return Plan(start=False)  # even all of them would not make room: wait, disturb nobody
    return Plan(start=False, evict=tuple(evict), drain=tuple(drain))


@dataclass(frozen=True, slots=True)
class Reconciled:
    """`evict`: idle models to unload now; `fits`: whether the rest then fit; `drain`: when
    they do not, busy models (least recently used first) to take no new requests, so that
    they go idle and can be evicted (empty when even that would not make them fit)."""

    evict: tuple[str, ...]
    fits: bool
    drain: tuple[str, ...] = ()


def reconcile(residents: list[Resident], budget: int, models_max: int = 0) -> Reconciled:
    """After a measurement, or a lower `models_max` or budget: the idle models to evict
    (least recently used first) so that the residents fit in `budget` and number at most
    `models_max` (0: any) again, whether they then fit, and if not, which busy models to
    drain for it. Pinned, loading and leaving models stay; leaving ones no longer count."""
    staying = [r for r in residents if not r.leaving]
    used, count = sum(r.bytes for r in staying), len(staying)

    def fits() -> bool:
        return used <= budget and (models_max == 0 or count <= models_max)

    victims: list[str] = []
    for r in sorted(staying, key=lambda r: r.last_used):
        if fits():
            break
        if r.busy or r.pinned or not r.settled:
            continue
        victims.append(r.id)
        used -= r.bytes
        count -= 1
    if fits():
        return Reconciled(tuple(victims), True)
    drain: list[str] = []
    for r in sorted(staying, key=lambda r: r.last_used):
        if fits():
            break
        if r.busy and r.settled and not r.pinned:
            drain.append(r.id)
            used -= r.bytes
            count -= 1
    return Reconciled(tuple(victims), False, tuple(drain) if fits() else ())
