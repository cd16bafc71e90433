"""llama.cpp model parameters: weight repacking is the user's choice, and off by default only
where llama.cpp's AMX kernels would run (their matmul segfaults, llama.cpp#20824)."""

from __future__ import annotations

import llama_cpp as lc

from llm_router.engines.llamacpp import model_params


def test_an_explicit_choice_is_kept() -> None:
    assert model_params(True).use_extra_bufts is True
    assert model_params(False).use_extra_bufts is False


def test_default_avoids_the_amx_kernels_only_where_they_are_built_in() -> None:
    lc.llama_backend_init()
    has_amx = b"AMX_INT8 = 1" in lc.llama_print_system_info()
    assert model_params(None).use_extra_bufts is (not has_amx)
