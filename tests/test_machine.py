"""Detecting the machine: cores, memory, CPU features."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from llm_router.machine import cpu_features, detect

X86 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_vnni amx_tile amx_int8\n"
ARM = "processor : 0\nFeatures\t: fp asimd evtstrm aes sve\n"


def test_x86_flags_name_the_kernels_features() -> None:
    assert cpu_features(X86, "x86_64") == (
        "AVX2", "FMA", "F16C", "AVX-512", "AVX-512 VNNI", "AMX", "AMX-INT8",
    )  # fmt: skip
    assert cpu_features("flags : fpu sse2\n", "x86_64") == ()


def test_arm_features_and_neon_on_every_aarch64() -> None:
    assert cpu_features(ARM, "aarch64") == ("NEON", "SVE")
    assert cpu_features("", "aarch64") == ("NEON",)


def test_detect_reads_this_machine(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86)
    m = detect(cpuinfo)
    assert m.logical_cores == len(os.sched_getaffinity(0))
    assert 1 <= m.physical_cores <= m.logical_cores
    assert m.physical_cores <= (psutil.cpu_count(logical=False) or m.logical_cores)
    assert m.memory_total == psutil.virtual_memory().total
    assert "AVX2" in m.features and "AVX-512" in m.summary()
    assert detect(tmp_path / "missing").features == ()


def test_a_containers_memory_limit_is_the_memory_there_is(tmp_path: Path) -> None:
    """The budget's share was of the host's memory whatever a container's limit (`docker run
    -m 2g`, a pod's limit): the cgroup's limit bounds it (found from outside)."""
    from llm_router.machine import memory_limit

    v2 = (tmp_path / "memory.max", tmp_path / "memory.current")
    v1 = (tmp_path / "limit_in_bytes", tmp_path / "usage_in_bytes")
    v2[0].write_text("2147483648\n")
    v2[1].write_text("536870912\n")
    assert memory_limit(2**40, (v2, v1)) == (2**31, 2**29)
    v2[0].write_text("max\n")
    assert memory_limit(2**40, (v2, v1)) is None  # no limit
    v1[0].write_text(f"{2**63 - 4096}\n")  # v1's "no limit": more than the machine has
    v1[1].write_text("1\n")
    assert memory_limit(2**40, ((tmp_path / "absent", tmp_path / "absent2"), v1)) is None
    assert memory_limit(2**40, ((tmp_path / "absent", tmp_path / "absent2"),)) is None
