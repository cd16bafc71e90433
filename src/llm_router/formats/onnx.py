"""A minimal protobuf walker for ONNX files: is this a ModelProto, and what do its graph's
initializers add up to. Nothing is imported from `onnx`; fields are skipped by length, so a
model with gigabytes of embedded weights costs a walk over a few hundred headers.

Only the fields used here are decoded (ModelProto: ir_version 1, producer_name 2, graph 7,
opset_import 8, metadata_props 14; GraphProto: node 1, initializer 5; NodeProto: input 1,
op_type 4, attribute 5; TensorProto: dims 1, data_type 2, name 8). Protobuf writers emit fields in number order, so a model starts with the
ir_version tag, byte 0x08."""

from __future__ import annotations

import math
import mmap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llm_router.errors import InvalidModelFile

__all__ = ["OnnxInfo", "is_onnx", "read_onnx_meta"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# TensorProto.DataType -> name
_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
    17: "float8e4m3fn",
    19: "float8e5m2",
    21: "uint4",
    22: "int4",
}


class _Bad(Exception):
    pass


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """What an ONNX file's ModelProto says. `parameters` counts initializer elements (the
    weights a MatMulNBits node packs count as K x N of `int<bits>`); `dtype` is the type
    holding the most of them."""

    ir_version: int
    producer: str | None
    opsets: dict[str, int]
    parameters: int
    dtype: str | None
    n_initializers: int
    metadata: dict[str, str]
    size_bytes: int


