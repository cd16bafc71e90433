"""A pure-Python reader of safetensors headers: 8 bytes of little-endian header length, then a
JSON object naming each tensor's dtype, shape and byte range. Parameter counts and dtypes come
from the header alone; no tensor data is read."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llm_router.errors import InvalidModelFile

__all__ = ["SafetensorsInfo", "is_safetensors", "read_safetensors_meta"]

# A header larger than this is refused (the safetensors library's own limit is 100 MB).
MAX_HEADER = 100_000_000
_LEN = struct.Struct("<Q")
_DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}


@dataclass(frozen=True, slots=True)
class SafetensorsInfo:
    """What one safetensors header says. `dtype` is the dtype holding the most elements."""

    parameters: int
    dtype: str | None
    n_tensors: int
    size_bytes: int
    metadata: dict[str, str]


def is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file: a header length that fits in the
    file, followed by `{`. Says nothing about the rest of the header."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
            size = file.seek(0, 2)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = _LEN.unpack_from(head)
    return 2 <= n <= min(MAX_HEADER, size - 8) and head[8:9] == b"{"


def read_safetensors_meta(path: Path) -> SafetensorsInfo:
    """Read and check the header of one safetensors file: every tensor's byte range must match
    its shape and dtype and lie inside the file. Raises InvalidModelFile naming the reason."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            size = file.seek(0, 2)
            if len(head) < 8:
                raise InvalidModelFile(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = _LEN.unpack(head)
            if n > min(MAX_HEADER, size - 8):
                raise InvalidModelFile(
                    f"{path}: corrupt safetensors header: it claims {n:,} bytes, "
                    f"the file has {size - 8:,} after the length"
                )
            file.seek(8)
            raw = file.read(n)
    except OSError as exc:
        raise InvalidModelFile(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelFile(f"{path}: corrupt safetensors header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidModelFile(f"{path}: corrupt safetensors header: not a JSON object")
    try:
        return _check(header, size - 8 - n, size)
    except ValueError as exc:
        raise InvalidModelFile(f"{path}: corrupt safetensors header: {exc}") from None


def _check(header: dict[str, object], data_size: int, size: int) -> SafetensorsInfo:
    raw_meta = header.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    parameters, by_dtype = 0, Counter[str]()
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise ValueError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r} has a bad shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
        ):
            raise ValueError(f"tensor {name!r} has bad data_offsets {offsets!r}")
        begin, end = offsets
        count = math.prod(shape)
        if not 0 <= begin <= end or end - begin != math.ceil(count * _DTYPE_BYTES[dtype]):
            raise ValueError(f"tensor {name!r}: {end - begin} bytes do not hold {shape} of {dtype}")
        if end > data_size:
            raise ValueError(
                f"tensor {name!r} ends at byte {end:,} of the data, which has {data_size:,} "
                "(truncated file?)"
            )
        parameters += count
        by_dtype[dtype] += count
    dtype = by_dtype.most_common(1)[0][0] if by_dtype else None
    return SafetensorsInfo(parameters, dtype, len(header), size, metadata)
