"""What the machine has: cores (physical and logical, within this process's CPU affinity),
memory, and the CPU features the engines' kernels care about (AVX2, AVX-512, AMX, NEON).

Read once at start-up (`detect()`: psutil, /proc/cpuinfo and the cgroup's memory limit, a
few milliseconds) and logged once by `serve`; lifecycle/fit.py derives the default engine
settings from it and `doctor` prints it. A snapshot: nothing here watches for hot-plugged CPUs or memory."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["FEATURES", "Machine", "available_memory", "cpu_features", "detect", "memory_limit"]

# cgroup v2's and v1's memory limit and use; v1 reads a huge number for "no limit"
_CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ),
)

# Feature names as /proc/cpuinfo spells them -> the name we report. On ARM, `asimd` is NEON.
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "asimd": "NEON",
    "neon": "NEON",
    "sve": "SVE",
    "f16c": "F16C",
    "fma": "FMA",
}


@dataclass(frozen=True, slots=True)
class Machine:
    logical_cores: int  # CPUs this process may run on
    physical_cores: int  # cores behind them (hyper-threads counted once)
    memory_total: int  # bytes
    memory_available: int  # bytes, at detection
    features: tuple[str, ...]
    arch: str

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{self.physical_cores} physical / {self.logical_cores} logical cores, "
            f"{self.memory_total / 2**30:.1f} GiB memory ({self.memory_available / 2**30:.1f} "
            f"available), {self.arch}, CPU features: {', '.join(self.features) or 'none known'}"
        )


def cpu_features(cpuinfo: str, arch: str) -> tuple[str, ...]:
    """The features named in FEATURES found in /proc/cpuinfo's `flags` (x86) or `Features`
    (ARM) lines; NEON on any 64-bit ARM (it is part of AArch64)."""
    found: list[str] = []
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            for flag in value.split():
                label = FEATURES.get(flag.lower())
                if label and label not in found:
                    found.append(label)
            break  # every core lists the same
    if arch in ("aarch64", "arm64") and "NEON" not in found:
        found.append("NEON")
    return tuple(found)


def _logical() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _physical(logical: int) -> int:
    """Physical cores usable by this process: the machine's, scaled by the share of its logical
    CPUs our affinity allows (a container pinned to 4 of 16 hyper-threads gets 2)."""
    total_logical = psutil.cpu_count(logical=True) or logical
    total_physical = psutil.cpu_count(logical=False) or total_logical
    per_core = max(1, round(total_logical / total_physical))
    return max(1, min(total_physical, logical // per_core or 1))


def memory_limit(
    total: int, files: tuple[tuple[Path, Path], ...] = _CGROUP_FILES
) -> tuple[int, int] | None:
    """This process's cgroup memory limit and what the cgroup uses now, in bytes; None when it
    has none below the machine's `total`: a container's `-m 2g`, a pod's limit."""
    for limit_file, usage_file in files:
        try:
            text = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            return None
        return (limit, usage) if limit < total else None
    return None


def available_memory() -> tuple[int, int]:
    """The memory there is, and of it what is available now: the machine's, or within the
    cgroup's limit when it has a lower one (a budget of 80% of the host's memory, inside a
    container limited to 2 GiB, had it killed for running out of memory)."""
    memory = psutil.virtual_memory()
    total, available = memory.total, memory.available
    limited = memory_limit(total)
    if limited is not None:
        limit, usage = limited
        total, available = limit, max(0, min(available, limit - usage))
    return total, available


def detect(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> Machine:
    arch = platform.machine().lower()
    try:
        cpuinfo = cpuinfo_path.read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    logical = _logical()
    total, available = available_memory()
    return Machine(
        logical_cores=logical,
        physical_cores=_physical(logical),
        memory_total=total,
        memory_available=available,
        features=cpu_features(cpuinfo, arch),
        arch=arch,
    )
