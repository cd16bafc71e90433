"""Tiny random models built for the paths a real model cannot show cheaply (context limits,
pickle-only checkpoints, broken folders): saved like real ones, with SmolLM2's tokenizer."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["tiny_llama"]


def tiny_llama(folder: Path, tokenizer_from: Path, weights: str = "safetensors") -> Path:
    """A 1-layer random llama with the tokenizer of the HF folder `tokenizer_from`, saved as
    `weights`: "safetensors", "bin" (a plain state dict), "legacy" (one in torch's pre-zip
    format, `_use_new_zipfile_serialization=False`) or "pickle" (a checkpoint that also stores
    an argparse.Namespace, so torch's weights-only loader refuses it)."""
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_from / name, folder / name)
    if weights == "safetensors":
        model.save_pretrained(str(folder))
        return folder
    config.save_pretrained(str(folder))
    state: dict[str, object] = dict(model.state_dict())
    if weights == "pickle":
        state["training_args"] = argparse.Namespace(lr=0.1)
    legacy = weights == "legacy"
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return folder
