"""Opening a GGUF with llama.cpp's low-level API, for the generative and the embedding engine
alike: the model, a context on it, and tokenization. Everything here blocks for its whole
duration (loading, for one, reads the whole file)."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import resource
from typing import Any

import llama_cpp as lc

from ..errors import ModelLoadFailed
from .base import LoadSpec

__all__ = [
    "LOAD_MODES",
    "context_params",
    "last_error",
    "load_model",
    "model_params",
    "new_context",
    "quiet_log",
    "token_piece",
    "tokenize",
]

log = logging.getLogger(__name__)
# The config's `load_mode` names (llama-server's --load-mode), to llama.cpp's values: its own
# llama_load_mode_from_str aborts the process on a name it does not know.
LOAD_MODES = {
    "auto": lc.LLAMA_LOAD_MODE_AUTO,
    "none": lc.LLAMA_LOAD_MODE_NONE,
    "mmap": lc.LLAMA_LOAD_MODE_MMAP,
    "mlock": lc.LLAMA_LOAD_MODE_MLOCK,
    "mmap+mlock": lc.LLAMA_LOAD_MODE_MMAP_MLOCK,
    "dio": lc.LLAMA_LOAD_MODE_DIRECT_IO,
}


def model_params(repack: bool | None) -> Any:
    """llama.cpp model parameters. `repack`: whether weights go to the extra (repacked) buffer
    types; by default not where those would include the AMX buffer, whose matmul segfaults on
    Sapphire Rapids class CPUs (llama.cpp#20824, seen here on Q4_K_M and Q4_1 files)."""
    params = lc.llama_model_default_params()
    if repack is None:
        repack = b"AMX_INT8 = 1" not in lc.llama_print_system_info()
    params.use_extra_bufts = repack
    return params


# llama.cpp says why a load failed in its log only ("llama_model_load: error loading model:
# tensor 'token_embd.weight' has wrong shape; ..."): its last error lines are kept for the
# answer (it said only "could not load", found from outside).
_ERROR, _CONTINUED = 4, 5  # ggml_log_level's GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT
_errors: collections.deque[str] = collections.deque(maxlen=4)
_last_level = 0


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if os.environ.get("LLM_ROUTER_ENGINE_LOG") and text:
        os.write(2, text)
    if level == _CONTINUED and _last_level == _ERROR and _errors:
        _errors[-1] += text.decode("utf-8", "replace")
        return
    _last_level = level
    if level == _ERROR and text:
        _errors.append(text.decode("utf-8", "replace"))


def _load_error() -> str:
    """What llama.cpp's log said of the load that just failed: the error's own words, without
    the function names it prefixes them with; "" when it said nothing."""
    said = [line.strip() for line in _errors if line.strip()]
    _errors.clear()
    why = next((line for line in said if "error loading model" in line), said[0] if said else "")
    return " ".join(why.split("error loading model:", 1)[-1].split())


def quiet_log() -> None:
    """From now on llama.cpp's log is kept for its errors only (`_load_error`), unless
    LLM_ROUTER_ENGINE_LOG is set: `load_model` and the quantizer (tools/quantize.py, whose
    ~300 lines of tensors buried its one-line summary) call it."""
    lc.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    _errors.clear()


def last_error() -> str:
    """What llama.cpp's log said as an error since `quiet_log` (or the last call), "" if
    nothing."""
    return _load_error()


def load_model(spec: LoadSpec) -> Any:
    """The llama.cpp model of `spec.path` (options `repack`: see model_params; `load_mode`:
    llama.cpp's, by its name), with llama.cpp's log silenced unless LLM_ROUTER_ENGINE_LOG is
    set. Raises ModelLoadFailed."""
    quiet_log()
    lc.llama_backend_init()
    params = model_params(spec.options.get("repack"))
    mode = spec.options.get("load_mode")
    if mode is not None:
        params.load_mode = LOAD_MODES[mode]
        if "mlock" in mode:
            _warn_unlockable(spec.path)
    _errors.clear()
    model = lc.llama_model_load_from_file(spec.path.encode(), params)
    if not model:
        why = _load_error()
        raise ModelLoadFailed(f"llama.cpp could not load {spec.path}" + (f": {why}" if why else ""))
    return model


def _warn_unlockable(path: str) -> None:
    """A warning when this process may not lock `path`'s size of memory (llama.cpp then loads
    the model anyway, its weights pageable, and says so only in its own silenced log)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    size = os.path.getsize(path)
    if soft != resource.RLIM_INFINITY and soft < size and os.geteuid() != 0:
        log.warning(
            "mlock: %s is %d MiB but this process may lock only %d MiB (ulimit -l); its "
            "weights stay pageable",
            os.path.basename(path),
            size >> 20,
            soft >> 20,
        )


def context_params(threads: int) -> Any:
    """llama.cpp's default context parameters, on `threads` threads, without its timings."""
    cparams = lc.llama_context_default_params()
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.no_perf = True
    return cparams


def new_context(model: Any, cparams: Any, path: str) -> Any:
    """A context on `model`; when llama.cpp cannot make one, `model` is freed and
    ModelLoadFailed raised (naming `path`)."""
    ctx = lc.llama_init_from_model(model, cparams)
    if not ctx:
        lc.llama_model_free(model)
        raise ModelLoadFailed(f"llama.cpp could not create a context for {path}")
    return ctx


def tokenize(vocab: Any, text: str, *, add_bos: bool, special: bool) -> list[int]:
    """Tokens of `text` in llama.cpp vocabulary `vocab`; with `special`, special tokens
    written in it are parsed."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    buf = (lc.llama_token * cap)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, special)
    if n < 0:  # the buffer was too small: -n is the count
        cap = -n
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, special)
    return list(buf[:n])


def token_piece(vocab: Any, token: int, *, special: bool) -> bytes:
    """The bytes of `token` (an id in `vocab`); with `special`, special tokens written out."""
    buf = ctypes.create_string_buffer(64)
    n = lc.llama_token_to_piece(vocab, token, buf, 64, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = lc.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


def lltokenizer(vocab: Any, eog: list[int]) -> Any:
    """llguidance's tokenizer for a llama.cpp vocabulary (~0.3 s for 49k tokens, ~1.9 s for
    262k): every end-of-generation token in `eog` may end a constrained answer. llguidance
    calls a llama.cpp function that warns it is deprecated; the warning is not ours to fix."""
    import warnings

    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, eos_token=eog)
