"""The GGUF header reader, on the two bundled real models and on small files built here.

The real files are only ever read: truncated or renamed variants are new files in tmp_path
(the SmolLM2 file may be a hard link into site-packages)."""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from llm_router.errors import InvalidModelFile
from llm_router.formats.gguf import GGUF_MAGIC, GGUFInfo, is_gguf, read_gguf_info

# --- small GGUF files built in the test -------------------------------------------------------

_U32, _U64, _F32, _STR, _ARR = 4, 10, 6, 8, 9


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def _u32(key: str, value: int) -> bytes:
    return _kv(key, _U32, struct.pack("<I", value))


def _str(key: str, value: str) -> bytes:
    return _kv(key, _STR, _s(value))


def _strings(key: str, items: list[str]) -> bytes:
    return _kv(key, _ARR, struct.pack("<IQ", _STR, len(items)) + b"".join(map(_s, items)))


def _floats(key: str, items: list[float]) -> bytes:
    payload = struct.pack("<IQ", _F32, len(items)) + struct.pack(f"<{len(items)}f", *items)
    return _kv(key, _ARR, payload)


# ggml type id -> (block size, bytes per block) for the types these files use.
_SIZES = {0: (1, 4), 1: (1, 2), 8: (32, 34), 12: (256, 144)}


