"""PyTorch checkpoints read without torch and without unpickling: `pickletools.genops` lists
the opcodes of the pickle that holds the tensors (`data.pkl` in a `torch.save` zip; the fourth
of the pickles a legacy, `_use_new_zipfile_serialization=False`, file starts with), from which
the storages (dtype, element count) and the globals the pickle would import are collected.
Nothing is executed."""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llm_router.errors import InvalidModelFile

__all__ = ["TorchInfo", "is_torch_checkpoint", "read_torch_meta", "refused_globals"]

_STORAGES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
# Globals a plain state dict uses; anything else hints that torch's weights_only loader may
# refuse the file (the engine decides by trying).
_PLAIN = {
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "collections OrderedDict",
    "torch._utils _rebuild_tensor",
}
# Outside torch's own names, all that torch.load(weights_only=True) imports (torch 2.x's
# `_weights_only_unpickler` allow-list); a global outside torch and these is refused for sure.
_WEIGHTS_ONLY_OTHERS = {
    "collections.OrderedDict",
    "collections.Counter",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
    "builtins.complex",
}
_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8"}
_INTS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}
PICKLE_PROTO = b"\x80"
# A legacy file: pickles of this number, the protocol version and the system's sizes, then the
# object's pickle, then the storages' keys and their raw bytes.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# A checkpoint's data.pkl lists its tensors (~100 bytes, ~20 opcodes each: a few MiB for the
# largest models); it is read when the models directory is scanned, on the event loop, so a
# crafted one (a 1.5 MB zip of a 1.5 GB pickle froze a server for minutes) stops here.
MAX_PICKLE_BYTES = 32 << 20
MAX_PICKLE_OPS = 1_000_000


@dataclass(frozen=True, slots=True)
class TorchInfo:
    """Storages of a checkpoint: elements in all (shared storages counted once), the dtype
    holding most of them, and the globals beyond a plain state dict's."""

    parameters: int | None
    dtype: str | None
    other_globals: tuple[str, ...]
    size_bytes: int


def is_torch_checkpoint(path: Path) -> bool:
    """True for a `torch.save` zip (a member `*/data.pkl`) or a legacy pickle file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("data.pkl") for n in archive.namelist())
        with open(path, "rb") as file:
            return file.read(1) == PICKLE_PROTO
    except (OSError, zipfile.BadZipFile):
        return False


def read_torch_meta(path: Path) -> TorchInfo:
    """Read the storages of a checkpoint, a zip or a legacy one. Raises InvalidModelFile for a
    file that is neither, or a corrupt pickle."""
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            if is_torch_checkpoint(path):
                return _legacy(path, size)
            raise InvalidModelFile(f"{path}: not a PyTorch checkpoint (neither zip nor pickle)")
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                raise InvalidModelFile(f"{path}: a zip file without data.pkl, not a checkpoint")
            with archive.open(names[0]) as pickled:  # declared sizes can lie: read at most
                data = pickled.read(MAX_PICKLE_BYTES + 1)
            if len(data) > MAX_PICKLE_BYTES:
                raise InvalidModelFile(
                    f"{path}: its data.pkl is over {MAX_PICKLE_BYTES >> 20} MiB, far more than "
                    "a checkpoint's list of tensors: not read"
                )
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidModelFile(f"{path}: cannot read the checkpoint: {exc}") from exc
    try:
        return _scan(data, size)
    except ValueError as exc:
        raise InvalidModelFile(f"{path}: corrupt checkpoint pickle: {exc}") from None


def refused_globals(other_globals: tuple[str, ...]) -> tuple[str, ...]:
    """The globals among a checkpoint's `other_globals` that torch's weights-only loader
    refuses for sure (`posix.system`, `argparse.Namespace`): the file loads only with
    unpickling. torch's own names beyond a plain state dict's are left to the loader."""
    return tuple(
        g for g in other_globals if g.split(".")[0] != "torch" and g not in _WEIGHTS_ONLY_OTHERS
    )


def _legacy(path: Path, size: int) -> TorchInfo:
    """A legacy checkpoint: its leading pickles checked, the object's pickle scanned."""
    with open(path, "rb") as file:
        head = io.BytesIO(file.read(MAX_PICKLE_BYTES + 1))
    try:
        if LEGACY_MAGIC not in _values(head):
            raise InvalidModelFile(f"{path}: a pickle, but not one torch.save wrote (no magic)")
        _values(head)  # the protocol version
        _values(head)  # the system's sizes
        start = head.tell()
        _values(head)
        data = head.getvalue()[start : head.tell()]
    except ValueError as exc:
        if head.tell() > MAX_PICKLE_BYTES:  # ran out of what was read
            raise InvalidModelFile(
                f"{path}: its pickle is over {MAX_PICKLE_BYTES >> 20} MiB, far more than a "
                "checkpoint's list of tensors: not read"
            ) from None
        raise InvalidModelFile(f"{path}: corrupt checkpoint pickle: {exc}") from None
    try:
        return _scan(data, size)
    except ValueError as exc:
        raise InvalidModelFile(f"{path}: corrupt checkpoint pickle: {exc}") from None


def _values(stream: io.BytesIO) -> set[object]:
    """Walk one pickle of `stream` to its STOP; the integers it pushes. ValueError for a
    corrupt one or one of more than MAX_PICKLE_OPS opcodes."""
    found: set[object] = set()
    for count, (op, raw, _) in enumerate(pickletools.genops(stream)):
        if count > MAX_PICKLE_OPS:
            raise ValueError(f"more than {MAX_PICKLE_OPS:,} opcodes, not a list of tensors")
        if op.name in _INTS and len(found) < 16:
            found.add(raw)
    return found


def _scan(data: bytes, size: int) -> TorchInfo:
    memo: dict[int, str] = {}
    storages: dict[str, tuple[str, int]] = {}
    others: set[str] = set()
    pending: str | None = None  # a storage class seen; its key and element count follow
    key: str | None = None
    last_global: str | None = None
    memo_count = 0
    for count, (op, raw, _) in enumerate(pickletools.genops(data)):
        if count > MAX_PICKLE_OPS:
            raise ValueError(f"more than {MAX_PICKLE_OPS:,} opcodes, not a list of tensors")
        name, arg = op.name, str(raw)
        if name in ("GLOBAL", "STACK_GLOBAL"):
            last_global = arg if name == "GLOBAL" else None
            module, _, attr = (last_global or "").partition(" ")
            if module == "torch" and attr in _STORAGES:
                pending, key = attr, None
            elif last_global and last_global not in _PLAIN:
                others.add(last_global.replace(" ", "."))
            continue
        if name in _PUTS or name == "MEMOIZE":
            index = int(arg) if name != "MEMOIZE" else memo_count
            memo_count += 1
            if last_global is not None:
                memo[index] = last_global
            last_global = None
            continue
        last_global = None
        if name in _GETS:
            module, _, attr = memo.get(int(arg), "").partition(" ")
            if module == "torch" and attr in _STORAGES:
                pending, key = attr, None
        elif pending is not None and name in _STRINGS and key is None:
            key = arg
        elif pending is not None and key is not None and name in _INTS:
            storages.setdefault(key, (_STORAGES[pending], int(arg)))
            pending = key = None
    by_dtype = Counter[str]()
    for type_name, count in storages.values():
        by_dtype[type_name] += count
    top = by_dtype.most_common(1)[0][0] if by_dtype else None
    return TorchInfo(sum(by_dtype.values()), top, tuple(sorted(others)), size)
