"""Hugging Face model folders (`config.json` + weights, tokenizer files) and sentence-transformers
folders, read without loading weights: parameters and dtype from the safetensors headers (or
the checkpoint's pickle opcodes), context length and architecture from `config.json`, the chat
template from the tokenizer files."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_router.errors import InvalidModelFile

from .pytorch import read_torch_meta, refused_globals
from .safetensors import read_safetensors_meta

__all__ = [
    "MemoryFacts",
    "ModelMeta",
    "declares_matryoshka",
    "find_weights",
    "hf_memory",
    "hf_task",
    "read_chat_template",
    "read_hf_meta",
    "read_json",
    "transformer_dir",
]

_CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_sequence_length",
    "n_ctx",
)
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# Bytes per element of the dtype names safetensors headers and configs use.
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
}


@dataclass(frozen=True, slots=True)
class MemoryFacts:
    """What a loaded model's memory depends on, read from its header or config without
    loading weights; `lifecycle.estimate` does the arithmetic. Zero or empty: the files do
    not say. Per-layer tuples have one entry per layer."""

    weight_bytes: int  # the weights' data as stored
    layers: int = 0
    embedding: int = 0  # hidden size
    feed_forward: int = 0  # the largest layer's
    heads: int = 0
    kv_heads: tuple[int, ...] = ()  # per layer; 0 where a layer keeps no KV cache
    key_length: int = 0  # per head (0: embedding / heads)
    value_length: int = 0
    vocab: int = 0
    merges: int = 0  # BPE merge rules (llama.cpp holds them in a map)
    sliding_window: int = 0  # tokens a windowed layer attends to; 0: no window
    windowed: tuple[bool, ...] = ()  # per layer: attends within the window only
    repack_bytes: int = 0  # GGUF: weights llama.cpp's CPU backend copies when repacking
    element_bytes: int = 0  # bytes per weight and KV element as saved (HF, ONNX); 0: n/a
    tokenizer_bytes: int = 0  # tokenizer.json's size (the tokenizers' memory follows it)


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What a model's files say about it, read without loading weights; the fields GGUFInfo
    has under the same names. `quantization` is the quantization method or, for an
    unquantized model, the dtype holding most weights (safetensors names: F32, BF16...)."""

    architecture: str | None
    name: str | None
    parameters: int | None
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    chat_template: str | None
    size_bytes: int
    task: str  # "generate" | "embed"
    finetune: str | None = None  # GGUF's `general.finetune` ("Instruct", "it"...); an HF
    # folder made by `convert` keeps it in config.json
    matryoshka: bool = False  # embeddings may be cut to fewer dimensions (Matryoshka training)
    memory: MemoryFacts | None = None  # what the memory estimate needs
    needs_pickle: tuple[str, ...] = ()  # what its PyTorch checkpoints store that torch's
    # weights-only loader refuses (`refused_globals`): only `allow_pickle` loads them


