"""What `import llm_router` promises: exactly its `__all__`, each name importable, and the
version pyproject.toml declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import llm_router

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_exports_exactly_its_all() -> None:
    assert llm_router.__all__ == [
        "ModelConfig",
        "Router",
        "RouterError",
        "Settings",
        "__version__",
        "load_config",
    ]
    for name in llm_router.__all__:
        assert getattr(llm_router, name) is not None


def test_the_lazy_names_are_the_real_ones() -> None:
    from llm_router.api import Router
    from llm_router.config import ModelConfig, Settings
    from llm_router.config_load import load_config

    assert (llm_router.Router, llm_router.Settings) == (Router, Settings)
    assert (llm_router.ModelConfig, llm_router.load_config) == (ModelConfig, load_config)


def test_dir_lists_the_lazy_names() -> None:
    """A notebook's completion (dir) did not offer `Router` before its first use."""
    assert {"Router", "Settings", "load_config"} <= set(dir(llm_router))


def test_the_version_is_pyprojects() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert llm_router.__version__ == declared
