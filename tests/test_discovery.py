"""The scanner: files and folders of every format, ids, identity from the files inside a folder,
broken models listed with their reason, and the cache that makes a rescan cheap."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from llm_router.config import ModelConfig, Settings
from llm_router.defaults import Preset
from llm_router.lifecycle.discovery import Scanner, identity_of

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "max_position_embeddings": 4096,
    "hidden_size": 8,
}


def _safetensors(path: Path, shape: tuple[int, int] = (8, 8)) -> Path:
    n = shape[0] * shape[1] * 4
    header = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, n]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(n))
    return path


def _hf(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA))
    (folder / "tokenizer.json").write_text("{}")
    _safetensors(folder / "model.safetensors")
    return folder


def _scan(folder: Path, models: list[ModelConfig] | None = None) -> Scanner:
    return Scanner(Settings(models_dir=folder, models=models or []), presets=())


def test_files_and_folders_of_every_format(tmp_path: Path, smollm2_gguf: Path) -> None:
    (tmp_path / "smol.gguf").symlink_to(smollm2_gguf)
    _hf(tmp_path / "tiny.hf-folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a model")
    (tmp_path / "readme.md").write_text("# hi")
    _hf(tmp_path / ".hidden")
    found = _scan(tmp_path).scan()
    assert sorted(found) == ["smol", "tiny.hf-folder"]  # a folder keeps its whole name
    smol, hf = found["smol"], found["tiny.hf-folder"]
    assert (smol.format, smol.engine, smol.task) == ("gguf", "llama.cpp", "generate")
    assert (hf.format, hf.engine, hf.task) == ("hf", "transformers", "generate")
    assert hf.info is not None and hf.info.parameters == 64 and hf.info.context_length == 4096
    assert hf.identity.size_bytes == sum(p.stat().st_size for p in hf.path.iterdir())


def test_broken_models_are_listed_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "text.onnx").write_text("hello\n")
    (tmp_path / "cut.safetensors").write_bytes(_safetensors(tmp_path / "x").read_bytes()[:-9])
    (tmp_path / "x").unlink()
    found = _scan(tmp_path).scan()
    assert {k: (v.format, v.engine) for k, v in found.items()} == {
        "no-weights": ("hf", "transformers"),
        "text": ("onnx", "onnxruntime"),
        "cut": ("safetensors", "transformers"),
    }
    assert "config.json but no weights" in (found["no-weights"].error or "")
    assert "not an ONNX model" in (found["text"].error or "")
    assert "truncated" in (found["cut"].error or "")
    assert all(s.info is None and s.task is None for s in found.values())


def test_a_file_rewritten_inside_a_folder_changes_its_identity(tmp_path: Path) -> None:
    folder = _hf(tmp_path / "m")
    scanner = _scan(tmp_path)
    before = scanner.scan()["m"]
    assert before.error is None
    weights = folder / "model.safetensors"
    folder_times = folder.stat().st_atime_ns, folder.stat().st_mtime_ns
    # Same size, same folder mtime: only the file's own mtime tells the change.
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    os.utime(folder, ns=folder_times)
    after = scanner.scan()["m"]
    assert after.identity != before.identity
    assert after.identity.size_bytes == before.identity.size_bytes
    assert after.error is not None and "corrupt safetensors header" in after.error


def test_identity_is_stable_and_gone_is_none(tmp_path: Path) -> None:
    folder = _hf(tmp_path / "m")
    assert identity_of(folder) == identity_of(folder)
    assert identity_of(tmp_path / "missing") is None
    single = identity_of(folder / "config.json")
    assert single is not None and single.size_bytes == (folder / "config.json").stat().st_size


def test_unchanged_models_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hf(tmp_path / "m")
    (tmp_path / "other").mkdir()
    scanner = _scan(tmp_path)
    scanner.scan()
    reads: list[Path] = []
    monkeypatch.setattr("llm_router.lifecycle.discovery.describe", lambda p: reads.append(p))
    scanner.scan()
    assert reads == []  # the model from the cache, the non-model folder from the ignore list
    (tmp_path / "other" / "config.json").write_text(json.dumps(LLAMA))
    scanner.scan()
    assert reads == [tmp_path / "other"]  # changed: read again


def test_scanners_of_one_process_share_what_they_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start scans three times (provisioning, the early spares, the registry): a model's
    files are read once for all of them, and again by each when they change."""
    import llm_router.lifecycle.discovery as discovery

    _hf(tmp_path / "m")
    reads: list[Path] = []
    real = discovery.describe
    monkeypatch.setattr(discovery, "describe", lambda p: reads.append(p) or real(p))
    first, second = _scan(tmp_path).scan(), _scan(tmp_path).scan()
    assert reads == [tmp_path / "m"] and first["m"] == second["m"]
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({**LLAMA, "max_position_embeddings": 8192})
    )
    assert _scan(tmp_path).scan()["m"].info != first["m"].info
    assert reads == [tmp_path / "m"] * 2


