"""One log line per request, and its request id (written by server/front.py).

The id is the client's `x-request-id` when it sends a sane one (up to 128 characters of
letters, digits and `-_.:`), else a new one; it is returned in the response's `x-request-id`
and kept at `scope["state"]["request_id"]`. When the response is done, one line goes to the
`llm_router.requests` logger: method, path, status, duration, and for the OpenAI routes what
their record (`RouteInfo` at `scope["state"]["route"]`) says: the model asked, the target
that served, the route decision, tokens, time to first token, cache. The API key's name is
logged when the gateway put one at `scope["state"]["key_name"]`; never a key, a header or,
unless `log_prompts`, a prompt or an answer. With tracing on, the line ends with the trace and
span ids of the request's server span (`trace_id`, `span_id`, as W3C `traceparent` writes them),
also for a request the sampler left out: its upstream calls carried them on."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import Scope

from ..logs import redact, sole_json_handler
from ..tracing import Span

__all__ = [
    "LOG_NAMES",
    "SANE_ID",
    "SPAN_NAMES",
    "Texts",
    "request_fields",
    "route_fields",
    "write_line",
]

log = logging.getLogger("llm_router.requests")
SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TEXT_LIMIT = 64 * 1024  # most bytes of a body kept for `log_prompts`


# The names `route_fields` gives a route record's model asked, target served, route decision,
# response cache's word and tokens: the log line's, and the span's (GenAI conventions).
LOG_NAMES = ("model", "target", "route", "cache", "prompt_tokens", "completion_tokens")
SPAN_NAMES = (
    "gen_ai.request.model",
    "gen_ai.response.model",
    "llm_router.route",
    "llm_router.cache",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)


def route_fields(route: Any, out: dict[str, Any], names: tuple[str, ...]) -> None:
    """`out` with what an OpenAI route's record (serving/route_info.py) says, under `names`
    (`LOG_NAMES` or `SPAN_NAMES`): only what it has, no None values. The one reader of the
    record for the request's log line and its server span."""
    if route.model:
        out[names[0]] = redact(route.model)
    if route.target:
        out[names[1]] = route.target
    if route.reason:
        out[names[2]] = route.reason
    if route.cache:
        out[names[3]] = route.cache
    if route.usage is not None:
        out[names[4]] = route.usage.prompt_tokens
        out[names[5]] = route.usage.completion_tokens


def request_fields(state: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """`out` with what an OpenAI route's record says about the request (nothing for other
    routes): only what it has (no None values)."""
    route = state.get("route")
    if route is not None:
        route_fields(route, out, LOG_NAMES)
        if route.ttft is not None:
            out["ttft_ms"] = round(route.ttft * 1000, 2)
        if route.error:  # a stream cut after its 200 says so here
            out["error"] = route.error
    key = state.get("key_name")
    if key:
        out["key"] = key
    return out


def write_line(
    scope: Scope,
    state: dict[str, Any],
    status: int,
    started: float,
    request_id: str,
    texts: Texts | None,
    span: Span | None = None,
) -> None:
    """The request's line, to the `llm_router.requests` logger at INFO (server/front.py calls
    it once the response is done). The record is made without the logger's search of the
    stack for the caller (`findCaller`: the line says where it is from, this function), and
    not at all when the JSON handler alone would write it (logs.py)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "method": scope["method"],
        "path": redact(scope["path"]),
        "status": status or None,  # None: the client left before any response
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    request_fields(state, fields)
    fields["request_id"] = request_id
    if span is not None:
        fields["trace_id"] = f"{span.trace_id:032x}"
        fields["span_id"] = f"{span.span_id:016x}"
    if texts is not None:
        fields.update(texts.fields())
    handler = sole_json_handler(log)
    if handler is not None:  # the server's JSON log: the same line, without the record
        handler.line(log.name, _summary(fields), fields)
        return
    extra = {"fields": fields}
    line = _Line(fields)
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None, None, extra))


class _Line:
    """The human-readable line, written only by a text formatter (the JSON one writes the
    fields, with `summary` as its message)."""

    __slots__ = ("fields", "summary")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.summary = _summary(fields)

    def __str__(self) -> str:
        rest = " ".join(
            _pair(k, v) for k, v in self.fields.items() if k not in ("method", "path", "status")
        )
        return f"{self.summary} {rest}"


def _summary(fields: dict[str, Any]) -> str:
    """The line's message: method, path and status ("-" when the client left first)."""
    return f"{fields['method']} {fields['path']} {fields['status'] or '-'}"


def _pair(name: str, value: Any) -> str:
    """`name=value`, or the value alone when it starts with `name=` already (a route's
    decision, "route=auto strategy=balanced ...", is not written "route=route=auto")."""
    text = str(value)
    return text if text.startswith(f"{name}=") else f"{name}={text}"


class Texts:
    """The prompt and the answer, read from the bodies as they pass (`log_prompts` only)."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.got = bytearray()

    def request(self, body: bytes) -> None:
        self.sent += body[: _TEXT_LIMIT - len(self.sent)]

    def answer(self, body: bytes) -> None:
        self.got += body[: _TEXT_LIMIT - len(self.got)]

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            body = json.loads(self.sent)
        except ValueError:
            body = None
        if isinstance(body, dict):
            for name in ("messages", "prompt", "input"):
                if name in body:
                    out["prompt"] = body[name]
        answer = _answer_text(bytes(self.got))
        if answer:
            out["answer"] = answer
        return out


def _answer_text(body: bytes) -> str:
    """The generated text of a JSON answer or an SSE stream of chunks."""
    docs: list[Any] = []
    if body.startswith(b"data: ") or b"\ndata: " in body:
        for line in body.split(b"\n"):
            if line.startswith(b"data: {"):
                try:
                    docs.append(json.loads(line[6:]))
                except ValueError:
                    continue
    else:
        try:
            docs.append(json.loads(body))
        except ValueError:
            return ""
    parts: list[str] = []
    for doc in docs:
        for choice in doc.get("choices") or () if isinstance(doc, dict) else ():
            if not isinstance(choice, dict):
                continue
            message = choice.get("message") or choice.get("delta") or {}
            text = message.get("content") if isinstance(message, dict) else None
            parts.append(text or choice.get("text") or "")
    return "".join(parts)
