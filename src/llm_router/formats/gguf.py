"""A pure-Python reader of a GGUF file's header: the metadata a router needs, and a check that
the tensor data the header announces is all there (a truncated download is caught here, not
by the engine). Little-endian GGUF v2 and v3 only.

Big arrays (a 262,144-token vocabulary) are skipped by size; of string arrays only the
lengths are read, except for the tokens asked for (the byte layer is gguf_parse.py). The
shape facts (heads, KV heads, window, vocabulary and merge counts, tensor bytes) are what a
memory estimate needs, read as llama.cpp reads them (`llama-model.cpp`'s hparams)."""

from __future__ import annotations

import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_router.errors import InvalidModelFile

from .gguf_parse import Array, Corrupt, Parser

__all__ = ["GGUF_MAGIC", "GGUFInfo", "is_gguf", "read_gguf_info"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 8
_MAX_LAYERS = 4096
# ggml_type id -> (name, elements per block, bytes per block), per ggml.h / gguf-py.
_GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    31: ("Q4_0_4_4", 32, 18),
    32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", 32, 18),
    37: ("IQ4_NL_4_8", 32, 18),
    38: ("IQ4_NL_8_8", 32, 18),
    39: ("MXFP4", 32, 17),
}
# llama_ftype (llama.h) -> name, for `general.file_type`.
_FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    33: "Q4_0_4_4",
    34: "Q4_0_4_8",
    35: "Q4_0_8_8",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
# Layers with sliding-window attention when the header gives a window but no
# `attention.sliding_window_pattern`: the period llama.cpp's loader sets per architecture
# (`hparams.set_swa_pattern(n)`: in each period of n layers the last one attends to everything).
_SWA_PERIOD = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma-embedding": 6,
    "gemma3n": 5,
    "cohere2": 4,
    "gpt-oss": 2,
    "exaone4": 4,
}
# Types the CPU backend copies into an interleaved layout when repacking is on (ggml-cpu
# repack.cpp, x86 with AVX2/AVX-512), for matrices whose rows come in multiples of 8.
_REPACKED = {2, 10, 12, 20}  # Q4_0, Q2_K, Q4_K, IQ4_NL
_FTYPE_GUESSED = 1024


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    """What the header of a GGUF file says about the model in it."""

    architecture: str
    name: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    chat_template: str | None
    quantization: str | None
    parameters: int
    size_bytes: int
    n_tensors: int
    bos_token: str | None
    eos_token: str | None
    pooling_type: int | None
    finetune: str | None = None  # `general.finetune`, e.g. "Instruct" or "it"
    feed_forward_length: int | None = None  # the largest layer's, when it varies
    head_count: int | None = None  # the largest layer's, when it varies
    head_count_kv: tuple[int, ...] = ()  # per layer (0: no attention there); () if unsaid
    key_length: int | None = None  # per head; llama.cpp's default is embedding / heads
    value_length: int | None = None
    vocab_size: int | None = None  # tokens in the vocabulary
    merges: int = 0  # BPE merge rules
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] = ()  # per layer: attends within the window only
    tensor_bytes: int = 0  # tensor data, all of it (what llama.cpp maps)
    repack_bytes: int = 0  # of which the CPU backend copies when it repacks weights