def test_configured_folder_with_options_and_explicit_engine(tmp_path: Path) -> None:
    folder = _hf(tmp_path / "elsewhere" / "weights")
    models = [
        ModelConfig(id="mine", path=folder, allow_pickle=True, dtype="bfloat16"),
        ModelConfig(id="script", path=tmp_path / "fake.json", engine="fake"),
    ]
    (tmp_path / "fake.json").write_text("{}")
    found = _scan(tmp_path / "empty", models=models).scan()
    assert found["mine"].origin == "config" and found["mine"].format == "hf"
    assert found["mine"].config.engine_options().model_dump(exclude_none=True) == {
        "allow_pickle": True,
        "dtype": "bfloat16",
    }
    assert (found["script"].format, found["script"].engine) == ("unknown", "fake")
    assert found["script"].error is None


def test_an_entry_for_a_bundled_model_adds_to_its_preset(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """As a Modelfile FROM a library model: an entry that only adds aliases keeps the bundled
    model's system prompt (the README's alias example dropped it, and SmolLM2 rambled); a
    field the entry sets, even to null, wins."""
    (tmp_path / "smol.gguf").symlink_to(smollm2_gguf)
    presets = [Preset("smol.gguf", 0, "", {"system_prompt": "Be brief."})]

    def scanned(entry: dict[str, object]) -> ModelConfig:
        settings = Settings(models_dir=tmp_path, models=[ModelConfig(id="smol", **entry)])
        return Scanner(settings, presets=presets).scan()["smol"].config

    aliased = scanned({"aliases": ["gpt-4o-mini"]})
    assert aliased.system_prompt == "Be brief." and aliased.aliases == ["gpt-4o-mini"]
    assert scanned({"system_prompt": "Answer in French."}).system_prompt == "Answer in French."
    assert scanned({"system_prompt": None}).system_prompt is None


def test_of_files_sharing_an_id_one_that_can_be_served_wins_and_it_is_said_once(
    tmp_path: Path, smollm2_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`dup.bin` (broken) hid `dup.gguf` (good): the first name in order won whatever it
    was, and the warning came again at every scan (every 2 s)."""
    (tmp_path / "dup.bin").write_bytes(os.urandom(4096))
    (tmp_path / "dup.gguf").symlink_to(smollm2_gguf)
    caplog.set_level("WARNING", logger="llm_router")
    scanner = _scan(tmp_path)
    for _ in range(3):
        found = scanner.scan()
        assert found["dup"].path.name == "dup.gguf" and found["dup"].error is None
    shared = [r.getMessage() for r in caplog.records if "share the id" in r.getMessage()]
    assert len(shared) == 1 and "serving " + str(tmp_path / "dup.gguf") in shared[0]


def test_an_unusable_model_is_logged_once_by_the_scan_that_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The look before the server's own scan (provisioning, early spare workers) is quiet:
    at start the same warning came three times. The serving scan warns once, and not again
    while the file stays as it is."""
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text(json.dumps(LLAMA))
    settings = Settings(models_dir=tmp_path, provision_default_models=False)
    caplog.set_level("WARNING", logger="llm_router")
    assert Scanner(settings, quiet=True).scan()["no-weights"].error
    assert not caplog.records
    scanner = Scanner(settings)
    scanner.scan()
    scanner.scan()
    assert [r.getMessage() for r in caplog.records] == [
        f"model {tmp_path / 'no-weights'} is unusable: config.json but no weights "
        "(*.safetensors or pytorch_model.bin)"
    ]


def test_a_model_gone_says_whether_its_file_or_its_entry_went(tmp_path: Path) -> None:
    """A reload that drops a `models:` entry unloaded its model "model file removed" (the
    file was there all along; found from outside): each reason says what went."""
    import shutil

    from llm_router.lifecycle.registry import Registry
    from llm_router.lifecycle.state import EventBus

    _hf(tmp_path / "in-dir")
    entry = ModelConfig(id="entry", path=_hf(tmp_path / "elsewhere" / "m"))
    registry = Registry(_scan(tmp_path, [entry]), EventBus())
    assert registry.refresh() == [] and {s.id for s in registry} == {"in-dir", "entry"}
    shutil.rmtree(tmp_path / "in-dir")
    registry.scanner = _scan(tmp_path)  # the reloaded configuration, without the entry
    reasons = {state.id: why for state, why in registry.refresh()}
    assert reasons == {"in-dir": "model file removed", "entry": "removed from the configuration"}


def test_an_alias_that_is_another_models_id_hides_nothing_and_is_said(tmp_path: Path) -> None:
    """Found from outside: an alias equal to the id of a model found in the models directory
    took that id's requests (an embedding model's name was answered by a chat model), and
    the reload said nothing. The model keeps its name; the alias is said, with an entry
    naming no model (a typo, dropped without a word)."""
    from llm_router.lifecycle.registry import Registry
    from llm_router.lifecycle.state import EventBus

    _hf(tmp_path / "chat")
    _hf(tmp_path / "embed")
    entries = [ModelConfig(id="chat", aliases=["embed", "c"]), ModelConfig(id="cht")]
    registry = Registry(_scan(tmp_path, entries), EventBus())
    registry.refresh()
    assert registry.get("embed") is registry["embed"] and registry.get("c") is registry["chat"]
    assert registry.warnings() == [
        "model chat: alias 'embed' is the id of another model, which keeps that name; "
        "rename the alias",
        "models: entry 'cht' names no model in the models directory (a typo?); its settings "
        "apply once a model of that id appears",
    ]
    slow = Settings(models_dir=tmp_path, drain_after=30, queue_timeout=8)
    registry.scanner = Scanner(slow, presets=())
    assert registry.warnings()[-1].startswith("drain_after (30 s) is not under queue_timeout")


def _ollama_store(
    folder: Path, gguf: Path, name: str = "library/smollm2", tag: str = "latest"
) -> Path:
    """An Ollama store as `ollama pull` leaves it: the weights as a blob, a manifest naming it."""
    digest = "sha256:" + "ab" * 32
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "blobs" / digest.replace(":", "-")).symlink_to(gguf)
    config = {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": "sha256:" + "cd" * 32,
    }
    manifest = folder / "manifests" / "registry.ollama.ai" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": config,
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.model", "digest": digest},
                    {
                        "mediaType": "application/vnd.ollama.image.template",
                        "digest": "sha256:" + "ef" * 32,
                    },
                ],
            }
        )
    )
    return folder


