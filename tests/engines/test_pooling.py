"""Pooling as sentence-transformers folders configure it, on small arrays and on the bundled
MiniLM folder's own config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_router.engines.pooling import Pooling, read_pooling
from llm_router.errors import ModelLoadFailed

STATES = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
MASK = np.array([[1, 1, 0]], dtype=np.int64)  # the third token is padding


def test_mean_ignores_padding_then_normalizes() -> None:
    np.testing.assert_allclose(Pooling("mean", False)(STATES, MASK), [[2.0, 2.0]])
    np.testing.assert_allclose(Pooling("mean", True)(STATES, MASK), [[2**-0.5, 2**-0.5]], rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("cls", [1.0, 0.0]),
        ("max", [3.0, 4.0]),
        ("lasttoken", [3.0, 4.0]),
        ("mean_sqrt_len", [4 / 2**0.5, 4 / 2**0.5]),
    ],
)
def test_other_modes(mode: str, expected: list[float]) -> None:
    np.testing.assert_allclose(Pooling(mode, False)(STATES, MASK)[0], expected, rtol=1e-6)


def test_the_bundled_folder(minilm: Path) -> None:
    assert read_pooling(minilm) == Pooling("mean", True, 256)


def test_plain_encoder_folder_defaults_to_mean_normalized(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == Pooling("mean", True, None)


def test_a_module_it_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadFailed, match="'Dense' is not supported"):
        read_pooling(tmp_path)


def test_batches_go_longest_first_and_vectors_come_back_in_input_order() -> None:
    from llm_router.engines.pooling import embed_in_batches

    seen: list[list[str]] = []

    def run(batch: list[str]) -> tuple[list[list[float]], int]:
        seen.append(batch)
        return [[float(len(t))] for t in batch], sum(len(t) for t in batch)

    texts = ["a", "ccc", "bb", "dddd", "e"]
    vectors, used = embed_in_batches(texts, 2, run)
    assert vectors == [[1.0], [3.0], [2.0], [4.0], [1.0]] and used == 11
    assert seen == [["dddd", "ccc"], ["bb", "a"], ["e"]]
