"""The `llm-router` command as a user runs it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from llm_router.formats.gguf import read_gguf_info
from model_cache import minilm_folder, smollm2_hf  # noqa: F401  (fixtures)
from servers import GEMMA, SMOL, free_port, link_models, new_server

pytestmark = pytest.mark.real  # real models, conversions or processes


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The default port is one nobody listens on: `run` asks a server when one answers there
    # (a `make run` beside the tests), and these test it in its own process.
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "LLM_ROUTER_PORT": str(free_port())},
    )


def test_ls_shows_format_size_quant_context(models_dir: Path) -> None:
    out = _cli("ls", "--models-dir", str(models_dir))
    assert out.returncode == 0, out.stderr
    for text in ("gguf", "Q4_1", "Q4_K_M", "8192", "32768", "gemma3", "llama"):
        assert text in out.stdout


def test_run_streams_an_answer(models_dir: Path) -> None:
    out = _cli(
        "run",
        SMOL,
        "What is the capital of France?",
        "--models-dir",
        str(models_dir),
        "--temperature",
        "0",
        "--max-tokens",
        "30",
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_run_a_model_of_ollamas_store(tmp_path: Path, smollm2_gguf: Path) -> None:
    """OLLAMA_MODELS at Ollama's store: its models answer under their Ollama names."""
    from test_discovery import _ollama_store

    store = _ollama_store(tmp_path / "ollama", smollm2_gguf)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "OLLAMA_"))}
    out = subprocess.run(
        [sys.executable, "-m", "llm_router", "run", "smollm2", "What is the capital of France?",
         "--temperature", "0", "--max-tokens", "12"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**env, "OLLAMA_MODELS": str(store), "LLM_ROUTER_PORT": str(free_port())},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) >= 3  # SmolLM2's answer (its preset: the same file)
    assert sorted(p.name for p in store.iterdir()) == ["blobs", "manifests"]  # nothing added
    assert not (tmp_path / "models").exists()


