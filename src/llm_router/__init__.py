"""llm-runner-router: run and route LLMs of any format behind one OpenAI-compatible endpoint."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from .errors import RouterError

if TYPE_CHECKING:
    from .api import Router
    from .config import ModelConfig, Settings
    from .config_load import load_config

try:
    __version__ = version("llm-runner-router")  # the one in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["ModelConfig", "Router", "RouterError", "Settings", "__version__", "load_config"]


def __dir__() -> list[str]:
    """The lazy names too: a notebook's completion offers `Router` before its first use."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> object:
    # Imported on first use: `import llm_router` stays light for the CLI and above all for the
    # worker processes, whose start-up every cold load waits for (config pulls in pydantic-
    # settings: ~200 ms here).
    if name == "Router":
        from .api import Router

        return Router
    if name in ("ModelConfig", "Settings"):
        from . import config

        return getattr(config, name)
    if name == "load_config":
        from .config_load import load_config

        return load_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
