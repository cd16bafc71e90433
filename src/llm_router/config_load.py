"""Loading the settings: defaults < llama-server's and Ollama's variables (compat.py) < the
YAML/JSON file < LLM_ROUTER_* variables < CLI flags, merged here and validated once by
`config.Settings`; every error is one line naming the key (and the variable or the file's
line it came from)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from .compat import CONTEXT_TOTAL, LLAMA_DEFAULT_PARALLEL, foreign_env
from .config import Settings
from .errors import ConfigError

__all__ = ["load_config"]

log = logging.getLogger("llm_router.config")
# LLM_ROUTER_* variables that are not settings: the master key, the CLI's key for a server,
# the engines' log switch, and the test suite's model cache.
_OTHER_VARIABLES = frozenset(
    {
        "LLM_ROUTER_MASTER_KEY",
        "LLM_ROUTER_API_KEY",
        "LLM_ROUTER_ENGINE_LOG",
        "LLM_ROUTER_TEST_CACHE",
    }
)


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < llama-server's and Ollama's variables (compat.py) < file
    < LLM_ROUTER_* variables < `overrides` (the CLI flags).

    Raises ConfigError naming the key when the file is unreadable or a value is invalid."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for source in (
        foreign_env(env),
        _read_file(Path(path)) if path else {},
        _read_env(environ),
        flags,
    ):
        _merge_source(merged, source)
    _divide_context(merged)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, env, flags)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # YAML and JSON files are UTF-8 text
        byte = exc.object[exc.start]
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        ) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line, as a compiler says it: `FILE:LINE:COLUMN: not valid YAML: what (while what,
    from line N)`."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {exc}"
    problem = getattr(exc, "problem", None) or "invalid"
    context, begun = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" ({context}, from line {begun.line + 1})" if context and begun is not None else ""
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}{where}"


def _read_env(environ: dict[str, str] | None) -> dict[str, Any]:
    source = EnvSettingsSource(Settings)
    source.env_vars = parse_env_vars(
        os.environ if environ is None else environ,
        False,
        source.env_ignore_empty,
        source.env_parse_none_str,
    )
    unknown = sorted(
        name
        for name in source.env_vars
        if name.startswith("llm_router_")
        and name.upper() not in _OTHER_VARIABLES
        and name[len("llm_router_") :].split("__")[0] not in Settings.model_fields
    )
    if unknown:  # a typo would otherwise change nothing, silently
        log.warning(
            "ignoring environment variables that name no setting: %s",
            ", ".join(n.upper() for n in unknown),
        )
    try:
        return source()
    except Exception as exc:  # pydantic-settings raises SettingsError on unparsable JSON values
        raise ConfigError(f"invalid LLM_ROUTER_* environment variable: {exc}") from None


def _merge_source(merged: dict[str, Any], source: dict[str, Any]) -> None:
    """`source` over `merged`; a context given one way (each slot's `context_size`, or
    llama-server's `-c` for all slots) replaces one given the other way before it."""
    given = source.get("model_defaults")
    if isinstance(given, dict) and isinstance(merged.get("model_defaults"), dict):
        for one, other in (("context_size", CONTEXT_TOTAL), (CONTEXT_TOTAL, "context_size")):
            if one in given:
                merged["model_defaults"].pop(other, None)
    _deep_merge(merged, source)


def _divide_context(merged: dict[str, Any]) -> None:
    """llama-server's `-c` / LLAMA_ARG_CTX_SIZE is the context of all slots together: each of
    the slots (`-np`, LLAMA_ARG_N_PARALLEL, `parallel:`, from whichever source) gets its share,
    as there."""
    defaults = merged.get("model_defaults")
    if not isinstance(defaults, dict) or CONTEXT_TOTAL not in defaults:
        return
    total = defaults.pop(CONTEXT_TOTAL)
    try:
        slots = int(defaults.get("parallel") or LLAMA_DEFAULT_PARALLEL)
    except (TypeError, ValueError):
        slots = LLAMA_DEFAULT_PARALLEL  # the parallel's own error is reported
    defaults["context_size"] = max(int(total) // max(slots, 1), 16)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _describe(
    exc: ValidationError,
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    flags: dict[str, Any] | None = None,
) -> str:
    where = f" in {path}" if path else ""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        variable = _variable_of(err["loc"], environ or {}, flags or {})
        lines.append(f"{key}{f' (from {variable})' if variable else ''}: {err['msg']}")
    return f"invalid configuration{where}: " + "; ".join(lines)


def _variable_of(loc: tuple[Any, ...], environ: Mapping[str, str], flags: dict[str, Any]) -> str:
    """The LLM_ROUTER_* variable a bad value came from (none when a flag or the file gave it):
    `LLM_ROUTER_MODEL_DEFAULTS__THREADS` for `model_defaults.threads`, or the whole section's."""
    if not loc or loc[0] in flags:
        return ""
    names = {name.upper(): name for name in environ if name.upper().startswith("LLM_ROUTER_")}
    for end in range(len(loc), 0, -1):
        name = "LLM_ROUTER_" + "__".join(str(part) for part in loc[:end]).upper()
        if name in names:
            return names[name]
    return ""
