"""The whole server in the test's own process, on the fake engine: for everything that is about
HTTP (envelopes, status codes, limits, guards, the API document) and takes milliseconds.

`InProcessPool` runs the real `FakeEngine` (engines/fake.py) inside the test process, stepped
by an asyncio task exactly as `python -m llm_router.worker` steps it, so requests get the
engine's real behaviour (stop strings, context checks, usage) without a worker process.
`app_client(...)` builds `create_app` on it and talks to it through `httpx.ASGITransport`."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from llm_router.config import ModelConfig
from llm_router.engines import LoadSpec
from llm_router.engines.base import prompt_token_count
from llm_router.engines.fake import FakeEngine
from llm_router.errors import RouterError, WorkerDied
from llm_router.lifecycle.manager import ModelManager
from llm_router.reload import ConfigSource
from llm_router.server.app import create_app
from llm_router.types import (
    ChatMessage,
    Embeddings,
    Finished,
    GenerationRequest,
    TemplateOptions,
    TextDelta,
)
from llm_router.worker.pool import WorkerPool

__all__ = ["InProcessPool", "InProcessWorker", "app_client", "fake_models"]


class InProcessWorker:
    """What the manager uses of `worker.client.Worker`, around an engine in this process."""

    _pids = itertools.count(20_000_000)

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.pid = next(self._pids)
        self.info: dict[str, Any] = {**engine.info(), "rss": 0}
        self.exited = asyncio.Event()
        self.stopping = False
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self.engine.busy:
                self._wake.clear()
                await self._wake.wait()
            for seq, event in self.engine.step():
                if seq in self._streams:
                    self._streams[seq].put_nowait(event)
            await asyncio.sleep(0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Finished]:
        seq = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[seq] = queue
        try:
            self.engine.submit(seq, request)
            self._wake.set()
            while True:
                event = await queue.get()
                if isinstance(event, RouterError):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            self._streams.pop(seq, None)
            self.engine.cancel(seq)

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        vectors, tokens = self.engine.embed(inputs)
        return Embeddings(vectors, tokens)

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self.engine.token_ids(text, add_special=add_special, parse_special=parse_special)

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        return self.engine.token_pieces(tokens)

    async def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        return self.engine.chat_prompt(messages, options)

    async def prompt_tokens(
        self,
        *,
        text: str = "",
        messages: tuple[ChatMessage, ...] | None = None,
        options: TemplateOptions | None = None,
    ) -> int:
        return prompt_token_count(self.engine, text, messages, options)

    async def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        return self.engine.embedding_tokens(inputs)

    async def template_info(self) -> dict[str, str]:
        return self.engine.template_info()

    def set_threads(self, threads: int) -> None:
        self.engine.set_threads(threads)

    def rss(self) -> int | None:
        return 0

    async def stop(
        self, timeout: float = 5.0, cut: Callable[[], RouterError] | None = None
    ) -> None:
        """As the real worker's: requests still in flight fail with what `cut` makes."""
        self.stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.engine.close()
        self.exited.set()
        for queue in self._streams.values():
            died = WorkerDied("the model's worker exited during the request")
            queue.put_nowait(cut() if cut is not None else died)


class InProcessPool(WorkerPool):
    def __init__(self) -> None:
        super().__init__(spares=False)

    async def start(  # type: ignore[override]
        self,
        engine: str,
        spec: LoadSpec,
        *,
        timeout: float,
        on_exit: Any = None,
        on_info: Any = None,
    ) -> InProcessWorker:
        assert engine == "fake", "the in-process pool runs the fake engine only"
        return InProcessWorker(FakeEngine(spec))


def fake_models(folder: Path, **scripts: dict[str, Any]) -> list[ModelConfig]:
    """`models:` entries for fake-engine models, one JSON script each (see engines/fake.py)."""
    entries = []
    for model_id, script in scripts.items():
        path = folder / f"{model_id}.json"
        path.write_text(json.dumps({"reply": "hello from the fake engine", **script}))
        entries.append(ModelConfig(id=model_id, path=path, engine="fake"))
    return entries


@asynccontextmanager
async def app_client(
    folder: Path, *, setup: Callable[[FastAPI], None] | None = None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app, started (lifespan) and stopped around the block. The models are
    `fake_models(folder, chat={})` unless `models` is given. `setup(app)` runs before start."""
    options: dict[str, Any] = {
        "models_dir": folder,
        "watch_interval": 0,
        "provision_default_models": False,
        "spare_workers": False,
        "models": fake_models(folder, chat={}),
        **settings,
    }
    source = ConfigSource(None, options)  # a reload reads these options (and the env) again
    config = source.load()
    app = create_app(config, ModelManager(config, pool=InProcessPool()), source=source)
    if setup is not None:
        setup(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client
