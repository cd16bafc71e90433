"""onnxruntime-genai's model builder, run with the config form it reads.

transformers 5 gives every Gemma 3 config its RoPE per layer type (`rope_parameters:
{full_attention: {...}, sliding_attention: {...}}`), whatever config.json says; the builder's
Gemma 3 reads the older flat form (`rope_parameters: {rope_type, ...}`, `rope_theta`,
`rope_local_base_freq`) and failed with KeyError 'rope_type'. Run as a module with the
builder's own arguments (`python -m llm_router.tools.genai_builder -i ... -o ...`): the config
the builder loads is given the flat form, then the builder runs as its `__main__`. Nothing
here runs in the caller's process."""

from __future__ import annotations

import runpy
from typing import Any

__all__ = ["flat_rope"]

_LAYER_TYPES = ("full_attention", "sliding_attention")


def flat_rope(config: Any) -> Any:
    """`config` with per-layer-type RoPE parameters also in the flat form: the full-attention
    layers' as `rope_parameters` and `rope_theta`, the sliding layers' theta as
    `rope_local_base_freq` (Gemma 3's names before transformers 5). Other configs unchanged
    (the builder reads Gemma 4's nested form itself)."""
    holders: list[Any] = [config, getattr(config, "text_config", None)]
    for holder in holders:
        params = getattr(holder, "rope_parameters", None)
        if not str(getattr(holder, "model_type", "")).startswith("gemma3"):
            continue
        if not isinstance(params, dict) or not all(
            isinstance(params.get(kind), dict) for kind in _LAYER_TYPES
        ):
            continue
        full, sliding = params["full_attention"], params["sliding_attention"]
        holder.rope_parameters = dict(full)
        holder.rope_theta = full.get("rope_theta")
        holder.rope_local_base_freq = sliding.get("rope_theta")
    return config


def _main() -> None:
    from transformers import AutoConfig

    load = AutoConfig.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        return flat_rope(load(*args, **kwargs))

    AutoConfig.from_pretrained = from_pretrained  # type: ignore[method-assign]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
