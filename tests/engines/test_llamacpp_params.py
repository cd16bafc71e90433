"""llama.cpp model parameters: weight repacking is the user's choice, and off by default only
where llama.cpp's AMX kernels would run (their matmul segfaults, llama.cpp#20824); the
`load_mode` reaches llama.cpp: `mmap+mlock` locks a model's weights in RAM, or says why it
cannot."""

from __future__ import annotations

import logging
import os
import resource
import typing
from pathlib import Path

import llama_cpp as lc
import pytest

from llm_router.config import EngineOptions
from llm_router.engines.base import LoadSpec
from llm_router.engines.llamacpp import model_params
from llm_router.engines.llamacpp_load import LOAD_MODES, load_model


def test_an_explicit_choice_is_kept() -> None:
    assert model_params(True).use_extra_bufts is True
    assert model_params(False).use_extra_bufts is False


def test_default_avoids_the_amx_kernels_only_where_they_are_built_in() -> None:
    lc.llama_backend_init()
    has_amx = b"AMX_INT8 = 1" in lc.llama_print_system_info()
    assert model_params(None).use_extra_bufts is (not has_amx)


def test_every_load_mode_of_the_config_is_the_one_llama_cpp_names_so() -> None:
    names = typing.get_args(typing.get_args(EngineOptions.model_fields["load_mode"].annotation)[0])
    assert set(names) == set(LOAD_MODES)
    for name, mode in LOAD_MODES.items():
        assert lc.llama_load_mode_name(mode) == name.encode()


def _locked_bytes() -> int:
    """This process's locked memory (VmLck), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmLck in /proc/self/status")


def test_mlock_locks_the_weights_or_warns_that_it_cannot(
    smollm2_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = smollm2_gguf.stat().st_size
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    may_lock = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= size
    before = _locked_bytes()
    plain = load_model(LoadSpec(str(smollm2_gguf), {}))
    try:
        assert _locked_bytes() == before  # off by default
    finally:
        lc.llama_model_free(plain)
    with caplog.at_level(logging.WARNING, logger="llm_router.engines.llamacpp_load"):
        model = load_model(LoadSpec(str(smollm2_gguf), {"load_mode": "mmap+mlock"}))
    try:
        locked = _locked_bytes() - before
    finally:
        lc.llama_model_free(model)
    if may_lock:
        assert locked >= 0.9 * size, (locked, size)
        assert not caplog.records
    else:
        assert "ulimit -l" in caplog.text
    assert _locked_bytes() == before  # unlocked with the model
