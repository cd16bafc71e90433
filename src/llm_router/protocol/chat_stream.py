"""What the stream events of the APIs served as a translation onto chat (OpenAI's Responses,
responses_out.ResponseEvents; Anthropic's Messages, anthropic_out.MessageEvents) are made from:
a chat stream's chunks, as JSON objects, read into their text, tool call fragments, finish
reason and usage. Each API says what events those make (`_text`, `_call`, `_finished`), and
how its stream starts, ends and fails (`start`, `done`, and its own `error`)."""

from __future__ import annotations

from typing import Any

from .responses import RenderedChunk

__all__ = ["ChatStreamEvents"]


class ChatStreamEvents:
    """`start(model)` first, `chunk(data)` for each chat chunk, `done()` last."""

    def __init__(self, model: str) -> None:
        self.model = model  # the one asked, until the stream's first chunk names its own
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def start(self, model: str) -> list[RenderedChunk]:
        raise NotImplementedError

    def done(self) -> list[RenderedChunk]:
        raise NotImplementedError

    def chunk(self, data: dict[str, Any]) -> list[RenderedChunk]:
        events: list[RenderedChunk] = []
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
            if choice.get("finish_reason"):
                self._finished(choice)
        return events

    def _text(self, text: str) -> list[RenderedChunk]:
        raise NotImplementedError

    def _call(self, call: dict[str, Any]) -> list[RenderedChunk]:
        raise NotImplementedError

    def _finished(self, choice: dict[str, Any]) -> None:
        self.finish = choice["finish_reason"]
