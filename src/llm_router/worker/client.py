"""The router's handle on one worker process.

`Worker.start` loads a model into a started worker (a Spare, spawn.py) and waits for it to
report ready. One reader task dispatches the worker's messages to per-request queues; when the
worker dies every in-flight request gets a WorkerDied error at once and `on_exit` is called, so
nothing waits on a dead process. One method per operation of worker/protocol.py; every
one-answer operation goes through `_request`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import psutil

from ..engines import LoadSpec
from ..errors import LoadInterrupted, ModelLoadFailed, RouterError, WorkerDied
from ..types import (
    ChatMessage,
    Embeddings,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    TemplateOptions,
    TextDelta,
)
from .protocol import (
    Reply,
    decode,
    encode,
    error_from_wire,
    event_from_wire,
    messages_to_wire,
    pieces_from_wire,
    request_to_wire,
    template_to_wire,
)
from .spawn import Process, Spare, describe_exit, kill_and_wait

__all__ = ["Worker"]

log = logging.getLogger(__name__)
# Signals that stop a loading worker from outside (the OOM killer's SIGKILL, a person's
# SIGTERM or Ctrl-C): the file is not to blame. A crash (SIGSEGV, SIGABRT) is held against it.
_INTERRUPTED = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT})
# asyncio's child watcher reports 255 for a child whose exit status it could not collect
# ("Unknown child process pid N, will report returncode 255"): seen once for a worker
# SIGKILLed while loading, on a busy machine. No more the file's doing than a kill.
_STATUS_LOST = 255

# What the worker sends one request.
WorkerEvent = TextDelta | PromptLogprobs | Finished | Embeddings | Reply | RouterError


class Worker:
    """A running worker. `generate` may be called concurrently; the engine batches."""

    def __init__(
        self,
        proc: Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: dict[str, Any],
    ) -> None:
        self.proc = proc
        self.info = info
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._streams: dict[int, asyncio.Queue[WorkerEvent]] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_exit: Callable[[Worker, str], None] | None = None
        self._on_info: Callable[[Worker], None] | None = None
        self.exited = asyncio.Event()
        self.stopping = False
        # what requests in flight get when the worker is stopped (else WorkerDied)
        self._cut: Callable[[], RouterError] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @classmethod
    async def start(
        cls,
        spare: Spare,
        spec: LoadSpec,
        *,
        timeout: float,
        on_exit: Callable[[Worker, str], None] | None = None,
        on_info: Callable[[Worker], None] | None = None,
    ) -> Worker:
        """Load the model in `spare` and wait until it is loaded. Raises ModelLoadFailed (or
        the engine's own RouterError, e.g. EngineUnavailable) when the load fails; the process
        is gone by then. Cancelling the call kills the process. `on_exit(worker, reason)` is
        called when the process ends by itself, `on_info(worker)` after each info snapshot
        (every second or so: slots, counters, `rss`)."""
        engine = spare.engine
        proc, reader, writer = spare.proc, spare.reader, spare.writer
        try:
            writer.write(encode({"op": "load", "engine": engine, "spec": asdict(spec)}))
            first = await asyncio.wait_for(reader.readline(), timeout)
        except BaseException as exc:
            await kill_and_wait(proc)
            writer.close()
            if isinstance(exc, TimeoutError):  # an OSError too: first
                raise LoadInterrupted(
                    f"it did not load within worker_start_timeout ({timeout:g} s); the next "
                    "request loads it again"
                ) from None
            if isinstance(exc, OSError):  # its process went before it read the load
                raise LoadInterrupted(
                    f"its worker process failed before loading ({exc}); the next request loads "
                    "it again"
                ) from None
            raise
        msg = decode(first) if first else {}
        if msg.get("op") != "ready":
            writer.close()
            code = await kill_and_wait(proc)
            if msg.get("op") == "load_failed":
                err = error_from_wire(msg.get("error") or {})
                if type(err) is RouterError:
                    err = ModelLoadFailed(err.message)
                raise err
            if code is not None and (-code in _INTERRUPTED or code == _STATUS_LOST):  # not its file
                raise LoadInterrupted(
                    f"its {describe_exit(code)} while loading; the next request loads it again"
                )
            raise ModelLoadFailed(f"its {describe_exit(code)} while loading")
        worker = cls(proc, reader, writer, msg.get("info") or {})
        worker._on_exit = on_exit
        worker._on_info = on_info
        worker._task = asyncio.create_task(worker._pump(), name=f"worker-{proc.pid}")
        return worker

    async def generate(
        self, request: GenerationRequest
    ) -> AsyncIterator[TextDelta | PromptLogprobs | Finished]:
        """Stream one generation. Raises the engine's RouterError, or WorkerDied when the
        process exits mid-way. Closing the iterator early cancels the sequence in the worker."""
        if self.exited.is_set() or self.stopping:
            raise self._stopping()
        seq = next(self._ids)
        events: asyncio.Queue[WorkerEvent] = asyncio.Queue()
        self._streams[seq] = events
        done = False
        try:
            self._send({"op": "generate", "id": seq, "request": request_to_wire(request)})
            while True:
                event = await events.get()
                if isinstance(event, RouterError):
                    done = True
                    raise event
                if isinstance(event, TextDelta) and not events.empty():
                    event, pending = _coalesce(event, events)
                    if pending is not None:  # a finish or error right behind the text
                        yield event
                        event = pending
                        if isinstance(event, RouterError):
                            done = True
                            raise event
                if isinstance(event, Embeddings | Reply):  # not an answer to a generation
                    raise WorkerDied("the worker answered a generation with something else")
                yield event
                if isinstance(event, Finished):
                    done = True
                    return
        finally:
            self._streams.pop(seq, None)
            if not done and not self.exited.is_set():
                with contextlib.suppress(ConnectionError, RuntimeError):
                    self._send({"op": "cancel", "id": seq})

    async def embed(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        """Embed `inputs` in one batch. Raises the engine's RouterError (BadRequest for a model
        that makes no embeddings), or WorkerDied when the process exits meanwhile. Cancelling
        only drops the answer: the worker finishes the batch (it cannot be interrupted)."""
        event = await self._request({"op": "embed", "inputs": inputs})
        if not isinstance(event, Embeddings):
            raise WorkerDied("the worker answered an embedding request with text")
        return event

    async def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """The model's tokens of `text` (see Engine.token_ids)."""
        value = await self._ask(
            {
                "op": "tokenize",
                "text": text,
                "add_special": add_special,
                "parse_special": parse_special,
            }
        )
        return [int(t) for t in value]

    async def pieces(self, tokens: list[int]) -> list[bytes]:
        """Each token's bytes, special tokens written out (see Engine.token_pieces)."""
        return pieces_from_wire(await self._ask({"op": "pieces", "tokens": tokens}))

    async def chat_prompt(
        self, messages: tuple[ChatMessage, ...], options: TemplateOptions | None = None
    ) -> str:
        """The chat template applied to `messages` (see Engine.chat_prompt)."""
        wire = messages_to_wire(messages)
        template = template_to_wire(options)
        return str(await self._ask({"op": "chat_prompt", "messages": wire, "template": template}))

    async def prompt_tokens(
        self,
        *,
        text: str = "",
        messages: tuple[ChatMessage, ...] | None = None,
        options: TemplateOptions | None = None,
    ) -> int:
        """How many tokens `messages` through the chat template (else `text`) make, special
        tokens added and parsed: `chat_prompt` then `tokenize` in one round trip."""
        wire = None if messages is None else messages_to_wire(messages)
        op = {"op": "prompt_tokens", "text": text, "messages": wire}
        return int(await self._ask({**op, "template": template_to_wire(options)}))

    async def embedding_tokens(self, inputs: list[str] | list[list[int]]) -> int:
        """The input tokens embedding `inputs` counts (see Engine.embedding_tokens)."""
        return int(await self._ask({"op": "embedding_tokens", "inputs": inputs}))

    async def template_info(self) -> dict[str, str]:
        """The chat template's source and the BOS and EOS tokens (see Engine.template_info)."""
        value = await self._ask({"op": "template_info"})
        return {str(k): str(v) for k, v in value.items()}

    async def _ask(self, message: dict[str, Any]) -> Any:
        """Send a text operation and return its result (see `_request`)."""
        event = await self._request(message)
        if not isinstance(event, Reply):
            raise WorkerDied(f"the worker answered {message['op']} with something else")
        return event.value

    async def _request(self, message: dict[str, Any]) -> WorkerEvent:
        """Send a one-answer operation (embed, a text operation) and wait for its answer.
        Raises the engine's RouterError, or WorkerDied when the process exits meanwhile.
        Cancelling only drops the answer: the worker finishes the operation."""
        if self.exited.is_set() or self.stopping:
            raise self._stopping()
        seq = next(self._ids)
        answer: asyncio.Queue[WorkerEvent] = asyncio.Queue()
        self._streams[seq] = answer
        try:
            self._send({**message, "id": seq})
            event = await answer.get()
        finally:
            self._streams.pop(seq, None)
        if isinstance(event, RouterError):
            raise event
        return event

    def rss(self) -> int | None:
        """The worker process's resident memory now, in bytes (None once it is gone)."""
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None

    def set_threads(self, threads: int) -> None:
        """Tell the engine how many CPU threads it may use from its next step on."""
        if not self.exited.is_set() and not self.stopping:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._send({"op": "threads", "threads": threads})

    async def stop(
        self, timeout: float = 5.0, cut: Callable[[], RouterError] | None = None
    ) -> None:
        """Ask the worker to exit, kill it after `timeout`; returns when it is gone. Requests
        still in flight fail with the error `cut` makes, told at once (an unload's grace is
        over: they ended ~3 s later, when the process had exited), else with WorkerDied when
        it has exited."""
        self.stopping = True
        self._cut = cut
        if cut is not None:
            for stream in self._streams.values():
                stream.put_nowait(cut())
        if not self.exited.is_set():
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._send({"op": "shutdown"})
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                await kill_and_wait(self.proc)
        if self._task is not None:
            await self._task
        self._writer.close()

    def _stopping(self) -> RouterError:
        """What a request sent to a worker already told to stop gets."""
        return (
            self._cut()
            if self._cut is not None
            else WorkerDied("the model's worker is stopping; retry")
        )

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer.is_closing():
            raise ConnectionError("worker channel closed")
        self._writer.write(encode(message))

    async def _pump(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = decode(line)
                if "id" in msg:
                    stream = self._streams.get(msg["id"])
                    if stream is not None:
                        stream.put_nowait(event_from_wire(msg))
                elif msg.get("op") == "info":
                    self.info = msg.get("info") or self.info
                    if self._on_info is not None:
                        self._on_info(self)
        except (ConnectionError, ValueError) as exc:
            if not self.stopping:  # a worker told to exit may reset the socket as it goes
                log.warning("worker %s channel broke (%s): killing it", self.pid, exc)
            # A channel that cannot be read (a line past spawn.STREAM_LIMIT, garbage) is never
            # read again: the worker must go, or its model would look loaded and answer nothing.
            await kill_and_wait(self.proc)
        code = await self.proc.wait()
        reason = describe_exit(code)
        for stream in self._streams.values():
            died = WorkerDied(f"the model's {reason} during the request")
            stream.put_nowait(self._cut() if self._cut is not None else died)
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit(self, reason)


def _coalesce(
    first: TextDelta, events: asyncio.Queue[WorkerEvent]
) -> tuple[TextDelta, WorkerEvent | None]:
    """Merge the text already waiting behind `first` into one delta. A consumer that keeps up
    sees one token per chunk; one that falls behind (a busy server) gets fewer, larger chunks
    instead of a growing backlog. Returns the merged text and the non-text event after it."""
    parts = [first.text]
    logprobs = list(first.logprobs)
    while not events.empty():
        event = events.get_nowait()
        if not isinstance(event, TextDelta):
            return TextDelta("".join(parts), tuple(logprobs)), event
        parts.append(event.text)
        logprobs.extend(event.logprobs)
    return TextDelta("".join(parts), tuple(logprobs)), None
