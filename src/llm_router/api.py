"""The Python API: the server's own services in your process, without HTTP.

    from llm_router import Router

    async with Router(models_dir="models") as router:
        print(await router.quick("What is the capital of France?"))
        async for text in router.stream("Once upon a time", model="gemma-3-270m-q4_k_m"):
            print(text, end="")

A `Router` holds the same objects `llm-router serve` does (the model manager with its worker
processes, the router with its routes, breakers and remote targets, the generation, embedding
and ensemble services), so a name means the same here as in a request's `model` field: a
local model id or alias, a remote target or a route. Requests and answers are the server's
OpenAI types (`ChatCompletion`, `Completion`, `EmbeddingResponse`); the `str` helpers are for
when only the text matters. Errors are the server's too (`ModelNotFound`, `QueueFull`, ...,
all `RouterError`). One `Router` per event loop; `close()` (or leaving `async with`) stops the
workers it started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from .config import Settings
from .config_load import load_config
from .errors import BadRequest
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)
from .protocol.invalid import describe_invalid

if TYPE_CHECKING:
    from .cache import ResponseCache
    from .lifecycle.manager import ModelManager
    from .serving.ensemble import Answer, EnsembleResult

__all__ = ["Router"]

Messages = str | Sequence[Mapping[str, Any]]
T = TypeVar("T", bound=BaseModel)


class Router:
    """`Router(config=None, **settings)`: settings as for `llm-router serve` (a YAML/JSON file,
    then the environment, then keyword overrides such as `models_dir=`), or a ready `settings=`.

    `model` may be left out of the generation calls: the bundled SmolLM2 when it is there,
    else the first local model that generates text (see `default_model`)."""

    def __init__(
        self,
        config: str | Path | None = None,
        *,
        settings: Settings | None = None,
        manager: ModelManager | None = None,
        **overrides: Any,
    ) -> None:
        from .lifecycle.manager import ModelManager
        from .metrics import Metrics
        from .routing.dispatcher import Dispatcher
        from .routing.ensemble import load_scorers
        from .serving.embed import EmbeddingService
        from .serving.ensemble import EnsembleService
        from .serving.generate import GenerationService
        from .serving.llama import LlamaService

        self.settings = settings or load_config(config, overrides)
        # The one place the parts are put together; the HTTP app (server.app) serves these.
        self.manager = manager or ModelManager(self.settings)
        self.dispatcher = Dispatcher(self.settings, self.manager)
        self.metrics = Metrics()
        self.metrics.watch(self.manager)
        self.metrics.watch_routing(self.dispatcher)
        self.cache: ResponseCache | None = None
        self.generation: GenerationService
        self.embeddings: EmbeddingService
        if self.settings.cache.enabled:
            from .cache import build_cache

            self.cache, self.generation, self.embeddings = build_cache(
                self.settings, self.dispatcher, self.metrics
            )
        else:
            self.generation = GenerationService(self.dispatcher, self.metrics)
            self.embeddings = EmbeddingService(self.dispatcher, self.metrics)
        self.llama = LlamaService(self.dispatcher)  # llama-server's /tokenize, /props...
        self.ensembles = EnsembleService(
            self.generation, load_scorers(self.settings.ensemble_scorers)
        )
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Router:
        """Find the models (provisioning the bundled ones into an empty directory, in a
        thread: the event loop goes on meanwhile) and start the router; models load on first
        use. A closed Router cannot start again (RuntimeError): make a new one."""
        if self._started:
            return self
        if self._closed:  # its manager stopped for good: a request would wait for ever
            raise RuntimeError("this Router was closed; make a new Router to start again")
        from .lifecycle.discovery import ensure_models

        await asyncio.to_thread(ensure_models, self.settings)
        await self.manager.start()
        try:
            await self.dispatcher.start()
            if self.cache is not None:
                await self.cache.start()
        except BaseException:
            await self.dispatcher.close()
            await self.manager.close()
            raise
        self._started = True
        return self

    async def close(self) -> None:
        """Stop the router: requests in flight end with an error, the model workers stop
        (their memory comes back). Final: a closed Router does not start again."""
        if not self._started:
            return
        self._started = False
        self._closed = True
        try:
            if self.cache is not None:
                await self.cache.close()
            await self.dispatcher.close()
        finally:
            await self.manager.close()

    def reconfigure(self, settings: Settings) -> list[str]:
        """Run with `settings` from now on: their model entries, routes, remote targets and
        lifecycle limits apply at once (reload.py: `LIVE`; the other fields must equal the
        running ones, reload.plan makes such settings). Returns the local models unloaded
        because their file or options changed; the next request loads them again. Raises
        ConfigError, changing nothing, for a route whose strategy cannot be loaded."""
        self._check()
        unloaded = self.dispatcher.reconfigure(settings)
        self.settings = settings
        return unloaded

    async def __aenter__(self) -> Router:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- names ---------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every name a call can use: local models, remote targets and routes."""
        self._check()
        self.manager.refresh()
        return (
            [s.id for s in self.manager.states()]
            + [t.id for t in self.dispatcher.remotes()]
            + [r.name for r in self.dispatcher.routes()]
        )

    def default_model(self) -> str:
        """The model used when a call names none: the bundled chat model (SmolLM2) when it is
        in the models directory, else the first local model that generates text."""
        from .defaults import SMOLLM2_FILE

        self._check()
        self.manager.refresh()
        ids = [s.id for s in self.manager.states() if s.source.task != "embed"]
        bundled = SMOLLM2_FILE.removesuffix(".gguf")
        if bundled in ids:
            return bundled
        if ids:
            return ids[0]
        raise BadRequest("no local model generates text here; name a `model`", param="model")

    # -- generation ----------------------------------------------------------------------------

    async def chat(
        self, messages: Messages, *, model: str | None = None, **params: Any
    ) -> ChatCompletion:
        """A chat completion. `messages` is a list of {"role", "content"} or one user message
        as a string; `params` are the OpenAI request's fields (max_tokens, temperature, seed,
        stop, ...)."""
        request = self._chat(messages, model, params)  # first: it checks the router started
        return await self.generation.chat(request)

    async def generate(self, prompt: str, *, model: str | None = None, **params: Any) -> Completion:
        """A plain text completion of `prompt`: no chat template."""
        request = self._completion(prompt, model, params)
        return await self.generation.complete(request)

    async def stream(
        self, messages: Messages, *, model: str | None = None, raw: bool = False, **params: Any
    ) -> AsyncIterator[str]:
        """The answer's text as it is generated (a chat; `raw=True`: a plain completion of a
        string prompt), an async generator. Leaving the loop early cancels the generation.
        One answer of text: `tools` and `n` > 1 are refused (BadRequest; use `chat`)."""
        if params.get("tools") or params.get("functions"):
            raise BadRequest("stream() yields text; for tool calls use chat()", param="tools")
        if isinstance(n := params.get("n"), int) and n > 1:
            raise BadRequest("stream() yields one answer's text; for n > 1 use chat()", param="n")
        params = {**params, "stream": True}
        if raw:
            if not isinstance(messages, str):
                raise BadRequest("raw=True takes a string prompt", param="prompt")
            request: ChatCompletionRequest | CompletionRequest = self._completion(
                messages, model, params
            )
        else:
            request = self._chat(messages, model, params)
        pieces = self.generation.text_stream(request)
        try:
            async for text in pieces:
                yield text
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def quick(self, question: str, *, model: str | None = None, **params: Any) -> str:
        """One question, the answer's text."""
        done = await self.chat(question, model=model, **params)
        return done.choices[0].message.content or ""

    async def batch(
        self,
        prompts: Sequence[Messages],
        *,
        model: str | None = None,
        concurrency: int = 8,
        **params: Any,
    ) -> list[str]:
        """Many questions at once (at most `concurrency` in flight; a local model decodes them
        together in its slots); the answers' texts in the order asked. The first failure is
        raised, and the questions still running or waiting are cancelled then."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(messages: Messages) -> str:
            async with gate:
                done = await self.chat(messages, model=model, **params)
                return done.choices[0].message.content or ""

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(p)) for p in prompts]
        except BaseExceptionGroup as failed:  # the first failure, as a plain call raises it
            raise failed.exceptions[0] from None
        return [t.result() for t in tasks]

    # -- embeddings ----------------------------------------------------------------------------

    async def embed(
        self, inputs: str | Sequence[str], *, model: str, **params: Any
    ) -> list[list[float]]:
        """One vector per input (a string gives a list of one), as floats whatever
        `encoding_format` says (`embeddings_response` gives base64 when asked)."""
        params = {**params, "encoding_format": "float"}
        response = await self.embeddings_response(inputs, model=model, **params)
        return [d.embedding for d in response.data if isinstance(d.embedding, list)]

    async def embeddings_response(
        self, inputs: str | Sequence[str], *, model: str, **params: Any
    ) -> EmbeddingResponse:
        """The full `/v1/embeddings` answer (usage, `dimensions`, base64 when asked)."""
        self._check()
        body = {
            **params,
            "model": model,
            "input": inputs if isinstance(inputs, str) else list(inputs),
        }
        return await self.embeddings.embed(_validated(EmbeddingRequest, body))

    # -- several targets -----------------------------------------------------------------------

    async def ensemble(
        self, messages: Messages, *, targets: Sequence[str], mode: str = "vote", **params: Any
    ) -> EnsembleResult:
        """One question to several targets, the answers combined (`mode`: vote, best-of,
        first; `weights`, `scorer`, `judge` as for `POST /v1/ensemble`): the chosen chat
        completion, with the details under "ensemble"."""
        from .serving.ensemble import EnsembleRequest

        body = self._body(messages, params) | {"targets": list(targets), "mode": mode}
        return await self.ensembles.ensemble(_validated(EnsembleRequest, body))

    async def compare(
        self, messages: Messages, *, targets: Sequence[str], **params: Any
    ) -> list[Answer]:
        """Every target's answer side by side: model, content, latency, tokens, cost, error."""
        from .serving.ensemble import CompareRequest

        body = self._body(messages, params) | {"targets": list(targets)}
        result = await self.ensembles.compare(_validated(CompareRequest, body))
        return result.data

    # -- plumbing ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._started:
            raise RuntimeError("Router is not started: use `async with Router(...)` or start()")

    def _body(self, messages: Messages, params: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return {**params, "messages": list(messages)}

    def _chat(
        self, messages: Messages, model: str | None, params: Mapping[str, Any]
    ) -> ChatCompletionRequest:
        body = self._body(messages, params)
        body["model"] = model or self.default_model()
        return _validated(ChatCompletionRequest, body)

    def _completion(
        self, prompt: str, model: str | None, params: Mapping[str, Any]
    ) -> CompletionRequest:
        self._check()
        body = {**params, "prompt": prompt, "model": model or self.default_model()}
        return _validated(CompletionRequest, body)


def _validated(model: type[T], body: dict[str, Any]) -> T:
    """The request model, or BadRequest naming the field (as the server's 400 would)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        param, message = describe_invalid(exc.errors())
        raise BadRequest(message, param=param) from None
