"""Fixtures of the gateway tests (helpers: gw_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gw_helpers import MASTER, Gw, gateway_app


@pytest.fixture
def master_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
    return MASTER


@pytest.fixture
async def gw(tmp_path: Path, master_env: str) -> AsyncIterator[Gw]:
    async with gateway_app(tmp_path) as g:
        yield g
