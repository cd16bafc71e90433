"""Logging set-up: one line per record on stderr, JSON when asked (`log_format: json`).

A text line is one line whatever a client sent: the control characters of its message (a
path, a model name, a prompt) are written as escapes (`\\n`, `\\r`, `\\x1b`), as JSON writes
them in its strings; a path with `%0D%0A` in it wrote a line of the client's making (found from
outside). A traceback still follows its message on lines of its own.

The JSON formatter is ours, not python-json-logger: 20 lines of stdlib, and a record's
structured fields (`extra={"fields": {...}}`, as the request log passes them) become
top-level keys, beside time, level, logger and message.

The request log writes one line a request; where the JSON handler set up here is the only one
its records would reach (the server's case, not a test's with `caplog`), it writes the line
through `JsonLines.line` without making the record: the same line, for less CPU on every
request (BENCHMARKS.md, "What observability costs"). Lines are encoded by orjson (~0.3 us a
line against the stdlib's ~3.8), with the stdlib as the fallback for what orjson refuses
(integers past 64 bits); the same JSON, without the spaces after separators."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import unicodedata
from typing import Any, TextIO

import orjson

__all__ = [
    "JsonFormatter",
    "JsonLines",
    "Occasional",
    "TextFormatter",
    "fields",
    "one_line",
    "redact",
    "setup_logging",
    "sole_json_handler",
]

_SECRET = re.compile(r"(sk-(?:llmr-|proj-|ant-)?)[A-Za-z0-9_-]{6,}")
# Unicode categories written as escapes: control characters (C0, DEL, C1), format characters
# (bidirectional overrides and isolates such as U+202E, which reorder a line as shown: "Trojan
# Source"; zero-width ones; tags), the line and paragraph separators (a line break to
# `str.splitlines` and to some log viewers) and lone surrogates
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Occasional:
    """A warning logged at most once per `every` seconds, the others dropped: a shared store
    that is down fails every request the same way (two lines a request while Redis was down:
    found from outside). Called from the event loop (not locked)."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._last = -float("inf")  # monotonic time of the last line

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.logger.warning(message, *args)


def redact(text: str) -> str:
    """`text` with what looks like an API key (`sk-...`) cut to its prefix: a client that
    put its key in `model` or in the URL had it written to the logs and traces, which never
    hold a key. Cheap when there is none (a substring test), as nearly always."""
    return _SECRET.sub(r"\1...", text) if "sk-" in text else text


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call whose JSON line carries `values` as keys of their own beside its
    message (`model`, `reason`, `duration_s`...): what a text line says in its words, for a
    query. Not `time`, `level`, `logger` or `message`."""
    return {"fields": values}


def one_line(text: str) -> str:
    """`text` with its control and format characters as escapes (`\\n`, `\\x1b`, `\\u2028`,
    `\\u202e`), not removed: what was sent stays readable, in the order it was sent. One C
    call when there is none, as nearly always (`isprintable` is false for every one of them)."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return _ESCAPES.get(char) or f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class TextFormatter(logging.Formatter):
    """The text log's formatter: the stdlib's, with the message on one line (`one_line`)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The stdlib's time format, its `strftime` done once a second (one line a request)."""
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created, record.msecs)

    def stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        return self.default_msec_format % (self._stamp, msecs)  # type: ignore[operator]

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": getattr(record.msg, "summary", None) or record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured fields: `extra={"fields": {...}}`
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _dumps(data)


class JsonLines(logging.StreamHandler[TextIO]):
    """The JSON log's handler (`setup_logging`). The lines of `line` called on an event loop
    are written together once the loop's current callbacks are done (one `write` for all
    the requests that ended in one turn of the loop); any other record, `flush` and `close`
    write them first, so the lines stay in order."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.pending: list[dict[str, Any]] = []

    def line(self, logger: str, message: str, fields: dict[str, Any]) -> None:
        """What `emit` writes for an INFO record of `logger` with `message` and the structured
        `fields`, without the record (see the module's docstring)."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter)
        created = time.time()
        data = {
            "time": formatter.stamp(created, int((created - int(created)) * 1000) + 0.0),
            "level": "info",
            "logger": logger,
            "message": message,
            **fields,
        }
        if not self.pending:
            try:
                asyncio.get_running_loop().call_soon(self.write_pending)
            except RuntimeError:  # no loop here: at once
                self.pending.append(data)
                self.write_pending()
                return
        self.pending.append(data)

    def write_pending(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self.pending = self.pending, []
            if not lines:
                return
            try:
                self.stream.write("".join([_dumps(d) + self.terminator for d in lines]))
                self.stream.flush()
            except Exception:
                record = logging.makeLogRecord({"name": lines[0]["logger"], "msg": "request log"})
                self.handleError(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending:
            self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        if self.pending:
            self.write_pending()
        super().flush()


def _dumps(data: dict[str, Any]) -> str:
    try:
        return orjson.dumps(data, default=str).decode()
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, say
        return json.dumps(data, default=str)


def sole_json_handler(logger: logging.Logger) -> JsonLines | None:
    """The `JsonLines` handler when it is the only handler an INFO record of `logger` reaches
    and nothing on the way filters (else None: the record goes the usual way)."""
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or handler.__class__ is not JsonLines
                or handler.filters
                or handler.level > logging.INFO
                or handler.formatter.__class__ is not JsonFormatter
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def setup_logging(level: str, json_logs: bool = False) -> None:
    handler: logging.Handler
    if json_logs:
        handler = JsonLines(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