def test_run_says_when_it_makes_the_models_directory(tmp_path: Path) -> None:
    """`run` from any directory made ./models with ~430 MB of bundled models, silently."""
    out = _cli("run", SMOL, "Hi", "--max-tokens", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    made = tmp_path / "models"
    assert f"the models directory {made} does not exist: making it" in out.stderr
    assert (made / f"{SMOL}.gguf").exists()


def test_run_raw_completion(models_dir: Path) -> None:
    out = _cli(
        "run",
        GEMMA,
        "The capital of France is",
        "--raw",
        "--models-dir",
        str(models_dir),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    )
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
    assert names == [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "all-MiniLM-L6-v2",
        "gemma-3-270m-q4_k_m.gguf",
    ]
    assert (empty / "all-MiniLM-L6-v2" / "model.onnx").is_file()  # served without torch
    # a copy, not a hard link into the installed package: a write in place (truncate, a
    # tool rewriting the file) reached the package and every models directory linked to it
    from llm_router.defaults import bundled_smollm2

    placed, bundled = empty / "SmolLM2-135M-Instruct.Q4_1.gguf", bundled_smollm2()
    assert bundled is not None and placed.stat().st_ino != bundled.stat().st_ino
    assert placed.stat().st_size == bundled.stat().st_size


def test_a_provisioning_cut_short_leaves_no_model_and_the_next_start_does_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while Gemma was written, a start left a truncated Gemma and no MiniLM, and
    since the directory then held a model nothing ever finished them (found from outside).
    Provisioning now makes everything aside and moves it in at the end."""
    from llm_router import defaults

    models = tmp_path / "models"
    real = defaults.bundled_gemma

    def killed(target: Path) -> Path:
        target.write_bytes(b"GGUF" + bytes(4096))  # half written, then the process ends
        raise KeyboardInterrupt

    monkeypatch.setattr(defaults, "bundled_gemma", killed)
    with pytest.raises(KeyboardInterrupt):
        defaults.provision(models)
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == []
    monkeypatch.setattr(defaults, "bundled_gemma", real)
    defaults.provision(models)
    assert sorted(p.name for p in models.iterdir()) == [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "all-MiniLM-L6-v2",
        "gemma-3-270m-q4_k_m.gguf",
    ]
    assert (models / "gemma-3-270m-q4_k_m.gguf").stat().st_size > 200_000_000


def test_provisioning_logs_where_each_model_ends_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedding model's line named the staging folder it was built in
    (`<models>/.provisioning/all-MiniLM-L6-v2`), which is gone once the start is done (found
    from outside): every line names the model's final path."""
    from llm_router import defaults

    models = tmp_path / "models"
    monkeypatch.setattr(defaults, "bundled_smollm2", lambda: None)  # MiniLM's line is the one
    monkeypatch.setattr(defaults, "bundled_gemma", lambda target: None)
    with caplog.at_level(logging.INFO, logger="llm_router.defaults"):
        placed = defaults.provision(models)
    assert placed == [models / defaults.MINILM_ID]
    lines = [r.getMessage() for r in caplog.records if "bundled embedding model" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith(f"-> {models / defaults.MINILM_ID} (ONNX)")
    assert not any(".provisioning" in r.getMessage() for r in caplog.records)


def test_a_models_dir_that_cannot_be_made_is_one_line_before_the_start(tmp_path: Path) -> None:
    """A models directory under a file was a traceback from provisioning, 'Application
    startup failed' and exit 3, the port already taken (found from outside)."""
    (tmp_path / "afile").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nmodels_dir: {tmp_path / 'afile' / 'models'}\n")
    out = _cli("serve", "--config", str(cfg), "--port", "0")
    assert out.returncode == 2, out.stderr
    assert "cannot be made" in out.stderr and "Traceback" not in out.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: 8080\nmodels:\n  - id: x\n    context_size: 3\n")
    out = _cli("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "models.0.context_size" in out.stderr


def test_a_route_the_router_cannot_build_is_a_clear_error(tmp_path: Path) -> None:
    """Found while the app is built (not by the settings' own checks): the same two lines and
    exit code as any other configuration error, no traceback."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        f"port: 8080\nmodels_dir: {tmp_path}\nprovision_default_models: false\n"
        "spare_workers: false\nmodels:\n"
        "  - {id: t1, provider: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "routes:\n  - {name: r1, targets: [t1], strategy: nosuch}\n"
    )
    out = _cli("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "│" not in out.stderr
    # it named neither the route nor the key
    assert out.stderr.splitlines()[-1] == (
        "error: routes[0].strategy (route 'r1'): unknown strategy 'nosuch': use one of "
        "quality-first, cost-optimized, speed-priority, balanced, round-robin, least-loaded "
        "or 'package.module:function'"
    )


def test_a_route_named_like_a_model_is_one_line_at_start(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """Found once the models directory is scanned, in the server's start-up: ~50 lines of
    uvicorn's lifespan traceback and exit 3, where every other configuration error is one
    `error:` line and exit 2 (and a reload refuses it with a 400)."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\nmodels_dir: {models}\nprovision_default_models: false\n"
        f"spare_workers: false\nroutes:\n  - {{name: {smollm2_gguf.stem}, targets: [x]}}\n"
    )
    out = _cli("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", "0")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"error: routes[0].name: route name '{smollm2_gguf.stem}' is already the name of a "
        f"model in models_dir ({models}); name the route otherwise"
    )


def test_an_error_is_one_whole_line_with_its_brackets(tmp_path: Path) -> None:
    """rich read a message's `[...]` as markup and dropped it (`pip install
    'llm-runner-router[ray]'` lost its `[ray]`, a route's `skipped=[...]` its list) and wrapped
    errors at 80 columns in a pipe."""
    cfg = tmp_path / "dd.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    name = "team[a]-" + "x" * 80
    out = _cli("keys", "show", name, "--config", str(cfg))
    assert out.returncode == 1
    assert out.stderr == f"error: no key named '{name}'\n"


def test_serve_on_a_port_in_use_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """uvicorn found the port taken only once the models were provisioned: an ERROR line
    after the startup's, exit 3. The socket is now bound first."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"data_dir: {tmp_path / 'data'}\nmodels_dir: {tmp_path / 'models'}\n")
        out = _cli("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_doctor_lists_what_the_models_directory_holds_and_does_not_serve(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """A `.gguf` that lost its id to a folder, a `.gguf` in a folder of its own and a link to
    nothing: doctor said 'No problems found' (found from outside)."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    (models / f"{SMOL}.gguf").rename(models / "dup.gguf")
    (models / "dup").mkdir()
    (models / "dup" / f"{SMOL}.gguf").symlink_to(smollm2_gguf)
    (models / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    out = _cli("doctor", "--models-dir", str(models))
    said = " ".join(out.stdout.split())
    assert out.returncode == 1, out.stdout
    assert "dup/ holds models one level down" in said
    assert "dangling: " in said and "which does not exist" in said
    ls = _cli("ls", "--models-dir", str(models))
    assert "dangling" in ls.stdout and "which does not exist" in ls.stdout  # its note
    assert "dup/ holds models one level down" in " ".join(ls.stderr.split())  # the log's line


def test_ls_show_and_doctor_say_when_the_models_directory_is_missing(tmp_path: Path) -> None:
    """They showed an empty table, 'models: none' and 'No problems found' for a typo."""
    gone = tmp_path / "modles"
    said = f"the models directory {gone} does not exist: `llm-router serve` makes it"
    ls = _cli("ls", "--models-dir", str(gone))
    assert ls.returncode == 0 and said in ls.stderr
    show = _cli("show", "m", "--models-dir", str(gone))
    assert show.returncode == 1 and said in show.stderr
    doctor = _cli("doctor", "--models-dir", str(gone))
    assert said in doctor.stdout
    (tmp_path / "empty").mkdir()
    assert (
        f"no models in {tmp_path / 'empty'}"
        in _cli("ls", "--models-dir", str(tmp_path / "empty")).stderr
    )
    assert not gone.exists()


def test_a_data_dir_that_cannot_be_made_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """`keys`, `usage` and `serve` with a data directory under a file (or unwritable): they
    printed tracebacks (NotADirectoryError), `serve` three of them and exit 3."""
    (tmp_path / "afile").write_text("")
    cfg = tmp_path / "dd.yaml"
    cfg.write_text(
        f"port: 8080\nmodels_dir: {tmp_path}\nprovision_default_models: false\n"
        f"spare_workers: false\ndata_dir: {tmp_path / 'afile' / 'sub'}\n"
    )
    for args, code in ((["keys", "ls"], 1), (["usage"], 1), (["serve"], 2)):
        out = _cli(*args, "--config", str(cfg))
        assert out.returncode == code, (args, out.stderr)
        assert "as the data directory (data_dir): Not a directory" in " ".join(out.stderr.split())
        assert "Traceback" not in out.stderr and "│" not in out.stderr


def test_models_dir_untouched_when_it_has_models(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = link_models(tmp_path / "m", smollm2_gguf)
    out = _cli("run", SMOL, "Hi", "--models-dir", str(models), "--max-tokens", "2")
    assert out.returncode == 0, out.stderr
    assert [p.name for p in models.iterdir()] == [smollm2_gguf.name]


def test_ls_shows_every_format_and_errors(tmp_path: Path, smollm2_hf: Path) -> None:  # noqa: F811
    models = tmp_path / "models"
    models.mkdir()
    (models / "smol-hf").symlink_to(smollm2_hf)
    (models / "minilm").symlink_to(minilm_folder())
    (models / "broken.safetensors").write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00[1]")
    out = _cli("ls", "--models-dir", str(models))
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if "│" in line}
    assert all(t in rows["smol-hf"] for t in ("hf", "transformers", "generate", "135M", "F32"))
    assert all(t in rows["minilm"] for t in ("hf", "transformers", "embed", "bert", "256"))
    assert "corrupt safetensors header" in out.stdout


def test_quantize_then_serve(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    out_file = models / "smol-q8.gguf"
    out = _cli("quantize", str(smollm2_gguf), str(out_file), "--type", "Q8_0")
    assert out.returncode == 0, out.stderr
    assert "Q8_0" in out.stdout and out.stdout.count("MiB") == 2  # sizes before and after
    assert "quantizing" in out.stderr  # progress goes to stderr
    assert len(out.stderr.splitlines()) < 10, out.stderr  # not llama.cpp's line a tensor
    info = read_gguf_info(out_file)
    assert info.quantization == "Q8_0"
    assert out_file.stat().st_size > smollm2_gguf.stat().st_size  # Q8_0 is bigger than Q4_1
    again = _cli("quantize", str(smollm2_gguf), str(out_file), "--type", "Q8_0")
    assert again.returncode == 1 and "--force" in again.stderr
    srv = new_server(tmp_path, models_dir=str(models))
    try:
        with openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0) as client:
            chat = client.chat.completions.create(
                model="smol-q8",
                temperature=0,
                max_tokens=30,
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
            )
        assert "Paris" in (chat.choices[0].message.content or "")
        assert srv.models()["smol-q8"]["quantization"] == "Q8_0"
    finally:
        srv.stop()
    # in place: the size before is the source's as it was (it read the replaced file's)
    before = out_file.stat().st_size
    inplace = _cli("quantize", str(out_file), str(out_file), "--type", "Q4_0", "--force")
    assert inplace.returncode == 0, inplace.stderr
    assert f"({before / 2**20:.1f} MiB) ->" in inplace.stdout
    assert out_file.stat().st_size < before


def test_convert_refuses_to_overwrite_without_force(tmp_path: Path, smollm2_gguf: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "mine.txt").write_text("keep me")
    out = _cli("convert", str(smollm2_gguf), "--to", "hf", str(out_dir))
    assert out.returncode == 1 and "exists" in out.stderr and "--force" in out.stderr
    assert [p.name for p in out_dir.iterdir()] == ["mine.txt"]
    wrong = _cli("convert", str(smollm2_gguf), "--to", "tflite", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "hf, onnx or gguf" in wrong.stderr


def test_convert_says_what_is_wrong_with_its_input(tmp_path: Path, smollm2_gguf: Path) -> None:
    """A missing path was "not a model this tool knows"; a truncated GGUF got transformers'
    raw reshape error (found from outside). They get what the server's reader says."""
    gone = _cli("convert", str(tmp_path / "nonexistent.gguf"), "--to", "hf", str(tmp_path / "a"))
    assert gone.returncode == 1 and "no such file or folder" in " ".join(gone.stderr.split())
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as whole:
        cut.write_bytes(whole.read(30_000_000))
    out = _cli("convert", str(cut), "--to", "hf", str(tmp_path / "b"))
    said = " ".join(out.stderr.split())
    assert out.returncode == 1 and "truncated: tensor data needs" in said, out.stderr
    assert "missing" in said and not (tmp_path / "b").exists()


def test_convert_with_force_replaces_the_output(tmp_path: Path) -> None:
    out_dir = tmp_path / "minilm-onnx"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("replaced")
    out = _cli("convert", str(minilm_folder()), "--to", "onnx", str(out_dir), "--force")
    assert out.returncode == 0, out.stderr
    assert "exporting" in out.stderr and "MiB" in out.stdout
    names = {p.name for p in out_dir.iterdir()}
    assert "model.onnx" in names and "tokenizer.json" in names and "old.txt" not in names


def test_convert_hf_to_gguf_then_ls(tmp_path: Path, smollm2_hf: Path) -> None:  # noqa: F811
    models = tmp_path / "models"
    models.mkdir()
    out_file = models / "smol-bf16.gguf"
    out = _cli("convert", str(smollm2_hf), "--to", "gguf", str(out_file), "--outtype", "bf16")
    assert out.returncode == 0, out.stderr
    assert "tensors in bf16" in out.stderr and "tensor 272/272" in out.stderr  # progress
    assert f"-> {out_file}" in out.stdout and "MiB, gguf)" in out.stdout
    assert read_gguf_info(out_file).quantization == "BF16"
    again = _cli("convert", str(smollm2_hf), "--to", "gguf", str(out_file))
    assert again.returncode == 1 and "--force" in again.stderr
    listed = _cli("ls", "--models-dir", str(models))
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "smol-bf16" in line)
    assert all(t in row for t in ("gguf", "llama.cpp", "generate", "135M", "BF16", "8192"))