def is_gguf(path: Path) -> bool:
    """True when the file starts with the GGUF magic, whatever its name; False when it does
    not, is shorter than the magic, or cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read the header of a GGUF file. Raises InvalidModelFile, naming the reason, when the
    file is not GGUF, has an unsupported version, is corrupt or truncated."""
    try:
        with open(path, "rb") as file:
            magic = file.read(len(GGUF_MAGIC))
            if magic != GGUF_MAGIC:
                raise Corrupt("not a GGUF file (" + ("bad magic" if magic else "empty") + ")")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _read(Parser(buf, len(buf)), len(buf))
    except Corrupt as exc:
        reason = str(exc)
    except OSError as exc:
        raise InvalidModelFile(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (struct.error, ValueError, IndexError, OverflowError, RecursionError) as exc:
        reason = f"corrupt GGUF header ({exc})"
    raise InvalidModelFile(f"{path}: {reason}")


def _read(p: Parser, size: int) -> GGUFInfo:
    p.take(len(GGUF_MAGIC))
    version = p.u32()
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = " (big-endian GGUF is not supported)" if swapped in (2, 3) else ""
        raise Corrupt(f"unsupported GGUF version {version}{hint}")
    n_tensors, n_kv = p.u64(), p.u64()
    # A tensor info takes at least 24 bytes, a key/value 12: reject absurd counts up front.
    if n_tensors * 24 + n_kv * 12 > size:
        raise Corrupt(
            f"header ends early: {n_tensors:,} tensors and {n_kv:,} metadata entries "
            f"cannot fit in {size:,} bytes"
        )
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = p.string()
        meta[key] = p.value(p.u32())

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise Corrupt(f"general.alignment is {alignment!r}, not a power of two")

    parameters, data_size, types = 0, 0, Counter[int]()
    tensor_bytes = repack_bytes = 0
    for index in range(n_tensors):
        name = p.string()
        n_dims = p.u32()
        if n_dims > _MAX_DIMS:
            raise Corrupt(f"tensor #{index} claims {n_dims} dimensions")
        dims = [p.u64() for _ in range(n_dims)]
        ttype, offset = p.u32(), p.u64()
        n_elements = math.prod(dims)
        parameters += n_elements
        types[ttype] += 1
        known = _GGML_TYPES.get(ttype)
        if known is None:  # a type newer than this table: its start is all we can check
            data_size = max(data_size, offset)
            continue
        type_name, block, block_bytes = known
        if dims and dims[0] % block:
            raise Corrupt(f"tensor #{index}: {dims[0]} columns are not whole {type_name} blocks")
        nbytes = n_elements // block * block_bytes
        data_size = max(data_size, offset + nbytes)
        tensor_bytes += nbytes
        if ttype in _REPACKED and n_dims == 2 and dims[1] % 8 == 0 and "token_embd" not in name:
            repack_bytes += nbytes  # a matrix multiplied (never the embedding rows looked up)

    data_start = -(-p.pos // alignment) * alignment
    if n_tensors and data_start + data_size > size:
        raise Corrupt(
            f"truncated: tensor data needs {data_size:,} bytes past offset {data_start:,} "
            f"but the file has {max(size - data_start, 0):,} there "
            f"({size:,} bytes in all, {data_start + data_size - size:,} missing)"
        )

    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise Corrupt("general.architecture is missing")
    bos_id = _int(meta.get("tokenizer.ggml.bos_token_id"))
    eos_id = _int(meta.get("tokenizer.ggml.eos_token_id"))
    tokens = meta.get("tokenizer.ggml.tokens")
    wanted = {i for i in (bos_id, eos_id) if i is not None}
    found = p.strings_at(tokens, wanted) if isinstance(tokens, Array) else {}
    return GGUFInfo(
        architecture=arch,
        name=_str(meta.get("general.name")),
        context_length=_int(meta.get(f"{arch}.context_length")),
        embedding_length=_int(meta.get(f"{arch}.embedding_length")),
        block_count=_int(meta.get(f"{arch}.block_count")),
        chat_template=_str(meta.get("tokenizer.chat_template")),
        quantization=_quantization(_int(meta.get("general.file_type")), types),
        parameters=parameters,
        size_bytes=size,
        n_tensors=n_tensors,
        bos_token=found.get(bos_id) if bos_id is not None else None,
        eos_token=found.get(eos_id) if eos_id is not None else None,
        pooling_type=_int(meta.get(f"{arch}.pooling_type")),
        finetune=_str(meta.get("general.finetune")),
        **_shape(p, meta, arch),
        tensor_bytes=tensor_bytes,
        repack_bytes=repack_bytes,
    )


def _shape(p: Parser, meta: dict[str, object], arch: str) -> dict[str, Any]:
    """The attention and vocabulary facts, per layer where the header says so per layer."""

    def numbers(key: str) -> list[int]:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, Array):
            return p.numbers(value)
        return [value] if isinstance(value, int) and not isinstance(value, bool) else []

    layers = _int(meta.get(f"{arch}.block_count")) or 0
    layers = layers if 0 < layers <= _MAX_LAYERS else 0  # per-layer facts for sane counts only
    kv = numbers("attention.head_count_kv") or numbers("attention.head_count")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    window = _int(meta.get(f"{arch}.attention.sliding_window"))
    return {
        "feed_forward_length": max(numbers("feed_forward_length"), default=None),
        "head_count": max(numbers("attention.head_count"), default=None),
        "head_count_kv": tuple(kv * layers if len(kv) == 1 else kv),
        "key_length": _int(meta.get(f"{arch}.attention.key_length")),
        "value_length": _int(meta.get(f"{arch}.attention.value_length")),
        "vocab_size": tokens.length
        if isinstance(tokens, Array)
        else _int(meta.get(f"{arch}.vocab_size")),
        "merges": merges.length if isinstance(merges, Array) else 0,
        "sliding_window": window,
        "swa_layers": _swa_layers(arch, layers, numbers("attention.sliding_window_pattern"))
        if window
        else (),
    }


def _swa_layers(arch: str, layers: int, pattern: list[int]) -> tuple[bool, ...]:
    """Which layers attend within the window: a per-layer pattern as the header gives it,
    else llama.cpp's period rule (period n: in each n layers all but the last are windowed;
    0: all are). An architecture with a window but no known period gets () (llama.cpp keeps
    a full-size cache for it)."""
    if len(pattern) == layers and layers > 1:
        return tuple(bool(v) for v in pattern)
    period = pattern[0] if len(pattern) == 1 else _SWA_PERIOD.get(arch)
    if period is None:
        return ()
    return tuple(period == 0 or il % period < period - 1 for il in range(layers))


def _quantization(file_type: int | None, types: Counter[int]) -> str | None:
    name = _FILE_TYPES.get(file_type & ~_FTYPE_GUESSED) if file_type is not None else None
    if name is None and types:
        ttype = types.most_common(1)[0][0]  # as llama.cpp guesses: the most frequent type
        name = _GGML_TYPES[ttype][0] if ttype in _GGML_TYPES else f"type {ttype}"
    return name


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
