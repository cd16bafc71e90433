"""The byte layer of a GGUF header: a bounds-checked cursor over the mapped file that decodes
metadata values (gguf.h's value types) and skips what is not needed, big arrays by size and
string arrays by their lengths alone. What the values mean is gguf.py's business."""

from __future__ import annotations

import mmap
import struct
from typing import NamedTuple

__all__ = ["Array", "Corrupt", "Parser", "Short"]

_MAX_ARRAY_NESTING = 8
_STRING, _ARRAY = 8, 9
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# GGUF metadata value types (gguf.h) other than string (8) and array (9).
_SCALARS: dict[int, struct.Struct] = {
    t: struct.Struct(f)
    for t, f in (
        (0, "<B"),
        (1, "<b"),
        (2, "<H"),
        (3, "<h"),
        (4, "<I"),
        (5, "<i"),
        (6, "<f"),
        (7, "<?"),
        (10, "<Q"),
        (11, "<q"),
        (12, "<d"),
    )
}


class Corrupt(Exception):
    """Why the file cannot be read (becomes InvalidModelFile naming the path, in gguf.py)."""


class Short(Corrupt):
    """The header runs past the end of the file."""

    def __init__(self, needed: int, size: int) -> None:
        super().__init__(f"header ends early: it needs {needed:,} bytes, the file has {size:,}")


class Array(NamedTuple):
    """A metadata array, validated and located but not decoded."""

    etype: int
    length: int
    start: int  # offset of the first element


class Parser:
    """A cursor over the header; every read past the end of the file raises Short."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def take(self, n: int) -> int:
        """Advance past `n` bytes that must exist; return where they start."""
        start = self.pos
        if start + n > self.size:
            raise Short(start + n, self.size)
        self.pos = start + n
        return start

    def u32(self) -> int:
        return int(_U32.unpack_from(self.buf, self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.buf, self.take(8))[0])

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return self.buf[start : start + n].decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.take(self.u64())

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(depth)
        scalar = _SCALARS.get(vtype)
        if scalar is None:
            raise Corrupt(f"unknown metadata value type {vtype} at byte {self.pos}")
        return scalar.unpack_from(self.buf, self.take(scalar.size))[0]

    def array(self, depth: int) -> Array:
        if depth >= _MAX_ARRAY_NESTING:
            raise Corrupt(f"metadata arrays nested too deep at byte {self.pos}")
        etype, count = self.u32(), self.u64()
        arr = Array(etype, count, self.pos)
        if etype == _STRING:
            self.skip_strings(count)
        elif etype == _ARRAY:
            for _ in range(count):
                self.array(depth + 1)
        else:
            scalar = _SCALARS.get(etype)
            if scalar is None:
                raise Corrupt(f"unknown metadata array type {etype} at byte {self.pos}")
            self.take(count * scalar.size)
        return arr

    def skip_strings(self, count: int) -> None:
        # The hot loop on a big vocabulary: locals only, one bounds check per element.
        buf, size, pos, unpack = self.buf, self.size, self.pos, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise Short(pos + 8, size)
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise Short(pos, size)
        self.pos = pos

    def numbers(self, arr: Array) -> list[int]:
        """The elements of a numeric array already validated by `array` (bools as 0/1)."""
        scalar = _SCALARS.get(arr.etype)
        if scalar is None or arr.etype in (6, 12):  # strings, arrays, floats: not counts
            return []
        raw = self.buf[arr.start : arr.start + arr.length * scalar.size]
        return [int(v[0]) for v in scalar.iter_unpack(raw)]

    def strings_at(self, arr: Array, wanted: set[int]) -> dict[int, str]:
        """Elements `wanted` of a string array already validated by `skip_strings`."""
        wanted = {i for i in wanted if 0 <= i < arr.length}
        if arr.etype != _STRING or not wanted:
            return {}
        buf, pos, unpack, found = self.buf, arr.start, _U64.unpack_from, {}
        for index in range(max(wanted) + 1):
            n: int = unpack(buf, pos)[0]
            if index in wanted:
                found[index] = buf[pos + 8 : pos + 8 + n].decode("utf-8", "replace")
            pos += 8 + n
        return found
