"""The `llm-router` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servers import GEMMA, SMOL, link_models


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args], capture_output=True, text=True,
        timeout=120, cwd=cwd,
    )  # fmt: skip


def test_ls_shows_format_size_quant_context(models_dir: Path) -> None:
    out = _cli("ls", "--models-dir", str(models_dir))
    assert out.returncode == 0, out.stderr
    for text in ("gguf", "Q4_1", "Q4_K_M", "8192", "32768", "gemma3", "llama"):
        assert text in out.stdout


def test_run_streams_an_answer(models_dir: Path) -> None:
    out = _cli("run", SMOL, "What is the capital of France?", "--models-dir", str(models_dir),
               "--temperature", "0", "--max-tokens", "30")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_run_raw_completion(models_dir: Path) -> None:
    out = _cli("run", GEMMA, "The capital of France is", "--raw", "--models-dir",
               str(models_dir), "--temperature", "0", "--max-tokens", "8")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_run_unknown_model_is_a_clear_error(models_dir: Path) -> None:
    out = _cli("run", "nope", "hi", "--models-dir", str(models_dir))
    assert out.returncode == 1
    assert "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_provisions_bundled_models_into_empty_dir(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    out = _cli("run", SMOL, "Hi", "--models-dir", str(empty), "--max-tokens", "2")
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in empty.iterdir())
    assert names == ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: 8080\nmodels:\n  - id: x\n    context_size: 3\n")
    out = _cli("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "models.0.context_size" in out.stderr


def test_models_dir_untouched_when_it_has_models(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = link_models(tmp_path / "m", smollm2_gguf)
    out = _cli("run", SMOL, "Hi", "--models-dir", str(models), "--max-tokens", "2")
    assert out.returncode == 0, out.stderr
    assert [p.name for p in models.iterdir()] == [smollm2_gguf.name]
