"""Engine settings that fit the machine, for the options the user left unset. Pure: a decision
from (model, options, memory budget, machine) to options, each with the reason, which `doctor`
prints.

- threads: the physical cores (hyper-threads share a core's execution units, and llama.cpp's
  decode is bound by them and by memory bandwidth, so more threads than cores only adds
  contention); busy models share them through the thread budget (threads.py).
- slots and context per slot, as llama.cpp's `--fit` does: the engine's defaults (4 slots of
  min(trained, 2048) tokens) when the model's estimate (weights, KV cache, buffers: estimate.py)
  fits the memory budget alone; else the context per slot is halved down to 512 tokens, then
  slots are dropped down to one, until it fits. When even one slot of 512 tokens cannot fit,
  the defaults stay and the load is refused as too big (a 507), as before.
- batch size: the engine's 512 unless memory forced a smaller context, then 256 (the compute
  buffers grow with it).

Only llama.cpp allocates its KV cache at load, so only its models are fitted; the other engines
allocate as tokens come, and their estimate is a ceiling, not a reservation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..machine import Machine
from .discovery import ModelSource
from .estimate import LLAMA_BATCH, LLAMA_CONTEXT, LLAMA_PARALLEL, breakdown, default_base

__all__ = ["MIN_CONTEXT", "Fitted", "fit"]

MIN_CONTEXT = 512
SMALL_BATCH = 256
MiB = 2**20


@dataclass(frozen=True, slots=True)
class Fitted:
    options: dict[str, Any]  # what the engine gets
    reasons: dict[str, str] = field(default_factory=dict)  # option -> why it has its value
    values: dict[str, Any] = field(default_factory=dict)  # every decided value, defaults too


def fit(source: ModelSource, options: dict[str, Any], budget: int, machine: Machine) -> Fitted:
    """`options` (EngineOptions as a dict, unset keys absent) with the unset ones derived."""
    out = dict(options)
    reasons: dict[str, str] = {}
    values: dict[str, Any] = {}
    if "threads" in options:
        reasons["threads"] = "set in the configuration"
    else:
        out["threads"] = machine.physical_cores
        reasons["threads"] = (
            f"{machine.physical_cores} physical cores (of {machine.logical_cores} logical); "
            "busy models share them"
        )
    if source.engine == "llama.cpp" and source.task != "embed" and source.info is not None:
        _fit_slots(source, out, options, budget, reasons)
        values.update(
            context_size=out.get("context_size") or min(_train(source), LLAMA_CONTEXT),
            parallel=out.get("parallel") or LLAMA_PARALLEL,
            batch_size=out.get("batch_size") or LLAMA_BATCH,
        )
    values["threads"] = out["threads"]
    return Fitted(out, reasons, values)


def _train(source: ModelSource) -> int:
    return (source.info.context_length if source.info else None) or LLAMA_CONTEXT


def _total(source: ModelSource, options: dict[str, Any]) -> int:
    return breakdown(source, options).total + default_base(source.engine)


def _fit_slots(
    source: ModelSource,
    out: dict[str, Any],
    given: dict[str, Any],
    budget: int,
    reasons: dict[str, str],
) -> None:
    context = given.get("context_size") or min(_train(source), LLAMA_CONTEXT)
    parallel = given.get("parallel") or LLAMA_PARALLEL
    first = _total(source, out)
    if budget <= 0 or first <= budget:
        for key in ("context_size", "parallel"):
            reasons[key] = (
                "set in the configuration"
                if key in given
                else f"the engine's default; ~{first // MiB} MiB fits the "
                f"{budget // MiB} MiB budget"
            )
        reasons["batch_size"] = (
            "set in the configuration" if "batch_size" in given else "the engine's default"
        )
        return
    trial = dict(out)
    if "batch_size" not in given:
        trial["batch_size"] = SMALL_BATCH
    while _total(source, trial) > budget:
        if "context_size" not in given and context > MIN_CONTEXT:
            context = max(MIN_CONTEXT, context // 2)
            trial["context_size"] = context
        elif "parallel" not in given and parallel > 1:
            parallel -= 1
            trial["parallel"] = parallel
        else:
            reasons["context_size"] = reasons["parallel"] = (
                f"the defaults: even 1 slot of {MIN_CONTEXT} tokens needs more than the "
                f"{budget // MiB} MiB budget (loading it is refused)"
            )
            return
    out.update(trial)
    why = (
        f"fitted to the {budget // MiB} MiB budget (~{_total(source, trial) // MiB} MiB, "
        f"~{first // MiB} MiB with the defaults)"
    )
    reasons["context_size"] = reasons["parallel"] = why
    reasons["batch_size"] = (
        "set in the configuration" if "batch_size" in given else "smaller: memory is tight"
    )