def test_ollamas_store_is_served_as_it_is(tmp_path: Path, smollm2_gguf: Path) -> None:
    """OLLAMA_MODELS pointed at Ollama's store found no model (its weights are blobs named by
    their hash), and serve then provisioned ~430 MB of bundled models into it (found from
    outside). Each manifest is now a model, named as `ollama list` names it, its blob read in
    place; nothing is provisioned into the store."""
    from llm_router.lifecycle.discovery import ensure_models

    store = _ollama_store(tmp_path / "ollama", smollm2_gguf)
    found = Scanner(Settings(models_dir=store, models=[])).scan()
    assert list(found) == ["smollm2:latest"]
    model = found["smollm2:latest"]
    assert (model.format, model.engine, model.origin, model.error) == (
        "gguf",
        "llama.cpp",
        "ollama",
        None,
    )
    assert model.config.aliases == ["smollm2"]  # as `ollama run smollm2` names it
    empty = tmp_path / "empty-store"
    (empty / "blobs").mkdir(parents=True)
    (empty / "manifests").mkdir()
    ensure_models(Settings(models_dir=empty, models=[]))
    assert sorted(p.name for p in empty.iterdir()) == ["blobs", "manifests"]


def test_a_bundled_model_served_by_its_path_keeps_its_preset(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """`serve -m SmolLM2-...gguf` (a `models:` entry with a path, the same id) lost the
    bundled model's system prompt, and the README's question got a rambling answer (found
    from outside)."""
    presets = [Preset(smollm2_gguf.name, 0, "", {"system_prompt": "Be brief."})]
    entry = ModelConfig(id="smol", path=smollm2_gguf)
    settings = Settings(models_dir=tmp_path / "empty", models=[entry])
    found = Scanner(settings, presets=presets).scan()["smol"]
    assert found.config.system_prompt == "Be brief." and found.path == smollm2_gguf


def test_the_bundled_file_keeps_its_preset_under_any_id(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The preset belongs to the bundled SmolLM2 file, not to the id its name gives:
    `serve -m SmolLM2...gguf -a gpt-4o-mini,gpt-4o` (a `models:` entry of another id with
    its path), and the file linked or copied under another name, lost the system prompt,
    and the README's question got "L'Étoile, la Marseillaise, ..." for 2012 tokens (found
    from outside). Renamed, it is known by its size and GGUF name (`defaults.PRESETS`)."""
    prompt = "You are a helpful assistant."
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my-model.gguf").symlink_to(smollm2_gguf)
    _hf(folder / "tiny.hf-folder")
    entries = [
        ModelConfig(id="gpt-4o-mini", aliases=["gpt-4o"], path=smollm2_gguf),
        ModelConfig(id="plain", path=smollm2_gguf, system_prompt=None),
    ]
    found = Scanner(Settings(models_dir=folder, models=entries)).scan()
    assert found["gpt-4o-mini"].config.system_prompt == prompt
    assert found["gpt-4o-mini"].config.aliases == ["gpt-4o"]
    assert found["my-model"].config.system_prompt == prompt
    assert found["plain"].config.system_prompt is None  # the user's own null wins
    assert found["tiny.hf-folder"].config.system_prompt is None  # another model: none


def test_a_checkpoint_only_pickle_loads_is_an_error_unless_allowed(tmp_path: Path) -> None:
    """The scan read `posix.system` in a checkpoint and still listed the model `unloaded`,
    with its parameters, until a request failed; doctor saw no problem."""
    import argparse

    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    (folder / "tokenizer.json").write_text("{}")
    state = {"w": torch.zeros(2, 2), "args": argparse.Namespace(lr=0.1)}
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    _hf(tmp_path / "plain")
    error = _scan(tmp_path).scan()["pickled"].error or ""
    for words in ("needs pickle", "argparse.Namespace", "allow_pickle: true"):
        assert words in error
    assert _scan(tmp_path).scan()["plain"].error is None
    allowed = _scan(tmp_path, [ModelConfig(id="pickled", allow_pickle=True)]).scan()
    assert allowed["pickled"].error is None and allowed["pickled"].info is not None
    defaults = Settings(models_dir=tmp_path, model_defaults={"allow_pickle": True})
    assert Scanner(defaults, presets=()).scan()["pickled"].error is None


def test_broken_links_are_errors_and_what_is_not_served_is_said(
    tmp_path: Path, smollm2_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ignored without a word (found from outside): a link named like a model whose target
    is gone, a loop of links, a `.gguf` in a folder of its own, an `org/repo` layout, and the
    entry that lost an id to another (only the log said it)."""
    (tmp_path / "dangling.gguf").symlink_to(tmp_path / "nope.gguf")
    (tmp_path / "loop-a.gguf").symlink_to("loop-b.gguf")
    (tmp_path / "loop-b.gguf").symlink_to("loop-a.gguf")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not named like a model
    (tmp_path / "ggufdir").mkdir()
    (tmp_path / "ggufdir" / "inner.gguf").symlink_to(smollm2_gguf)
    _hf(tmp_path / "TheOrg" / "repo")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("# hi")
    (tmp_path / "dup.gguf").symlink_to(smollm2_gguf)
    _hf(tmp_path / "dup")
    caplog.set_level("WARNING", logger="llm_router")
    scanner = _scan(tmp_path)
    for _ in range(2):
        found = scanner.scan()
    assert sorted(found) == ["dangling", "dup", "loop-a", "loop-b"]
    assert "symbolic link to " + str(tmp_path / "nope.gguf") in (found["dangling"].error or "")
    assert found["dangling"].format == "gguf"
    assert "loop of symbolic links" in (found["loop-a"].error or "")
    problems = scanner.problems()
    assert len(problems) == 3, problems
    assert "dup.gguf is not served: it shares the id 'dup' with dup" in problems[0]
    assert any("ggufdir/ holds models one level down (inner.gguf)" in p for p in problems)
    assert any("TheOrg/ holds models one level down (repo)" in p for p in problems)
    said = [r.getMessage() for r in caplog.records]
    assert sum("one level down" in m for m in said) == 2 and sum("loop" in m for m in said) == 2
    (tmp_path / "ggufdir" / "inner.gguf").rename(tmp_path / "inner.gguf")
    scanner.scan()
    assert not any("ggufdir" in p for p in scanner.problems())
