"""Loading a transformers model and its tokenizer from an HF folder, a bare `.safetensors` or a
PyTorch checkpoint beside a `config.json`, offline.

PyTorch checkpoints are only ever read with `torch.load(weights_only=True)`: unpickling can run
arbitrary code. A checkpoint that needs more is refused unless the model's options say
`allow_pickle: true`."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..errors import InvalidModelFile, ModelLoadFailed
from ..formats.hf import find_weights, hf_task, read_json, transformer_dir
from ..formats.pytorch import read_torch_meta
from ..formats.safetensors import read_safetensors_meta

__all__ = ["DTYPES", "Loaded", "load"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True, slots=True)
class Loaded:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a transformers tokenizer
    task: str  # "generate" | "embed"
    folder: Path  # the folder holding config.json (sentence-transformers: its root)
    config: dict[str, Any]


def _dtype(name: object) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    if not isinstance(name, str) or name not in DTYPES:
        raise ModelLoadFailed(f"dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch checkpoint, loaded weights-only unless `allow_pickle`. A zip
    checkpoint is mapped; a legacy one (`_use_new_zipfile_serialization=False`), which torch
    cannot map, is read."""
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            try:
                wants = ", ".join(read_torch_meta(path).other_globals) or "unknown objects"
            except InvalidModelFile:
                wants = "unknown objects"
            raise ModelLoadFailed(
                f"{path.name} is a PyTorch checkpoint that needs pickle to load (it stores "
                f"{wants}), and unpickling can run arbitrary code, so it is refused. Convert "
                "it to safetensors, or set `allow_pickle: true` for this model if you trust "
                "the file."
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadFailed(f"{path.name}: not a loadable PyTorch checkpoint: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelLoadFailed(f"{path.name} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadFailed(f"{path.name} holds no tensors")
    return tensors


def _check_weights(weights: list[Path]) -> None:
    """Fail early, with the reason, on a corrupt safetensors header."""
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                read_safetensors_meta(path)
            except InvalidModelFile as exc:
                raise ModelLoadFailed(exc.message) from exc


def load(spec_path: str, options: dict[str, Any]) -> Loaded:
    """Load the model at `spec_path` (blocks for the whole load). Raises ModelLoadFailed,
    naming the reason, for anything that prevents it."""
    path = Path(spec_path)
    root = path if path.is_dir() else path.parent
    model_dir = transformer_dir(root)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadFailed(f"{path}: no config.json beside the weights")
    try:
        config = read_json(model_dir / "config.json")
    except InvalidModelFile as exc:
        raise ModelLoadFailed(exc.message) from exc
    weights = find_weights(model_dir) if path.is_dir() else [path]
    if not weights:
        raise ModelLoadFailed(
            f"{path}: config.json but no weights (*.safetensors or pytorch_model.bin)"
        )
    _check_weights(weights)
    task = hf_task(root, config)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # stderr is the log
    auto = AutoModelForCausalLM if task == "generate" else AutoModel
    dtype = _dtype(options.get("dtype"))
    try:
        if path.is_dir() and all(w.suffix == ".safetensors" for w in weights):
            loaded: Any = auto.from_pretrained(
                str(model_dir), dtype=dtype, local_files_only=True, output_loading_info=True
            )
            model, report = loaded
            _check_complete(report)
        else:
            model = _from_state_dict(auto, model_dir, weights, dtype, options)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except ModelLoadFailed:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelLoadFailed(f"transformers could not load {path}: {exc}") from exc
    model.eval()
    return Loaded(model, tokenizer, task, root, config)


def _check_complete(report: dict[str, Any]) -> None:
    """ModelLoadFailed when the weights do not fill the model: transformers initialises the
    missing ones at random (a config.json naming more layers than the checkpoint holds was
    served, answering noise) and only logs it."""
    lacking = list(report.get("missing_keys") or []) + [
        str(m[0]) if isinstance(m, tuple) else str(m) for m in report.get("mismatched_keys") or []
    ]
    if lacking:
        shown = ", ".join(sorted(lacking)[:3]) + (" ..." if len(lacking) > 3 else "")
        raise ModelLoadFailed(
            f"the checkpoint lacks {len(lacking)} weights the model needs (or holds them in "
            f"another shape): {shown}; its config.json and weights do not match"
        )


def _from_state_dict(
    auto: Any,
    model_dir: Path,
    weights: list[Path],
    dtype: torch.dtype | str,
    options: dict[str, Any],
) -> Any:
    """Build the model from config.json, then fill it from checkpoints read here (so the
    weights-only policy is ours, not the library's)."""
    state: dict[str, torch.Tensor] = {}
    for w in weights:
        if w.suffix == ".safetensors":
            state.update(_load_safetensors(w))
        else:
            state.update(_state_dict(w, bool(options.get("allow_pickle"))))
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    model = auto.from_config(config, dtype=dtype)
    missing, _ = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {name for name, _ in model.named_parameters(remove_duplicate=True)}
    lacking = [name for name in missing if name in tied]
    if lacking:
        shown = ", ".join(lacking[:3]) + (" ..." if len(lacking) > 3 else "")
        raise ModelLoadFailed(
            f"the checkpoint lacks {len(lacking)} weights the model needs: {shown}"
        )
    return model


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
