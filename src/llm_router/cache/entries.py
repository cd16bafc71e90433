"""What a cache entry holds, as bytes: the target that served and the events it produced
(text, message fields, the finish with its usage), text pieces merged into one. A stream and
a whole answer are both rebuilt from the same events, by the same code as a computed answer."""

from __future__ import annotations

import json
from typing import Any

from ..tool_calls import new_call_id
from ..types import Finished, GenerationEvent, MessageFields, TextDelta, Usage

__all__ = ["Recorder", "decode"]


class Recorder:
    """Collects the events of one answer; `encode()` is None if one cannot be stored (an event
    kind the cache does not know, such as log-probabilities, or no finish)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.items: list[list[Any]] = []
        self.storable = True
        self.finished = False

    def add(self, event: GenerationEvent) -> None:
        if not self.storable:
            return
        if type(event) is TextDelta and not event.logprobs:
            if self.items and self.items[-1][0] == "text":
                self.items[-1][1] += event.text
            else:
                self.items.append(["text", event.text])
        elif type(event) is MessageFields:
            self.items.append(["fields", event.fields])
        elif type(event) is Finished:
            u = event.usage
            self.items.append(
                [
                    "finish",
                    event.finish_reason,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cached_tokens,
                    *([event.stop] if event.stop is not None else []),
                ]
            )
            self.finished = True
        else:
            self.storable = False

    def encode(self) -> bytes | None:
        if not (self.storable and self.finished):
            return None
        try:
            return json.dumps({"target": self.target, "events": self.items}).encode()
        except (TypeError, ValueError):  # message fields that are not JSON
            return None


def decode(value: bytes) -> tuple[str, list[GenerationEvent]]:
    """The target and the events of a stored answer. Raises ValueError if it is not one. Its
    tool calls get new ids (the same new id for every delta of one call): every hit repeated
    the stored ones, and clients keep tool-call ids apart across conversations."""
    try:
        data = json.loads(value)
        events: list[GenerationEvent] = []
        fresh: dict[str, str] = {}
        for item in data["events"]:
            if item[0] == "text":
                events.append(TextDelta(item[1]))
            elif item[0] == "fields":
                events.append(MessageFields(_fresh_call_ids(item[1], fresh)))
            elif item[0] == "finish":
                stop = item[5] if len(item) > 5 else None
                events.append(Finished(item[1], Usage(item[2], item[3], item[4]), stop))
            else:
                raise ValueError(f"unknown cache event {item[0]!r}")
        return str(data["target"]), events
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a cache entry: {exc}") from None


def _fresh_call_ids(fields: dict[str, Any], fresh: dict[str, str]) -> dict[str, Any]:
    calls = fields.get("tool_calls")
    if not isinstance(calls, list):
        return fields
    renamed = [
        {**c, "id": fresh.setdefault(c["id"], new_call_id())}
        if isinstance(c, dict) and isinstance(c.get("id"), str)
        else c
        for c in calls
    ]
    return {**fields, "tool_calls": renamed}
