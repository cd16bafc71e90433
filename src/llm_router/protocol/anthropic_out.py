"""Anthropic's Messages API on the way out: a chat completion as a `Message` (`from_chat`), a
chat stream's chunks as the Messages stream's named events (`MessageEvents`), and an error as
Anthropic's error object (`error_body`). The chat path made the answer; this only reshapes it."""

from __future__ import annotations

import json
from typing import Any

from .anthropic_api import MessagesRequest
from .chat_stream import ChatStreamEvents
from .responses import ChatCompletion, RenderedChunk
from .responses_out import response_id

__all__ = ["MessageEvents", "error_body", "from_chat"]

# Anthropic's error `type` for an HTTP status (anything else from 500 up: `api_error`)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error response body for an error of this status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _stop_reason(finish: str | None) -> str:
    """Anthropic's `stop_reason` for a chat `finish_reason` that no stop sequence ended."""
    if finish == "length":
        return "max_tokens"
    if finish == "tool_calls":
        return "tool_use"
    return "end_turn"


def _stopped_by(req: MessagesRequest, said: Any) -> str | None:
    """The stop sequence that ended the answer: the chat choice's `stopped_by` (a local
    engine's; a remote target does not say), when it is one of the request's (a model's
    own configured stop strings end a turn)."""
    return said if isinstance(said, str) and said in (req.stop_sequences or ()) else None


def _input(arguments: str) -> Any:
    """A tool call's arguments (JSON text) as `tool_use.input` (an object); text that is not
    a JSON object is kept as it came, under `arguments`, rather than lost."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _message(model: str, content: list[dict[str, Any]], mid: str | None = None) -> dict[str, Any]:
    return {
        "id": mid or response_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }


def from_chat(req: MessagesRequest, chat: ChatCompletion) -> dict[str, Any]:
    """The `Message` of a (non-streamed) chat completion: its text as a `text` block, each
    tool call as a `tool_use` block."""
    choice = chat.choices[0]
    message = choice.message
    content: list[dict[str, Any]] = []
    if message.content:
        content.append({"type": "text", "text": message.content})
    for call in (message.model_extra or {}).get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _input(function.get("arguments", "")),
            }
        )
    answer = _message(chat.model, content)
    stop = _stopped_by(req, choice.stopped_by)
    answer["stop_reason"] = "stop_sequence" if stop else _stop_reason(choice.finish_reason)
    answer["stop_sequence"] = stop
    answer["usage"] = {
        "input_tokens": chat.usage.prompt_tokens,
        "output_tokens": chat.usage.completion_tokens,
    }
    return answer


class MessageEvents(ChatStreamEvents):
    """Turns one chat stream's chunks (as JSON objects) into the Messages stream's events,
    each a RenderedChunk named by its `event`: `start()` first, `chunk()` for each chunk,
    `done()` last (or `error()` when the stream failed)."""

    def __init__(self, req: MessagesRequest) -> None:
        super().__init__(req.model)
        self.req = req
        self.id = response_id("msg")
        self.index = -1  # of the content block being written (-1: none yet)
        self.open: str | None = None  # its kind: "text", or "tool_use"
        self.calls: dict[int, int] = {}  # chat tool call index -> its block's index
        self.stop: str | None = None

    @staticmethod
    def _event(kind: str, **fields: Any) -> RenderedChunk:
        return RenderedChunk(json.dumps({"type": kind, **fields}, ensure_ascii=False), kind)

    def start(self, model: str) -> list[RenderedChunk]:
        """`message_start` (its usage zero: the prompt's count comes with the chat stream's
        last chunk, so `message_delta` carries both counts) and a `ping`, as Anthropic's."""
        message = _message(model, [], self.id)
        return [self._event("message_start", message=message), self._event("ping")]

    def _finished(self, choice: dict[str, Any]) -> None:
        super()._finished(choice)
        self.stop = _stopped_by(self.req, choice.get("stopped_by"))

    def _text(self, text: str) -> list[RenderedChunk]:
        events: list[RenderedChunk] = []
        if self.open != "text":
            events += self._open("text", {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*events, self._event("content_block_delta", index=self.index, delta=delta)]

    def _call(self, call: dict[str, Any]) -> list[RenderedChunk]:
        events: list[RenderedChunk] = []
        function = call.get("function") or {}
        position = call.get("index", 0)
        if position not in self.calls:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or response_id("toolu"),
                "name": function.get("name") or "",
                "input": {},
            }
            events += self._open("tool_use", block)
            self.calls[position] = self.index
        fragment = function.get("arguments") or ""
        if fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            index = self.calls[position]
            events.append(self._event("content_block_delta", index=index, delta=delta))
        return events

    def _open(self, kind: str, block: dict[str, Any]) -> list[RenderedChunk]:
        events = self._close()
        self.index += 1
        self.open = kind
        events.append(self._event("content_block_start", index=self.index, content_block=block))
        return events

    def _close(self) -> list[RenderedChunk]:
        if self.open is None:
            return []
        self.open = None
        return [self._event("content_block_stop", index=self.index)]

    def done(self) -> list[RenderedChunk]:
        """The last events: the open block closed, the stop reason and usage, the end."""
        reason = "stop_sequence" if self.stop else _stop_reason(self.finish)
        counted = self.usage or {}
        usage = {
            "input_tokens": counted.get("prompt_tokens", 0),
            "output_tokens": counted.get("completion_tokens", 0),
        }
        return [
            *self._close(),
            self._event(
                "message_delta",
                delta={"stop_reason": reason, "stop_sequence": self.stop},
                usage=usage,
            ),
            self._event("message_stop"),
        ]

    def error(self, status: int, message: str) -> RenderedChunk:
        """An `error` event, as Anthropic sends one mid-stream."""
        body = error_body(status, message)
        return self._event("error", error=body["error"])
