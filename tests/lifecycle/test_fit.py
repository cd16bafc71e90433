"""Engine settings derived from the machine and the memory budget (lifecycle/fit.py)."""

from __future__ import annotations

from pathlib import Path

from test_estimate import _gemma_like

from llm_router.lifecycle.discovery import source_of
from llm_router.lifecycle.estimate import breakdown, default_base
from llm_router.lifecycle.fit import MIN_CONTEXT, fit
from llm_router.machine import Machine

MiB = 2**20
BOX = Machine(
    logical_cores=16,
    physical_cores=8,
    memory_total=64 * 2**30,
    memory_available=60 * 2**30,
    features=("AVX2",),
    arch="x86_64",
)


def _needs(source: object, options: dict[str, int]) -> int:
    return breakdown(source, options).total + default_base("llama.cpp")  # type: ignore[arg-type]


def test_threads_are_the_physical_cores_unless_set(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    assert fit(source, {}, 2**40, BOX).options["threads"] == 8
    fitted = fit(source, {"threads": 3}, 2**40, BOX)
    assert (
        fitted.options["threads"] == 3 and fitted.reasons["threads"] == "set in the configuration"
    )


def test_the_engine_defaults_stay_when_the_model_fits(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    fitted = fit(source, {}, 2**40, BOX)
    assert fitted.options == {"threads": 8}  # nothing else passed: the engine's own defaults
    assert fitted.values == {"threads": 8, "context_size": 2048, "parallel": 4, "batch_size": 512}
    assert "fits" in fitted.reasons["context_size"]


def test_a_tight_budget_shrinks_the_context_then_the_slots(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    default = _needs(source, {})
    one_small = _needs(source, {"context_size": MIN_CONTEXT, "parallel": 1, "batch_size": 256})
    for budget in (default - 1, (default + one_small) // 2, one_small):
        fitted = fit(source, {}, budget, BOX)
        v = fitted.values
        assert _needs(source, fitted.options) <= budget, budget
        assert v["context_size"] >= MIN_CONTEXT and v["parallel"] >= 1
        assert v["parallel"] == 4 or v["context_size"] == MIN_CONTEXT  # context goes first
        assert v["batch_size"] == 256
        assert "fitted to the" in fitted.reasons["parallel"]
    assert fit(source, {}, one_small, BOX).options["parallel"] == 1


def test_what_the_user_set_is_never_changed(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    given = {"context_size": 4096, "threads": 2}
    budget = _needs(source, {"context_size": 4096, "parallel": 1, "batch_size": 256})
    fitted = fit(source, given, budget, BOX)
    assert fitted.options["context_size"] == 4096 and fitted.options["parallel"] == 1


def test_a_model_that_cannot_fit_keeps_the_defaults_and_is_refused_later(tmp_path: Path) -> None:
    source = source_of(_gemma_like(tmp_path))
    fitted = fit(source, {}, 1 * MiB, BOX)
    assert "context_size" not in fitted.options and "parallel" not in fitted.options
    assert "refused" in fitted.reasons["context_size"]
