"""Which model replica holds which model, on which node: for GET /models.

Serve routes each call to one replica, so no call can ask all of them. Instead every model
replica reports what it holds to this one-replica deployment every second (replica.py), and
each router replica polls it (`ReplicaView`). A replica that stopped reporting (killed, its
node gone) drops out after STALE seconds; Serve starts its replacement, which reports anew."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

__all__ = ["STALE", "Directory", "ReplicaView"]

log = logging.getLogger(__name__)
STALE = 5.0  # seconds without a report before a replica is left out
POLL_EVERY = 1.0


class Directory:
    """The reports, by replica. Plain methods: Serve runs them one at a time per replica."""

    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, snapshot: dict[str, Any]) -> None:
        self._reports[str(snapshot["replica"])] = (time.monotonic(), snapshot)

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica that reported within STALE seconds, by node then replica."""
        now = time.monotonic()
        self._reports = {k: v for k, v in self._reports.items() if now - v[0] <= STALE}
        return sorted(
            (snap for _, snap in self._reports.values()),
            key=lambda s: (str(s["node_id"]), str(s["replica"])),
        )


class ReplicaView:
    """A router replica's copy of the directory, refreshed every second in the background
    (started by `start`, on the event loop). Reads are snapshots, at most ~1 s old."""

    def __init__(self, directory: Any) -> None:
        self._directory = directory
        self._task: asyncio.Task[None] | None = None
        self.replicas: list[dict[str, Any]] = []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="ray-replica-view")

    async def refresh(self) -> None:
        self.replicas = list(await self._directory.replicas.remote())

    def holding(self, model_id: str) -> list[dict[str, Any]]:
        """The replicas holding `model_id`: each with its node, pid and the model's state."""
        out = []
        for replica in self.replicas:
            for model in replica.get("models", ()):
                if model.get("id") == model_id:
                    out.append(
                        {
                            "replica": replica["replica"],
                            "node_id": replica["node_id"],
                            "node_ip": replica["node_ip"],
                            "replica_pid": replica["pid"],
                            **{k: v for k, v in model.items() if k != "id"},
                        }
                    )
        return out

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the directory restarting: keep the last copy
                log.debug("directory poll failed: %s", exc)
            await asyncio.sleep(POLL_EVERY)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