def _build(
    kvs: list[bytes],
    tensors: list[tuple[str, list[int], int]],
    *,
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    head = GGUF_MAGIC + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    end, infos = 0, b""  # tensor data: each tensor aligned, no padding after the last
    for name, dims, ttype in tensors:
        offset = -(-end // alignment) * alignment
        infos += _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)
        n = 1
        for d in dims:
            n *= d
        block, nbytes = _SIZES[ttype]
        end = offset + n // block * nbytes
    header = head + infos
    header += b"\0" * (-len(header) % alignment)
    return header + b"\x5a" * end


def _tiny(version: int = 3, file_type: int | None = 7) -> bytes:
    kvs = [
        _str("general.architecture", "bert"),
        _str("general.name", "tiny"),
        _u32("bert.context_length", 512),
        _u32("bert.embedding_length", 64),
        _u32("bert.block_count", 2),
        _u32("bert.pooling_type", 1),
        _strings("tokenizer.ggml.tokens", ["[PAD]", "[CLS]", "[SEP]", "héllo", "x" * 300]),
        _floats("tokenizer.ggml.scores", [0.0] * 5),
        _u32("tokenizer.ggml.bos_token_id", 1),
        _u32("tokenizer.ggml.eos_token_id", 4),
    ]
    if file_type is not None:
        kvs.append(_u32("general.file_type", file_type))
    tensors = [
        ("token_embd.weight", [64, 5], 8),
        ("blk.0.attn_norm.weight", [64], 0),
        ("blk.0.ffn_up.weight", [64, 128], 8),
        ("blk.1.ffn_up.weight", [64, 128], 8),
        ("output.weight", [256, 3], 12),
    ]
    return _build(kvs, tensors, version=version)


def _write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _copy_prefix(source: Path, target: Path, n: int) -> Path:
    """A new file holding the first `n` bytes of `source` (which is opened read-only)."""
    with source.open("rb") as src, target.open("wb") as dst:
        while n > 0:
            chunk = src.read(min(n, 1 << 22))
            if not chunk:
                break
            dst.write(chunk)
            n -= len(chunk)
    return target


def test_smollm2(smollm2_gguf: Path) -> None:
    info = read_gguf_info(smollm2_gguf)
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.block_count == 30
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.quantization == "Q4_1"
    assert 134_000_000 <= info.parameters <= 136_000_000
    assert info.size_bytes == os.path.getsize(smollm2_gguf)
    assert info.n_tensors == 272
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert info.pooling_type is None


def test_gemma(gemma_gguf: Path) -> None:
    info = read_gguf_info(gemma_gguf)
    assert info.architecture == "gemma3"
    assert info.context_length == 32768
    assert info.chat_template is None
    assert info.quantization == "Q4_K_M"
    assert 260_000_000 <= info.parameters <= 275_000_000
    assert info.size_bytes == os.path.getsize(gemma_gguf)
    assert (info.bos_token, info.eos_token) == ("<bos>", "<eos>")


def test_truncated_tensor_data(smollm2_gguf: Path, tmp_path: Path) -> None:
    size = os.path.getsize(smollm2_gguf)
    for cut in (size - 1, size // 2):
        path = _copy_prefix(smollm2_gguf, tmp_path / f"cut{cut}.gguf", cut)
        with pytest.raises(InvalidModelFile, match="truncated") as caught:
            read_gguf_info(path)
        assert f"{size - cut:,} missing" in caught.value.message
        assert is_gguf(path)


@pytest.mark.parametrize("cut", [4, 7, 12, 23, 24, 5_000, 20_000, 400_000, 1_700_000, 1_785_600])
def test_cut_inside_header(smollm2_gguf: Path, tmp_path: Path, cut: int) -> None:
    path = _copy_prefix(smollm2_gguf, tmp_path / "cut.gguf", cut)
    with pytest.raises(InvalidModelFile, match="header ends early"):
        read_gguf_info(path)


def test_gemma_cut_inside_vocabulary(gemma_gguf: Path, tmp_path: Path) -> None:
    path = _copy_prefix(gemma_gguf, tmp_path / "cut.gguf", 2_000_000)
    with pytest.raises(InvalidModelFile, match="header ends early"):
        read_gguf_info(path)


def test_detected_by_content_not_name(smollm2_gguf: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    shutil.copyfile(smollm2_gguf, renamed)
    assert is_gguf(renamed)
    assert read_gguf_info(renamed).architecture == "llama"
    assert is_gguf(smollm2_gguf)


def test_file_not_held_open(smollm2_gguf: Path) -> None:
    assert Path("/proc/self/fd").is_dir(), "this check reads /proc (Linux, as CI)"
    read_gguf_info(smollm2_gguf)
    target = os.path.realpath(smollm2_gguf)
    fds = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    assert target not in fds
    assert target not in Path("/proc/self/maps").read_text()


# --- not GGUF, or broken ----------------------------------------------------------------------


def test_text_file(tmp_path: Path) -> None:
    path = _write(tmp_path, b"just some text, not a model\n" * 10, "notes.gguf")
    assert not is_gguf(path)
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_info(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = _write(tmp_path, b"", "empty.gguf")
    assert not is_gguf(empty)
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_gguf_info(empty)
    missing = tmp_path / "missing.gguf"
    assert not is_gguf(missing)
    assert not is_gguf(tmp_path)
    with pytest.raises(InvalidModelFile, match="cannot read"):
        read_gguf_info(missing)


def test_unsupported_versions(tmp_path: Path) -> None:
    v1 = _write(tmp_path, GGUF_MAGIC + struct.pack("<I", 1) + b"\0" * 64)
    with pytest.raises(InvalidModelFile, match="unsupported GGUF version 1"):
        read_gguf_info(v1)
    big_endian = _write(tmp_path, GGUF_MAGIC + struct.pack(">I", 3) + b"\0" * 64)
    with pytest.raises(InvalidModelFile, match="big-endian"):
        read_gguf_info(big_endian)


# --- small built files ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_built_file(tmp_path: Path, version: int) -> None:
    info = read_gguf_info(_write(tmp_path, _tiny(version)))
    assert info == GGUFInfo(
        architecture="bert",
        name="tiny",
        context_length=512,
        embedding_length=64,
        block_count=2,
        chat_template=None,
        quantization="Q8_0",
        parameters=64 * 5 + 64 + 2 * 64 * 128 + 256 * 3,
        size_bytes=len(_tiny(version)),
        n_tensors=5,
        bos_token="[CLS]",
        eos_token="x" * 300,
        pooling_type=1,
        vocab_size=5,
        tensor_bytes=10 * 34 + 64 * 4 + 2 * 256 * 34 + 3 * 144,  # blocks x bytes, per tensor
    )


def test_quantization_from_tensor_types(tmp_path: Path) -> None:
    assert read_gguf_info(_write(tmp_path, _tiny(file_type=None))).quantization == "Q8_0"
    assert read_gguf_info(_write(tmp_path, _tiny(file_type=15))).quantization == "Q4_K_M"


def test_every_prefix_of_a_built_file(tmp_path: Path) -> None:
    data = _tiny()
    data_start = data.index(b"\x5a" * 16)
    path = tmp_path / "prefix.gguf"
    for cut in [*range(data_start + 1), *range(data_start + 1, len(data), 97), len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidModelFile):
            read_gguf_info(path)


def test_corrupted_bytes_only_raise_invalid_model_file(tmp_path: Path) -> None:
    data = _tiny()
    data_start = data.index(b"\x5a" * 16)
    path = tmp_path / "fuzz.gguf"
    rng = random.Random(1234)
    for _ in range(1500):
        broken = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            broken[rng.randrange(4, data_start)] = rng.randrange(256)
        path.write_bytes(bytes(broken))
        try:
            read_gguf_info(path)
        except InvalidModelFile:
            pass


def test_bad_alignment_and_value_type(tmp_path: Path) -> None:
    arch = _str("general.architecture", "llama")
    bad_alignment = _build([arch, _u32("general.alignment", 24)], [])
    with pytest.raises(InvalidModelFile, match="alignment"):
        read_gguf_info(_write(tmp_path, bad_alignment))
    bad_type = _build([arch, _kv("general.odd", 99, b"\0" * 8)], [])
    with pytest.raises(InvalidModelFile, match="value type 99"):
        read_gguf_info(_write(tmp_path, bad_type))
    no_arch = _build([_str("general.name", "x")], [("w", [32], 0)])
    with pytest.raises(InvalidModelFile, match=r"general\.architecture"):
        read_gguf_info(_write(tmp_path, no_arch))
