"""llm-runner-router: run and route LLMs of any format behind one OpenAI-compatible endpoint."""

from __future__ import annotations

from .config import ModelConfig, Settings, load_config
from .errors import RouterError

__version__ = "0.1.0"

__all__ = ["ModelConfig", "RouterError", "Settings", "__version__", "load_config"]