class _Reader:
    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: mmap.mmap | bytes, start: int, end: int) -> None:
        self.buf, self.pos, self.end = buf, start, end

    def varint(self) -> int:
        result, shift = 0, 0
        while True:
            if self.pos >= self.end or shift > 63:
                raise _Bad("truncated varint")
            byte = self.buf[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def fields(self) -> list[tuple[int, int, int, int]]:
        """(field number, wire type, value, length) of each field. A length-delimited field's
        value is its payload's offset; its payload is skipped, not read."""
        out = []
        while self.pos < self.end:
            tag = self.varint()
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise _Bad("field number 0")
            if wire == _VARINT:
                out.append((number, wire, self.varint(), 0))
            elif wire == _LEN:
                n = self.varint()
                if self.pos + n > self.end:
                    raise _Bad(f"field {number} runs past its end")
                out.append((number, wire, self.pos, n))
                self.pos += n
            elif wire in (_I64, _I32):
                self.pos += 8 if wire == _I64 else 4
                if self.pos > self.end:
                    raise _Bad("truncated fixed-size field")
            else:
                raise _Bad(f"wire type {wire} (groups are not used by ONNX)")
        return out


def is_onnx(path: Path) -> bool:
    """True when the file parses as an ONNX ModelProto with a graph."""
    try:
        read_onnx_meta(path)
    except InvalidModelFile:
        return False
    return True


def read_onnx_meta(path: Path) -> OnnxInfo:
    """Walk the ModelProto in `path`. Raises InvalidModelFile when it is not one."""
    try:
        with open(path, "rb") as file:
            if file.read(1) != b"\x08":
                raise InvalidModelFile(f"{path}: not an ONNX model (no ir_version field first)")
            file.seek(0)
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _model(buf, len(buf))
    except OSError as exc:
        raise InvalidModelFile(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # mmap of an empty file
        raise InvalidModelFile(f"{path}: not an ONNX model ({exc})") from None
    except _Bad as exc:
        raise InvalidModelFile(f"{path}: not an ONNX model ({exc})") from None


def _text(buf: mmap.mmap, start: int, n: int) -> str:
    return bytes(buf[start : start + n]).decode("utf-8", "replace")


def _model(buf: mmap.mmap, size: int) -> OnnxInfo:
    ir_version, producer, graph = 0, None, None
    opsets: dict[str, int] = {}
    metadata: dict[str, str] = {}
    for number, wire, value, n in _Reader(buf, 0, size).fields():
        if number == 1 and wire == _VARINT:
            ir_version = value
        elif number == 2 and wire == _LEN:
            producer = _text(buf, value, n)
        elif number == 7 and wire == _LEN:
            graph = (value, n)
        elif number == 8 and wire == _LEN:
            domain, version = _opset(buf, value, n)
            opsets[domain] = version
        elif number == 14 and wire == _LEN:
            key, val = _entry(buf, value, n)
            metadata[key] = val
    if not ir_version or graph is None:
        raise _Bad("no ir_version or no graph")
    tensors: list[tuple[str, int, str]] = []
    quantized: list[tuple[list[str], int, int]] = []  # (inputs, elements, bits)
    for number, wire, value, n in _Reader(buf, graph[0], graph[0] + graph[1]).fields():
        if number == 5 and wire == _LEN:
            tensors.append(_tensor(buf, value, n))
        elif number == 1 and wire == _LEN:
            node = _quantized_matmul(buf, value, n)
            if node is not None:
                quantized.append(node)
    # MatMulNBits packs K x N weights into uint8 blocks plus scales: count K x N for it.
    packed = {name for inputs, _, _ in quantized for name in inputs[1:]}
    by_type = Counter[str]()
    for name, elements, type_name in tensors:
        if name not in packed:
            by_type[type_name] += elements
    for _, elements, bits in quantized:
        by_type[f"int{bits}"] += elements
    top = by_type.most_common(1)[0][0] if by_type else None
    return OnnxInfo(
        ir_version, producer, opsets, sum(by_type.values()), top, len(tensors), metadata, size
    )


def _quantized_matmul(buf: mmap.mmap, start: int, n: int) -> tuple[list[str], int, int] | None:
    """For a MatMulNBits node: its inputs, K x N and its bits; None for any other node."""
    fields = _Reader(buf, start, start + n).fields()
    op_type = next((_text(buf, v, ln) for num, w, v, ln in fields if num == 4 and w == _LEN), "")
    if op_type != "MatMulNBits":
        return None
    inputs = [_text(buf, v, ln) for num, w, v, ln in fields if num == 1 and w == _LEN]
    attrs: dict[str, int] = {}
    for number, wire, value, length in fields:
        if number == 5 and wire == _LEN:  # AttributeProto: name 1, i 3
            name, ivalue = "", 0
            for anum, awire, avalue, alen in _Reader(buf, value, value + length).fields():
                if anum == 1 and awire == _LEN:
                    name = _text(buf, avalue, alen)
                elif anum == 3 and awire == _VARINT:
                    ivalue = avalue
            attrs[name] = ivalue
    return inputs, attrs.get("K", 0) * attrs.get("N", 0), attrs.get("bits", 4)


def _opset(buf: mmap.mmap, start: int, n: int) -> tuple[str, int]:
    domain, version = "", 0
    for number, wire, value, length in _Reader(buf, start, start + n).fields():
        if number == 1 and wire == _LEN:
            domain = _text(buf, value, length)
        elif number == 2 and wire == _VARINT:
            version = value
    return domain, version


def _entry(buf: mmap.mmap, start: int, n: int) -> tuple[str, str]:
    key = val = ""
    for number, wire, value, length in _Reader(buf, start, start + n).fields():
        if wire == _LEN and number in (1, 2):
            text = _text(buf, value, length)
            key, val = (text, val) if number == 1 else (key, text)
    return key, val


def _tensor(buf: mmap.mmap, start: int, n: int) -> tuple[str, int, str]:
    """Name, element count and type name of a TensorProto, from its header fields only."""
    dims: list[int] = []
    dtype = 0
    name = ""
    # Tensor payloads (raw_data, field 9) are skipped by length in `fields`.
    for number, wire, value, length in _Reader(buf, start, start + n).fields():
        if number == 1 and wire == _VARINT:
            dims.append(value)
        elif number == 1 and wire == _LEN:  # packed dims
            packed = _Reader(buf, value, value + length)
            while packed.pos < packed.end:
                dims.append(packed.varint())
        elif number == 2 and wire == _VARINT:
            dtype = value
        elif number == 8 and wire == _LEN:
            name = _text(buf, value, length)
    return name, math.prod(dims), _TYPES.get(dtype, f"type {dtype}")