def hf_memory(
    config: dict[str, Any], weight_bytes: int, dtype: str | None, folder: Path
) -> MemoryFacts:
    """Memory facts from a transformers `config.json` (its `text_config` for a multimodal
    one): KV heads and head size, sliding-window layers (`layer_types`), vocabulary; and the
    size of `folder`'s tokenizer.json. `dtype`: the weights' dtype as saved (a safetensors or
    torch name)."""
    text = config.get("text_config")
    scope: dict[str, Any] = {**config, **text} if isinstance(text, dict) else config

    def num(*keys: str) -> int:
        for key in keys:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 0

    layers, hidden = num("num_hidden_layers", "n_layer"), num("hidden_size", "n_embd")
    heads = num("num_attention_heads", "n_head")
    head_dim = num("head_dim") or (hidden // heads if heads else 0)
    kinds = scope.get("layer_types")
    windowed = tuple(k == "sliding_attention" for k in kinds) if isinstance(kinds, list) else ()
    saved = dtype or scope.get("dtype") or scope.get("torch_dtype")
    tokenizer = folder / "tokenizer.json"
    return MemoryFacts(
        weight_bytes=weight_bytes,
        layers=layers,
        embedding=hidden,
        feed_forward=num("intermediate_size", "n_inner"),
        heads=heads,
        kv_heads=(num("num_key_value_heads") or heads,) * layers,
        key_length=head_dim,
        value_length=head_dim,
        vocab=num("vocab_size"),
        sliding_window=num("sliding_window") if any(windowed) else 0,
        windowed=windowed,
        element_bytes=DTYPE_BYTES.get(str(saved), 4),
        tokenizer_bytes=tokenizer.stat().st_size if tokenizer.is_file() else 0,
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; InvalidModelFile when it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidModelFile(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFile(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path}: not a JSON object")
    return data


def transformer_dir(folder: Path) -> Path:
    """Where the transformer of a sentence-transformers folder lives (`modules.json`'s
    Transformer module path; the folder itself for a plain HF folder)."""
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return folder
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("type", "")).endswith("Transformer"):
                return folder / str(entry.get("path") or "")
    return folder


# What transformers' tokenizers load from: one of these beside config.json.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer_config.json",
)


def _check_shards(folder: Path, model_dir: Path) -> None:
    """InvalidModelFile when a weights index names a shard that is not there (listed as a
    usable model, it failed only when asked)."""
    for index in model_dir.glob("*.index.json"):
        weight_map = read_json(index).get("weight_map")
        files = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        missing = sorted(str(f) for f in files if not (model_dir / str(f)).is_file())
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise InvalidModelFile(f"{folder}: {index.name} names missing shards: {shown}")


def find_weights(folder: Path) -> list[Path]:
    """The weight files of an HF folder: safetensors if any, else PyTorch checkpoints."""
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        found = sorted(folder.glob("pytorch_model*.bin")) or sorted(
            p for pattern in ("*.pt", "*.pth") for p in folder.glob(pattern)
        )
    return found


def hf_task(folder: Path, config: dict[str, Any]) -> str:
    """The task: "embed" for sentence-transformers folders and encoder-only models, else "generate"."""
    if (folder / "modules.json").is_file():
        return "embed"
    archs = config.get("architectures") or []
    generative = any(str(a).endswith(_GENERATIVE) for a in archs)
    return "generate" if generative or not archs else "embed"


def read_chat_template(folder: Path) -> str | None:
    """The chat template of the tokenizer files: `tokenizer_config.json`'s `chat_template`
    (a string, or a list of named templates of which `default` or the first is taken), else
    `chat_template.jinja` or `chat_template.json` (as transformers 5 saves them)."""
    config = folder / "tokenizer_config.json"
    template: object = read_json(config).get("chat_template") if config.is_file() else None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        return template
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        found = read_json(as_json).get("chat_template")
        return found if isinstance(found, str) else None
    return None


def declares_matryoshka(folder: Path) -> bool:
    """True when the model card's front matter (README.md, as the Hub writes it) tags the model
    as Matryoshka-trained (`matryoshka`, `loss:MatryoshkaLoss`): its embeddings keep their
    meaning when cut to their first dimensions."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.startswith("---"):
        return False
    try:
        front = yaml.safe_load(text[3:].split("\n---", 1)[0])
    except yaml.YAMLError:
        return False
    tags = front.get("tags") if isinstance(front, dict) else None
    return isinstance(tags, list) and any("matryoshka" in str(t).lower() for t in tags)


def _context(config: dict[str, Any]) -> int | None:
    for scope in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            value = scope.get(key) if isinstance(scope, dict) else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _architecture(config: dict[str, Any]) -> str | None:
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type.removesuffix("_text")  # gemma3_text -> gemma3, as GGUF names it
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else None


def read_hf_meta(folder: Path, weights: list[Path] | None = None) -> ModelMeta:
    """Metadata of an HF (or sentence-transformers) folder, or of bare `weights` beside a
    `config.json`. Raises InvalidModelFile when config.json is missing or unreadable, when
    there are no weights, or when a safetensors header is corrupt."""
    model_dir = transformer_dir(folder)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InvalidModelFile(f"{folder}: no config.json, so the model cannot be built")
    config = read_json(config_path)
    bare = weights is not None
    weights = weights if weights is not None else find_weights(model_dir)
    if not weights:
        raise InvalidModelFile(
            f"{folder}: config.json but no weights (*.safetensors or pytorch_model.bin)"
        )
    _check_shards(folder, model_dir)
    if not any((d / name).is_file() for d in {folder, model_dir} for name in _TOKENIZER_FILES):
        raise InvalidModelFile(
            f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}...) beside its "
            "config.json, so no text can go in or out"
        )
    parameters: int | None = 0
    dtypes = Counter[str]()
    needs_pickle: set[str] = set()
    for path in weights:
        count: int | None
        if path.suffix == ".safetensors":
            info = read_safetensors_meta(path)
            count, dtype = info.parameters, info.dtype
        else:
            tinfo = read_torch_meta(path)
            count, dtype = tinfo.parameters, tinfo.dtype
            needs_pickle.update(refused_globals(tinfo.other_globals))
        parameters = None if parameters is None or count is None else parameters + count
        if dtype and count:
            dtypes[dtype] += count
    quant = config.get("quantization_config")
    quantization = (
        str(quant.get("quant_method"))
        if isinstance(quant, dict) and quant.get("quant_method")
        else (dtypes.most_common(1)[0][0] if dtypes else None)
    )
    task = hf_task(folder, config)
    context = _context(config)
    st_config = folder / "sentence_bert_config.json"
    if task == "embed" and st_config.is_file():
        limit = read_json(st_config).get("max_seq_length")
        if isinstance(limit, int) and limit > 0:
            context = min(context or limit, limit)
    hidden = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
    name = config.get("_name_or_path") or config.get("_model_name_or_path")
    finetune = config.get("finetune")  # written by `convert` from a GGUF's general.finetune
    weight_bytes = sum(p.stat().st_size for p in weights)
    saved = dtypes.most_common(1)[0][0] if dtypes else None
    return ModelMeta(
        architecture=_architecture(config),
        name=str(name) if name else None,
        parameters=parameters,
        quantization=quantization,
        context_length=context,
        embedding_length=hidden if isinstance(hidden, int) else None,
        chat_template=read_chat_template(model_dir) if task == "generate" else None,
        size_bytes=weight_bytes if bare else _size(folder),
        task=task,
        finetune=finetune if isinstance(finetune, str) and finetune else None,
        matryoshka=task == "embed" and declares_matryoshka(folder),
        memory=hf_memory(config, weight_bytes, saved, model_dir),
        needs_pickle=tuple(sorted(needs_pickle)),
    )


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
