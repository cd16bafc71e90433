"""Helpers of the gateway tests: an in-process app with the gateway on, and keys of every kind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from inproc import app_client, fake_models
from llm_router.gateway.keys import KeySpec, make_key
from llm_router.gateway.service import Gateway
from servers import Server

MASTER = "sk-master-for-tests"
CHAT_BODY = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}


@dataclass
class Gw:
    client: httpx.AsyncClient
    app: FastAPI

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    async def key(self, name: str, **spec: Any) -> str:
        """A new key made over HTTP with the master key; its secret."""
        r = await self.client.post(
            "/admin/keys", json={"name": name, **spec}, headers=bearer(MASTER)
        )
        assert r.status_code == 201, r.text
        secret: str = r.json()["key"]
        return secret

    async def expired_key(self, name: str) -> str:
        """A key whose expiry has passed (written to the store as if made long ago)."""
        secret, key = make_key(KeySpec(name=name, scopes=["inference", "read", "admin"]))
        store = self.gateway.store
        assert store is not None
        await store.add_key(replace(key, created_at=time.time() - 100, expires_at=time.time() - 1))
        await self.gateway.refresh()
        return secret


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def gateway_app(tmp_path: Path, **settings: Any) -> Any:
    """The app on fake models `chat` and `other`, state in tmp_path/data."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def make() -> AsyncIterator[Gw]:
        apps: list[FastAPI] = []
        options: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "models": fake_models(tmp_path, chat={}, other={}),
            **settings,
        }
        async with app_client(tmp_path, setup=apps.append, **options) as client:
            yield Gw(client, apps[0])

    return make()


async def window_total(limiter: Any, tpm: int, name: str) -> int:
    """Tokens counted in a key's window of its tokens per minute (this one and the previous,
    unweighted: exact whenever the test started less than a minute ago)."""
    await limiter.send_charges()
    key = limiter.windows.item("tokens", tpm).key_for(name)
    previous, _, current, _ = await limiter.windows.storage.get_sliding_window(key, 60)
    return int(previous + current)


@contextmanager
def two_routers(tmp_path: Path, config: dict[str, Any]) -> Iterator[tuple[Server, Server, Path]]:
    """Two router processes on one config (one database, one Redis), and the config's path;
    the first starts alone, so it is the one that migrates a fresh database."""
    first = Server(tmp_path, config).start()
    second = Server(tmp_path, config)
    try:
        second.start()
        yield first, second, first.config_path
    finally:
        second.stop()
        first.stop()
