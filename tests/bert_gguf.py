"""all-MiniLM-L6-v2 written as a GGUF embedding model (llama.cpp's BERT layout, as its
convert_hf_to_gguf.py writes it), with the `gguf` package: the real embedding GGUF the tests
of llama.cpp embeddings need, made here because no GGUF embedding model is bundled."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

__all__ = ["write_bert_gguf"]


def _phantom(token: str, control: bool) -> str:
    """llama.cpp's WordPiece vocabulary marks word starts (U+2581), not continuations (##)."""
    if control:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def write_bert_gguf(folder: Path, out: Path) -> Path:
    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(out), "bert")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens = sorted(vocab, key=vocab.__getitem__)
    control = gguf.TokenType.CONTROL
    types = [control if t in special else gguf.TokenType.NORMAL for t in tokens]
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t, t in special) for t in tokens])
    writer.add_token_types(types)
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(writer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        if name == "embeddings.position_ids" or name.startswith("pooler."):
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert mapped is not None, name
        writer.add_tensor(mapped, tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
