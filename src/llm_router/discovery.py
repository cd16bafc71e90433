"""Finding models: files in the models directory plus `models:` entries of the config.

Detection is by content (GGUF magic), metadata is read without loading weights, and results
are cached by (size, mtime) so a rescan costs one `stat` per file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, Settings
from .defaults import PRESETS
from .errors import InvalidModelFile
from .formats.gguf import GGUFInfo, is_gguf, read_gguf_info

__all__ = ["ModelSource", "Scanner"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model as found on disk. `error` is set when the file cannot be served as it is;
    `identity` changes whenever the file does."""

    id: str
    path: Path
    format: str
    engine: str
    config: ModelConfig
    identity: tuple[int, int]
    origin: str  # "models_dir" | "config"
    info: GGUFInfo | None = None
    error: str | None = None


class Scanner:
    """Scans the models directory and the configured entries. Not thread-safe; call from the
    event loop (a scan is a listdir and a stat per file; new or changed files are read)."""

    def __init__(self, settings: Settings, presets: dict[str, ModelConfig] | None = None) -> None:
        self._settings = settings
        self._presets = PRESETS if presets is None else presets
        self._cache: dict[Path, tuple[tuple[int, int], GGUFInfo | None, str | None]] = {}
        self._ignored: dict[Path, tuple[int, int]] = {}

    def scan(self) -> dict[str, ModelSource]:
        configured = {m.id: m for m in self._settings.models}
        found: dict[str, ModelSource] = {}
        for path in self._files():
            model_id = path.stem
            cfg = (
                configured.get(model_id) or self._presets.get(model_id) or ModelConfig(id=model_id)
            )
            source = self._source(model_id, path, cfg, "models_dir")
            if source is not None:
                found[model_id] = source
        for cfg in self._settings.models:
            if cfg.path is None:
                continue
            path = cfg.path if cfg.path.is_absolute() else self._settings.models_dir / cfg.path
            source = self._source(cfg.id, path, cfg, "config")
            if source is None:
                source = ModelSource(
                    cfg.id, path, "unknown", cfg.engine or "llama.cpp", cfg, (0, 0), "config",
                    error=f"{path} does not exist or is not a model file",
                )  # fmt: skip
            found[cfg.id] = source
        live = {s.path for s in found.values()}
        for stale in set(self._cache) - live:
            del self._cache[stale]
        for gone in [p for p in self._ignored if not p.exists()]:
            del self._ignored[gone]
        return found

    def _files(self) -> list[Path]:
        folder = self._settings.models_dir
        try:
            entries = sorted(folder.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if p.is_file() and not p.name.startswith(".")]

    def _source(
        self, model_id: str, path: Path, cfg: ModelConfig, origin: str
    ) -> ModelSource | None:
        try:
            st = path.stat()
        except OSError:
            return None
        identity = (st.st_size, st.st_mtime_ns)
        if cfg.engine is not None and cfg.path is not None and not is_gguf(path):
            # An explicit engine for a configured file: the engine reads it, no detection.
            return ModelSource(model_id, path, "unknown", cfg.engine, cfg, identity, origin)
        if self._ignored.get(path) == identity:
            return None
        cached = self._cache.get(path)
        if cached is None or cached[0] != identity:
            if not is_gguf(path):
                log.debug("ignoring %s: not a model file", path)
                self._ignored[path] = identity
                return None
            try:
                cached = (identity, read_gguf_info(path), None)
            except InvalidModelFile as exc:
                log.warning("model file %s is unusable: %s", path, exc.message)
                cached = (identity, None, exc.message)
            self._cache[path] = cached
        _, info, error = cached
        return ModelSource(
            model_id, path, "gguf", cfg.engine or "llama.cpp", cfg, identity, origin, info, error
        )
