"""The CPU thread budget shared by busy models.

On a CPU box threads are the scarcest thing: two models each decoding with all cores
oversubscribe them and total throughput collapses (measured here: ~70 tok/s alone, 6-9 beside
two busy processes). So the cores are split among the models that are generating right now,
and a model alone gets them all back. Pure arithmetic plus one message per change."""

from __future__ import annotations

import os

from ..worker.client import Worker

__all__ = ["ThreadBudget", "cores_present", "split"]


def cores_present() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split(cores: int, busy: list[int | None]) -> list[int]:
    """Threads for each busy model: an equal share of `cores` (at least one), capped by the
    model's own configured thread count where it has one."""
    if not busy:
        return []
    share = max(1, cores // len(busy))
    return [min(share, cap) if cap else share for cap in busy]


class ThreadBudget:
    def __init__(self, cores: int) -> None:
        self.cores = cores
        self._sent: dict[int, int] = {}  # worker pid -> threads last told

    def apply(self, busy: list[tuple[Worker, int | None]]) -> None:
        """`busy`: the workers generating now, with their configured thread cap."""
        for (worker, _), threads in zip(busy, split(self.cores, [c for _, c in busy]), strict=True):
            if self._sent.get(worker.pid) != threads:
                self._sent[worker.pid] = threads
                worker.set_threads(threads)

    def forget(self, worker: Worker) -> None:
        self._sent.pop(worker.pid, None)
