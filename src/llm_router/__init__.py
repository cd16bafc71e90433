"""llm-runner-router: run and route LLMs of any format behind one OpenAI-compatible endpoint."""

from __future__ import annotations

from .config import ModelConfig, Settings, load_config
from .errors import RouterError

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Router", "RouterError", "Settings", "__version__", "load_config"]


def __getattr__(name: str) -> object:
    # `Router` is imported on first use: `import llm_router` stays light for the CLI and workers.
    if name == "Router":
        from .api import Router

        return Router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
