"""A BERT encoder (a sentence-transformers folder such as all-MiniLM-L6-v2) written as an ONNX
graph straight from its safetensors, with `onnx` and numpy: no torch, no transformers. This is
how the bundled embedding model is served by onnxruntime on an install without torch.

The graph is BERT's forward pass as transformers computes it (absolute positions, exact GELU,
post-LayerNorm) with the inputs and output `convert --to onnx` gives an encoder export:
`input_ids`, `attention_mask`, `token_type_ids` -> `last_hidden_state`; pooling stays outside,
done by the engine from the folder's config. Blocks for the build (~1 s for MiniLM)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidModelFile
from ..formats.hf import read_json, transformer_dir
from ..formats.safetensors import read_safetensors_meta
from .common import ConversionError, Progress, staged_output

__all__ = ["EMBED_FILES", "build_bert_onnx", "is_bert"]

Array = npt.NDArray[Any]
OPSET = 17
# Files an embedding folder needs beside model.onnx (tokenizer, pooling, limits, model card).
EMBED_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "README.md",
)
_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def is_bert(folder: Path) -> bool:
    """True for a folder whose transformer is a BERT this builder reproduces exactly."""
    config_file = transformer_dir(folder) / "config.json"
    try:
        config = read_json(config_file)
    except InvalidModelFile:
        return False
    return (
        config.get("model_type") == "bert"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and config.get("hidden_act", "gelu") == "gelu"
        and (transformer_dir(folder) / "model.safetensors").is_file()
    )


def _tensors(path: Path) -> dict[str, Array]:
    """Every tensor of a safetensors file as a numpy array (BF16 widened to float32)."""
    read_safetensors_meta(path)  # checks every byte range first
    data = path.read_bytes()
    (n,) = np.frombuffer(data[:8], dtype="<u8")
    header = json.loads(data[8 : 8 + int(n)])
    header.pop("__metadata__", None)
    base = 8 + int(n)
    out: dict[str, Array] = {}
    for name, entry in header.items():
        begin, end = (base + o for o in entry["data_offsets"])
        if entry["dtype"] == "BF16":
            raw = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            array = raw.view(np.float32)
        elif entry["dtype"] in _NUMPY:
            array = np.frombuffer(data[begin:end], dtype=np.dtype(_NUMPY[entry["dtype"]]))
        else:
            raise ConversionError(f"{path}: tensor {name} has dtype {entry['dtype']}")
        out[name.removeprefix("bert.")] = array.reshape(entry["shape"])
    return out


class _Graph:
    """Collects nodes and initializers; names are unique by a counter."""

    def __init__(self, weights: dict[str, Array]) -> None:
        import onnx.helper as oh
        from onnx import numpy_helper

        self._oh, self._np = oh, numpy_helper
        self.weights = weights
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: Array, name: str | None = None) -> str:
        self._n += 1
        name = name or f"c{self._n}"
        self.inits.append(self._np.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, key: str, transpose: bool = False) -> str:
        value = self.weights[key].astype(np.float32)
        return self.const(value.T if transpose else value, key)

    def op(self, kind: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{kind.lower()}{self._n}"
        self.nodes.append(self._oh.make_node(kind, list(inputs), [out], **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        y = self.op("MatMul", x, self.weight(f"{prefix}.weight", transpose=True))
        return self.op("Add", y, self.weight(f"{prefix}.bias"))

    def norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization",
            x,
            self.weight(f"{prefix}.weight"),
            self.weight(f"{prefix}.bias"),
            axis=-1,
            epsilon=eps,
        )


def _layer(g: _Graph, x: str, mask: str, i: int, heads: int, hidden: int, eps: float) -> str:
    p = f"encoder.layer.{i}"
    size = hidden // heads
    split = g.const(np.array([0, 0, heads, size], dtype=np.int64))

    def project(name: str, perm: list[int]) -> str:
        y = g.op("Reshape", g.linear(x, f"{p}.attention.self.{name}"), split)
        return g.op("Transpose", y, perm=perm)

    q = project("query", [0, 2, 1, 3])
    k = project("key", [0, 2, 3, 1])
    v = project("value", [0, 2, 1, 3])
    scale = g.const(np.array(1 / math.sqrt(size), dtype=np.float32))
    scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), mask)
    context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
    merged = g.op(
        "Reshape",
        g.op("Transpose", context, perm=[0, 2, 1, 3]),
        g.const(np.array([0, 0, hidden], dtype=np.int64)),
    )
    attn = g.linear(merged, f"{p}.attention.output.dense")
    x = g.norm(g.op("Add", attn, x), f"{p}.attention.output.LayerNorm", eps)
    h = g.linear(x, f"{p}.intermediate.dense")
    erf = g.op("Erf", g.op("Div", h, g.const(np.array(math.sqrt(2), dtype=np.float32))))
    one, half = g.const(np.array(1, dtype=np.float32)), g.const(np.array(0.5, dtype=np.float32))
    gelu = g.op("Mul", g.op("Mul", h, half), g.op("Add", erf, one))
    out = g.linear(gelu, f"{p}.output.dense")
    return g.norm(g.op("Add", out, x), f"{p}.output.LayerNorm", eps)


def _model(config: dict[str, Any], weights: dict[str, Array]) -> Any:
    import onnx
    import onnx.helper as oh

    g = _Graph(weights)
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    words = g.op("Gather", g.weight("embeddings.word_embeddings.weight"), "input_ids")
    length = g.op("Shape", "input_ids", start=1, end=2)  # [tokens], 1-D
    zero = g.const(np.array([0], dtype=np.int64))
    where = g.op("Slice", g.weight("embeddings.position_embeddings.weight"), zero, length, zero)
    kinds = g.op("Gather", g.weight("embeddings.token_type_embeddings.weight"), "token_type_ids")
    x = g.norm(g.op("Add", g.op("Add", words, where), kinds), "embeddings.LayerNorm", eps)
    # Padding gets the most negative float added to its scores, as transformers does.
    keep = g.op("Cast", "attention_mask", to=onnx.TensorProto.FLOAT)
    lowest = g.const(np.array(np.finfo(np.float32).min, dtype=np.float32))
    masked = g.op("Mul", g.op("Sub", g.const(np.array(1, dtype=np.float32)), keep), lowest)
    mask = g.op("Unsqueeze", masked, g.const(np.array([1, 2], dtype=np.int64)))
    for i in range(int(config["num_hidden_layers"])):
        x = _layer(g, x, mask, i, heads, hidden, eps)
    g.nodes.append(oh.make_node("Identity", [x], ["last_hidden_state"]))
    ids = [
        oh.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "tokens"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    out = oh.make_tensor_value_info(
        "last_hidden_state", onnx.TensorProto.FLOAT, ["batch", "tokens", hidden]
    )
    graph = oh.make_graph(g.nodes, "bert", ids, [out], initializer=g.inits)
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="llm-router"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_bert_onnx(
    src: Path, out: Path, *, force: bool = False, progress: Progress | None = None
) -> Path:
    """Write `src` (a BERT sentence-transformers or HF folder) as an ONNX embedding folder at
    `out`: model.onnx plus the tokenizer, pooling and config files. Raises OutputExists,
    or ConversionError when `src` is not a BERT this builder knows or `onnx` is missing."""
    try:
        import onnx
    except ImportError as exc:
        raise ConversionError(f"building ONNX needs `onnx`: pip install onnx ({exc})") from exc
    if not is_bert(src):
        raise ConversionError(f"{src}: not a BERT folder with model.safetensors")
    model_dir = transformer_dir(src)
    if progress:
        progress(f"writing {src.name}'s BERT encoder as ONNX")
    try:
        weights = _tensors(model_dir / "model.safetensors")
    except InvalidModelFile as exc:
        raise ConversionError(exc.message) from exc
    try:
        model = _model(read_json(model_dir / "config.json"), weights)
    except (KeyError, ValueError, onnx.checker.ValidationError) as exc:
        raise ConversionError(f"{src}: cannot build the ONNX graph: {exc}") from exc
    with staged_output(out, force=force, folder=True) as stage:
        onnx.save(model, str(stage / "model.onnx"))
        for name in EMBED_FILES:
            for folder in (src, model_dir):
                if (folder / name).is_file() and not (stage / name).exists():
                    shutil.copyfile(folder / name, stage / name)
        for module in [*src.glob("*_Pooling"), *src.glob("*_Normalize")]:
            shutil.copytree(module, stage / module.name)
    return out
