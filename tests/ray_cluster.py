"""A real two-node Ray cluster on loopback for the Ray tests and bench/ray_hop.py: a head and
a second node (`ray start --address`) on this machine, each with its own resources, under a
temporary directory of their own. Stopped by the pids of what they started (never `ray
stop`, which would stop every cluster of this user on the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from servers import free_port

__all__ = ["RayCluster", "wait_until"]

RAY = str(Path(sys.executable).with_name("ray"))
COMMON = ("--node-ip-address", "127.0.0.1", "--disable-usage-stats")


class RayCluster:
    def __init__(self, head_cpus: int = 2, node_cpus: int = 2) -> None:
        # Short: Ray's Unix socket paths live under it (at most 107 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.gcs = f":{self.port}"  # the end of `--address=IP:PORT` in its processes' commands
        self.head_cpus = head_cpus
        self.node_cpus = node_cpus
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"

    def _ray(self, *args: str) -> None:
        subprocess.run(
            [RAY, *args],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> RayCluster:
        """A head and a second node."""
        self.start_head()
        self._ray(
            "start",
            "--address",
            self.address,
            "--num-cpus",
            str(self.node_cpus),
            "--resources",
            '{"second_node": 1}',
            *COMMON,
        )
        return self

    def start_head(self) -> RayCluster:
        self._ray(
            "start",
            "--head",
            "--port",
            str(self.port),
            "--include-dashboard=false",
            "--ray-client-server-port",
            str(free_port()),
            "--num-cpus",
            str(self.head_cpus),
            "--resources",
            '{"head_node": 1}',
            "--temp-dir",
            self.temp_dir,
            *COMMON,
        )
        return self

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its temporary directory or its GCS
        address (GCS, raylets, Ray workers, the client server) and their descendants (model
        worker processes)."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info["cmdline"] or ()
                if any(self.temp_dir in a or a.endswith(self.gcs) for a in cmdline):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:g} s")
