"""Logging set-up: one line per record on stderr, JSON when asked (`log_format: json`).

The JSON formatter is ours, not python-json-logger: 20 lines of stdlib, and a record's
structured fields (`extra={"fields": {...}}`, as the request log passes them) become
top-level keys, beside time, level, logger and message."""

from __future__ import annotations

import json
import logging
import sys

__all__ = ["setup_logging"]


class JsonFormatter(logging.Formatter):
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
        return json.dumps(data, default=str)


def setup_logging(level: str, json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
