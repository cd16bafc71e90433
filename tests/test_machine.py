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
