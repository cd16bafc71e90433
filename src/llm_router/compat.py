"""What a llama-server or Ollama user already has in their fingers, read as our settings: the
llama-server router's flags (`llm-router serve -c 8192 -np 4 --models-max 2 ...`, mapped in
cli.py) and environment variables (`LLAMA_ARG_*`), and Ollama's (`OLLAMA_*`). They mean what
they mean there. Our own `LLM_ROUTER_*` variables, the config file's explicit values and the
command line take precedence over them (config_load.load_config)."""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "CONTEXT_TOTAL",
    "LLAMA_DEFAULT_PARALLEL",
    "foreign_env",
    "http_url",
    "llama_overrides",
]

LLAMA_DEFAULT_PARALLEL = 4  # llama-server's slots when -np is not given (and ours)
CONTEXT_TOTAL = "_context_total"  # llama-server's -c under model_defaults, until it is divided
_TRUE = {"1", "true", "on", "yes", "enabled"}


def llama_overrides(
    *,
    ctx_size: int | None = None,
    parallel: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    model: str | None = None,
    alias: str | None = None,
    models_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Settings for llama-server's meanings: `-c` is the context of all slots together (each
    of `-np` slots gets its share), `-m` serves that one file (under `--alias` if given), and
    nothing else unless a models directory is named too."""
    defaults: dict[str, Any] = {}
    if parallel is not None:
        defaults["parallel"] = parallel
    if ctx_size is not None and ctx_size > 0:  # 0: the model's own, as in llama-server
        # shared by the slots once every source is read (`-np` may come from another one):
        # config_load.load_config makes it each slot's `context_size`
        defaults[CONTEXT_TOTAL] = ctx_size
    if threads is not None:
        defaults["threads"] = threads
    if batch_size is not None:
        defaults["batch_size"] = batch_size
    out: dict[str, Any] = {"model_defaults": defaults} if defaults else {}
    if model is not None:
        # From the working directory, as llama-server reads it (a relative `path:` in the
        # configuration is the models directory's, which here is an empty one).
        path = Path(model).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"model file {model!r} does not exist (-m, LLAMA_ARG_MODEL)")
        # `-a a,b`: names, comma-separated, as llama-server reads them; the first is the id
        names = [n.strip() for n in (alias or "").split(",") if n.strip()] or [path.stem]
        entry: dict[str, Any] = {"id": names[0], "path": str(path)}
        if names[1:]:
            entry["aliases"] = names[1:]
        out["models"] = [entry]
        out["default_model"] = entry["id"]  # a request naming none gets it, as there
        out["provision_default_models"] = False
        if models_dir is None:  # one model, as llama-server -m: an empty directory beside it
            empty = tempfile.mkdtemp(prefix="llm-router-single-")
            atexit.register(_remove_if_empty, empty)
            out["models_dir"] = empty
    return out


def _remove_if_empty(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def foreign_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from llama-server's `LLAMA_ARG_*` and Ollama's `OLLAMA_*` variables that are
    set. Ollama's first, llama-server's over them."""
    out: dict[str, Any] = {}
    get = environ.get
    if models := get("OLLAMA_MODELS"):
        out["models_dir"] = models
    if keep := get("OLLAMA_KEEP_ALIVE"):
        out["keep_alive"] = keep
    if loaded := get("OLLAMA_MAX_LOADED_MODELS"):
        out["models_max"] = loaded
    if parallel := get("OLLAMA_NUM_PARALLEL"):
        out.setdefault("model_defaults", {})["parallel"] = parallel
    if host := get("OLLAMA_HOST"):
        _host_port(urlsplit(http_url(host)).netloc, out)
    llama = llama_overrides(
        ctx_size=_int(environ, "LLAMA_ARG_CTX_SIZE"),
        parallel=_int(environ, "LLAMA_ARG_N_PARALLEL"),
        threads=_int(environ, "LLAMA_ARG_THREADS"),
        batch_size=_int(environ, "LLAMA_ARG_BATCH"),
        model=get("LLAMA_ARG_MODEL"),
        alias=get("LLAMA_ARG_ALIAS"),
        models_dir=get("LLAMA_ARG_MODELS_DIR") or out.get("models_dir"),
    )
    if llama.get("model_defaults"):
        out.setdefault("model_defaults", {}).update(llama.pop("model_defaults"))
    out.update(llama)
    for name, key in (
        ("LLAMA_ARG_HOST", "host"),
        ("LLAMA_ARG_PORT", "port"),
        ("LLAMA_ARG_MODELS_DIR", "models_dir"),
        ("LLAMA_ARG_MODELS_MAX", "models_max"),
    ):
        if value := get(name):
            out[key] = value
    if (autoload := get("LLAMA_ARG_MODELS_AUTOLOAD")) is not None:
        out["autoload"] = autoload.strip().lower() in _TRUE
    return out


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}: a whole number is expected, not {value!r}") from None


def http_url(value: str) -> str:
    """A server's address as Ollama takes it (`OLLAMA_HOST`, and our `--url`): a URL, or
    `host[:port]` without a scheme, which means http://. Without a trailing slash."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def _host_port(value: str, out: dict[str, Any]) -> None:
    """Ollama's `host[:port]` (`[::1]:port` for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):
        out["host"] = value.strip("[]")
        return
    out["host"] = host.strip("[]") or "127.0.0.1"
    if port:
        out["port"] = port
