"""What kind of model a path holds, decided by content, and its metadata read without loading
weights.

`detect` classifies; `read_meta` reads and checks. A file whose name promises a model format
(`.gguf`, `.safetensors`, `.onnx`, `.bin`, `.pt`, `.pth`) but whose content is not that format
is an InvalidModelFile, so discovery can list it with the reason; anything else that is not a
model is None (ignored)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from llm_router.errors import InvalidModelFile

from .gguf import GGUFInfo, is_gguf, read_gguf_info
from .hf import (
    MemoryFacts,
    ModelMeta,
    declares_matryoshka,
    find_weights,
    hf_memory,
    hf_task,
    read_chat_template,
    read_hf_meta,
    read_json,
)
from .hf import transformer_dir as _transformer_dir
from .onnx import read_onnx_meta
from .pytorch import is_torch_checkpoint, read_torch_meta
from .safetensors import is_safetensors, read_safetensors_meta

__all__ = [
    "ENGINE_FOR",
    "Detected",
    "ModelMeta",
    "describe",
    "detect",
    "read_hf_meta",
    "read_meta",
    "read_safetensors_meta",
]

Format = Literal["gguf", "safetensors", "pytorch", "hf", "onnx", "onnx-genai"]
Task = Literal["generate", "embed"]
# Default engine per format (names of the engines table).
ENGINE_FOR: dict[str, str] = {
    "gguf": "llama.cpp",
    "safetensors": "transformers",
    "pytorch": "transformers",
    "hf": "transformers",
    "onnx": "onnxruntime",
    "onnx-genai": "onnxruntime-genai",
}
_NAMED = {
    ".gguf": "gguf",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".bin": "pytorch",
    ".pt": "pytorch",
    ".pth": "pytorch",
}
ONNX_PROTO_START = b"\x08"  # the ir_version field's tag


@dataclass(frozen=True, slots=True)
class Detected:
    """A model found at `path`: its format, the engine that serves it by default and whether
    it generates text or makes embeddings."""

    path: Path
    format: Format
    engine: str
    task: Task


def _found(path: Path, fmt: Format, task: Task = "generate") -> Detected:
    return Detected(path, fmt, ENGINE_FOR[fmt], task)


def detect(path: Path, suffix: str | None = None) -> Detected | None:
    """Classify `path` (a file or a folder) by content. Reads a few bytes of a file, or the
    JSON files of a folder. Raises InvalidModelFile for a file named like a model that is not
    one and for a folder with `config.json` but no weights. `suffix`: the name's, when the
    file is checked under another name (a download's `.part`)."""
    suffix = path.suffix if suffix is None else suffix
    if path.is_dir():
        return _detect_dir(path)
    if not path.is_file():
        return None
    if is_gguf(path):
        return _found(path, "gguf")
    if is_safetensors(path):
        return _found(path, "safetensors")
    head = _head(path)
    if head == ONNX_PROTO_START and (suffix == ".onnx" or _is_onnx(path)):
        read_onnx_meta(path)  # raises with the reason for a .onnx file that is not a model
        return _found(path, "onnx", "embed")
    if suffix in (".bin", ".pt", ".pth") and is_torch_checkpoint(path):
        return _found(path, "pytorch")
    named = _NAMED.get(suffix)
    if named is not None:
        raise InvalidModelFile(f"{path}: named like a {named} model, but {_why_not(path, named)}")
    return None


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(1)
    except OSError:
        return b""


def _is_onnx(path: Path) -> bool:
    try:
        read_onnx_meta(path)
    except InvalidModelFile:
        return False
    return True


def _why_not(path: Path, fmt: str) -> str:
    """The reader's own reason why `path` is not a `fmt` file."""
    reader = {
        "gguf": read_gguf_info,
        "safetensors": read_safetensors_meta,
        "onnx": read_onnx_meta,
        "pytorch": read_torch_meta,
    }[fmt]
    try:
        reader(path)
    except InvalidModelFile as exc:
        return exc.message.removeprefix(f"{path}: ")
    return "its content is not one"


def _detect_dir(folder: Path) -> Detected | None:
    if (folder / "genai_config.json").is_file():
        return _found(folder, "onnx-genai")
    model_dir = _transformer_dir(folder)
    if (model_dir / "config.json").is_file():
        if find_weights(model_dir):
            return _found(folder, "hf", _task(folder, model_dir))
        if _onnx_in(folder) is not None:
            return _found(folder, "onnx", "embed")
        raise InvalidModelFile(
            f"{folder}: config.json but no weights (*.safetensors or pytorch_model.bin)"
        )
    if _onnx_in(folder) is not None and (folder / "tokenizer.json").is_file():
        return _found(folder, "onnx", "embed")
    return None


def _task(folder: Path, model_dir: Path) -> Task:
    return (
        "embed" if hf_task(folder, read_json(model_dir / "config.json")) == "embed" else "generate"
    )


def _onnx_in(folder: Path) -> Path | None:
    """The ONNX graph of an embedding-model folder: model.onnx at the top or in onnx/."""
    for candidate in (folder / "model.onnx", folder / "onnx" / "model.onnx"):
        if candidate.is_file():
            return candidate
    found = sorted(folder.glob("*.onnx")) or sorted(folder.glob("onnx/*.onnx"))
    return found[0] if found else None


def read_meta(found: Detected) -> ModelMeta:
    """Metadata of a detected model, checked: raises InvalidModelFile with the reason when a
    header is corrupt, weights are missing or a file is truncated."""
    path = found.path
    if found.format == "gguf":
        g = read_gguf_info(path)
        return ModelMeta(
            g.architecture,
            g.name,
            g.parameters,
            g.quantization,
            g.context_length,
            g.embedding_length,
            g.chat_template,
            g.size_bytes,
            "embed" if g.pooling_type else "generate",
            g.finetune,
            memory=_gguf_memory(g),
        )
    if found.format in ("safetensors", "pytorch"):
        if not (path.parent / "config.json").is_file():
            return _bare(found)
        return read_hf_meta(path.parent, [path])
    if found.format == "hf":
        return read_hf_meta(path)
    if found.format == "onnx-genai":
        return _genai_meta(path)
    onnx_file = _onnx_in(path) if path.is_dir() else path
    if onnx_file is None:
        raise InvalidModelFile(f"{path}: no .onnx file")
    info = read_onnx_meta(onnx_file)
    folder = path if path.is_dir() else path.parent
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    arch = config.get("model_type")
    hidden = config.get("hidden_size")
    st_config = folder / "sentence_bert_config.json"
    limit = read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    limit = limit if isinstance(limit, int) else config.get("max_position_embeddings")
    return ModelMeta(
        str(arch) if arch else None,
        info.metadata.get("name"),
        info.parameters,
        info.dtype,
        limit if isinstance(limit, int) else None,
        hidden if isinstance(hidden, int) else None,
        None,
        _tree_size(path),
        "embed",
        matryoshka=declares_matryoshka(folder),
        memory=hf_memory(config, _onnx_bytes(onnx_file), info.dtype, folder),
    )


def _bare(found: Detected) -> ModelMeta:
    """Weights without a config.json beside them: read (a corrupt file says so), then
    refused, as the engine would refuse them on the first request (they were listed as a
    model that could load)."""
    if found.format == "safetensors":
        read_safetensors_meta(found.path)
    else:
        read_torch_meta(found.path)
    raise InvalidModelFile(
        f"{found.path}: weights without a config.json beside them, so the model cannot be "
        "built: put them in a folder with the model's config.json and tokenizer files"
    )


def _genai_meta(folder: Path) -> ModelMeta:
    model = _dict(read_json(folder / "genai_config.json").get("model"))
    decoder = _dict(model.get("decoder"))
    filename = str(decoder.get("filename") or "model.onnx")
    graph = folder / filename
    if not graph.is_file():
        raise InvalidModelFile(f"{folder}: genai_config.json names {filename}, which is missing")
    info = read_onnx_meta(graph)
    context, hidden = model.get("context_length"), decoder.get("hidden_size")
    genai = {
        "num_hidden_layers": decoder.get("num_hidden_layers"),
        "hidden_size": hidden,
        "num_attention_heads": decoder.get("num_attention_heads"),
        "num_key_value_heads": decoder.get("num_key_value_heads"),
        "head_dim": decoder.get("head_size"),
        "vocab_size": model.get("vocab_size"),
    }
    # genai keeps its KV cache in the activations' type: float32 on CPU, even for int4 weights.
    activations = info.dtype if info.dtype in ("float16", "bfloat16") else "float32"
    return ModelMeta(
        architecture=str(model.get("type")) if model.get("type") else None,
        name=None,
        parameters=info.parameters,
        quantization=info.dtype,
        context_length=context if isinstance(context, int) else None,
        embedding_length=hidden if isinstance(hidden, int) else None,
        chat_template=read_chat_template(folder),
        size_bytes=_tree_size(folder),
        task="generate",
        memory=hf_memory(genai, _onnx_bytes(graph), activations, folder),
    )


def _gguf_memory(g: GGUFInfo) -> MemoryFacts:
    heads = g.head_count or 0
    key_length = g.key_length or ((g.embedding_length or 0) // heads if heads else 0)
    return MemoryFacts(
        weight_bytes=g.tensor_bytes,
        layers=g.block_count or 0,
        embedding=g.embedding_length or 0,
        feed_forward=g.feed_forward_length or 0,
        heads=heads,
        kv_heads=g.head_count_kv,
        key_length=key_length,
        value_length=g.value_length or key_length,
        vocab=g.vocab_size or 0,
        merges=g.merges,
        sliding_window=g.sliding_window or 0,
        windowed=g.swa_layers,
        repack_bytes=g.repack_bytes,
    )


def _onnx_bytes(graph: Path) -> int:
    """The graph and its external data files (`<graph>.data`, as exporters name them)."""
    return sum(
        p.stat().st_size for p in (graph, graph.with_name(graph.name + ".data")) if p.is_file()
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(path: Path, suffix: str | None = None) -> tuple[Detected, ModelMeta] | None:
    """`detect` then `read_meta`: None for a path that is no model; InvalidModelFile for one
    that is a broken model."""
    found = detect(path, suffix)
    if found is None:
        return None
    meta = read_meta(found)
    if meta.task != found.task:  # a GGUF's header tells an embedding model (pooling type)
        found = replace(found, task="embed" if meta.task == "embed" else "generate")
    return found, meta
