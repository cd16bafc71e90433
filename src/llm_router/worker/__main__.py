"""Worker process entry point: `python -m llm_router.worker FD ENGINE`.

Imports ENGINE's backend library at once, then waits on the socket inherited as file
descriptor FD for `{"op": "load", "engine", "spec"}`: so a spare worker can be started ahead of
need and pay Python's start-up and the library import before anyone waits for it; it says so
with `{"op": "spare", "rss"}` (its memory before any model, the base of memory estimates).
Then it loads one model and serves it. A reader thread turns incoming lines into a queue; the
main thread runs the engine loop (`serve`), draining the queue between decode steps and
blocking on it when idle (requests that wake it together start in one step). When the
router's end of the socket closes (router exited or killed us) the process exits: a worker
never outlives its router."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, BinaryIO

from ..engines import Engine, LoadSpec, build, preload
from ..engines.base import prompt_token_count
from ..errors import EngineError, RouterError
from ..types import TextDelta
from .protocol import (
    TEXT_OPS,
    decode,
    embeddings_to_wire,
    encode,
    error_to_wire,
    events_to_wire,
    messages_from_wire,
    pieces_to_wire,
    request_from_wire,
    template_from_wire,
)

INFO_INTERVAL = 1.0
GATHER_QUIET_S = 0.003  # an idle engine's first step waits for this long a pause...
GATHER_MAX_S = 0.015  # ...or this long in all (see serve)


def _reader(stream: BinaryIO, inbox: queue.Queue[dict[str, Any] | None]) -> None:
    """The router's messages into `inbox`; None once the router is gone (an end of file,
    or a reset connection when it was killed: the worker stops, quietly)."""
    with contextlib.suppress(ConnectionError), stream:
        for line in stream:
            try:
                inbox.put(decode(line))
            except ValueError:
                continue
    inbox.put(None)


def _handle(engine: Engine, msg: dict[str, Any], sock: socket.socket, live: set[int]) -> bool:
    """Apply one router message; False means shut down. `live`: the generations running."""
    op = msg.get("op")
    if op == "generate":
        try:
            engine.submit(msg["id"], request_from_wire(msg["request"]))
            live.add(msg["id"])
        except Exception as exc:  # any refusal goes back to that request only
            sock.sendall(encode({"id": msg["id"], "error": error_to_wire(exc)}))
    elif op == "embed":
        # Synchronous: the whole batch runs before the next decode step of any generation.
        try:
            vectors, tokens = engine.embed(msg["inputs"])
            reply = embeddings_to_wire(msg["id"], vectors, tokens)
        except Exception as exc:  # any refusal goes back to that request only
            reply = {"id": msg["id"], "error": error_to_wire(exc)}
        sock.sendall(encode(reply))
    elif op in TEXT_OPS:
        # Synchronous too: tokenizing a request body costs about as much as a prompt's.
        try:
            reply = {"id": msg["id"], "result": _text_op(engine, msg)}
        except Exception as exc:  # any refusal goes back to that request only
            reply = {"id": msg["id"], "error": error_to_wire(exc)}
        sock.sendall(encode(reply))
    elif op == "cancel":
        engine.cancel(msg["id"])
        live.discard(msg["id"])
    elif op == "threads":
        engine.set_threads(int(msg["threads"]))
    elif op == "shutdown":  # its counters as they end (the router adds them up per model)
        sock.sendall(encode({"op": "info", "info": _info(engine)}))
        return False
    return True


def _text_op(engine: Engine, msg: dict[str, Any]) -> Any:
    """One of TEXT_OPS (llama-server's tokenizer and template endpoints), as JSON."""
    op = msg["op"]
    if op == "tokenize":
        return engine.token_ids(
            str(msg["text"]),
            add_special=bool(msg["add_special"]),
            parse_special=bool(msg["parse_special"]),
        )
    if op == "pieces":
        return pieces_to_wire(engine.token_pieces([int(t) for t in msg["tokens"]]))
    if op == "chat_prompt":
        template = template_from_wire(msg.get("template"))
        return engine.chat_prompt(messages_from_wire(msg["messages"]), template)
    if op == "prompt_tokens":  # a chat's template applied, then tokenized: one round trip
        wire = msg.get("messages")
        messages = None if wire is None else messages_from_wire(wire)
        template = template_from_wire(msg.get("template"))
        return prompt_token_count(engine, str(msg["text"]), messages, template)
    if op == "embedding_tokens":
        return engine.embedding_tokens(msg["inputs"])
    return engine.template_info()


def _rss() -> int:
    """This process's resident memory, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def _info(engine: Engine) -> dict[str, Any]:
    return {**engine.info(), "rss": _rss()}


def _step(engine: Engine, live: set[int]) -> list[tuple[int, Any]]:
    """One engine step. An engine bug fails the generations running now, not the worker (and
    so not the model's other requests to come): the engine fails only the sequence at fault
    where it can (engines/llamacpp.py), this is the last resort."""
    try:
        events = engine.step()
    except Exception as exc:
        traceback.print_exc()
        error = EngineError(f"the engine failed: {type(exc).__name__}: {exc}")
        events = [(seq, error) for seq in live]
        for seq in live:
            engine.cancel(seq)
    for seq, event in events:
        if not isinstance(event, TextDelta):
            live.discard(seq)
    return events


def serve(
    engine: Engine,
    sock: socket.socket,
    stream: BinaryIO,
    gather: tuple[float, float] = (GATHER_QUIET_S, GATHER_MAX_S),
) -> None:
    """The engine loop. When a request wakes an idle engine, the first step waits until no
    message came for `gather[0]` seconds (at most `gather[1]` in all): requests sent together
    reach the worker a millisecond or so apart, and a step started on the first alone made
    the others wait for it to end before their prompts began (first tokens at 4 streams
    ~1.4x llama-server's, which takes them together: BENCHMARKS.md)."""
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_reader, args=(stream, inbox), daemon=True).start()
    next_info = 0.0
    live: set[int] = set()
    gather_until = 0.0  # while gathering a burst: when the gathering ends at the latest
    while True:
        busy = engine.busy
        try:
            if not busy:
                msg = inbox.get(timeout=INFO_INTERVAL)
            elif gather_until:
                wait = min(gather[0], gather_until - time.monotonic())
                msg = inbox.get(timeout=max(wait, 0.0))
            else:
                msg = inbox.get_nowait()
        except queue.Empty:
            msg, gather_until = {}, 0.0
        if msg is None or (msg and not _handle(engine, msg, sock, live)):
            return
        if msg:
            if not busy and engine.busy:
                gather_until = time.monotonic() + gather[1]
            continue  # drain everything queued before the next step
        if engine.busy:
            data = events_to_wire(_step(engine, live))
            if data:
                sock.sendall(data)
        now = time.monotonic()
        if now >= next_info:
            sock.sendall(encode({"op": "info", "info": _info(engine)}))
            next_info = now + INFO_INTERVAL


def main(argv: list[str]) -> int:
    # The router decides when we stop (it closes our socket, or kills us). A SIGTERM or
    # Ctrl-C sent to the whole process group (systemd's control group, `kill -TERM -PGID`,
    # a terminal) is the router's to drain for: taken here, it cut the streams in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return _run(int(argv[0]), argv[1])
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the router is gone (killed): nothing to report, no one to report to


def _run(fd: int, engine_name: str) -> int:
    sock = socket.socket(fileno=fd)
    stream = sock.makefile("rb")
    try:
        preload(engine_name)
    except Exception:  # reported properly by build() below
        pass
    # Ready to load: what an empty worker of this engine holds, the base of every estimate.
    sock.sendall(encode({"op": "spare", "rss": _rss()}))
    first = stream.readline()
    if not first:
        return 0  # an unused spare, let go
    try:
        msg = decode(first)
        engine = build(msg["engine"], LoadSpec(**msg["spec"]))
    except Exception as exc:
        err = exc if isinstance(exc, RouterError) else RouterError(f"{type(exc).__name__}: {exc}")
        sock.sendall(encode({"op": "load_failed", "error": error_to_wire(err)}))
        return 3
    sock.sendall(encode({"op": "ready", "info": _info(engine), "pid": os.getpid()}))
    try:
        serve(engine, sock, stream)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the router is gone
    # Exit without running the engine's destructors: the OS reclaims everything at once.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
