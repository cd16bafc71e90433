"""The channel between the router and a worker: newline-delimited JSON over a Unix socket pair.

Router -> worker: `{"op": "generate", "id", "request"}`, `{"op": "cancel", "id"}`,
`{"op": "shutdown"}`. Worker -> router: `{"op": "ready", "info"}` or `{"op": "load_failed",
"error"}` once, then per request `{"id", "text"}` deltas, `{"id", "finish", "usage"}` or
`{"id", "error"}`, and `{"op": "info", "info"}` snapshots. Errors travel as the name of a class in
`llm_router.errors` plus message and param, and are rebuilt on the other side."""

from __future__ import annotations

import json
from typing import Any

from .. import errors
from ..types import Finished, TextDelta, Usage

__all__ = ["decode", "encode", "error_from_wire", "error_to_wire", "event_from_wire"]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("worker message is not an object")
    return value


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.RouterError):
        return {"kind": type(exc).__name__, "message": exc.message, "param": exc.param}
    return {"kind": "EngineError", "message": f"{type(exc).__name__}: {exc}", "param": None}


def error_from_wire(data: dict[str, Any]) -> errors.RouterError:
    cls = getattr(errors, str(data.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.RouterError)):
        cls = errors.EngineError
    if issubclass(cls, errors.QueueFull):
        return cls(str(data.get("message")))
    return cls(str(data.get("message")), param=data.get("param"))


def event_from_wire(msg: dict[str, Any]) -> TextDelta | Finished | errors.RouterError:
    if "text" in msg:
        return TextDelta(msg["text"])
    if "finish" in msg:
        return Finished(msg["finish"], Usage(**msg["usage"]))
    return error_from_wire(msg.get("error") or {})
