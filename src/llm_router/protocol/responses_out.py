"""OpenAI's Responses API on the way out: a chat completion as a `Response` object
(`from_chat`), and a chat stream's chunks as the Responses stream's typed events
(`ResponseEvents`). The chat path made the answer; this only reshapes it."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from .chat_stream import ChatStreamEvents
from .responses import ChatCompletion, RenderedChunk
from .responses_api import ResponsesRequest

__all__ = ["ResponseEvents", "from_chat", "response_id"]


def response_id(prefix: str) -> str:
    """OpenAI's ids here: `resp_...`, `msg_...`, `fc_...`. From `secrets`, not `random`: an
    output item's id is what a later `item_reference` names it by (responses_items.py), and
    without API keys nothing else tells one caller's items from another's; the Mersenne
    Twister's next ids can be worked out from enough earlier ones."""
    return f"{prefix}_{secrets.token_hex(12)}"


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    """The response's status and `incomplete_details` for a chat `finish_reason`."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


def response_object(
    req: ResponsesRequest,
    rid: str,
    created_at: int,
    model: str,
    output: list[dict[str, Any]],
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """The `Response` object, with the request's settings echoed as OpenAI's does.
    `status` overrides the one `finish` gives (`in_progress` while streaming)."""
    done, incomplete = _status(finish)
    status = status or done
    text = "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": incomplete if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": output,
        "output_text": text,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": None,
        "store": False,  # the response is not kept (`previous_response_id` is refused)
        "temperature": req.temperature,
        "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.echoed_tools(),
        "top_p": req.top_p,
        "truncation": "disabled",
        "metadata": req.metadata or {},
    } | {k: v for k, v in (("usage", usage), ("user", req.user)) if v is not None}


def _message_item(mid: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": mid,
        "status": status,
        "role": "assistant",
        "content": [_text_part(text)] if status == "completed" or text else [],
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": response_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(req: ResponsesRequest, chat: ChatCompletion) -> dict[str, Any]:
    """The `Response` of a (non-streamed) chat completion: its text as a `message` item,
    each tool call as a `function_call` item."""
    choice = chat.choices[0]
    message = choice.message
    output: list[dict[str, Any]] = []
    if message.content:
        output.append(_message_item(response_id("msg"), message.content, "completed"))
    for call in (message.model_extra or {}).get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            _call_item(call["id"], function["name"], function.get("arguments", ""), "completed")
        )
    finish = choice.finish_reason
    return response_object(
        req,
        response_id("resp"),
        chat.created,
        chat.model,
        output,
        finish,
        _usage(chat.usage.model_dump()),
    )


class ResponseEvents(ChatStreamEvents):
    """Turns one chat stream's chunks (as JSON objects) into the Responses stream's events,
    each numbered by `sequence_number`: `start()` first, `chunk()` for each chunk, `finish()`
    last (or `error()` when the stream failed)."""

    def __init__(self, req: ResponsesRequest) -> None:
        super().__init__(req.model)
        self.req = req
        self.id = response_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items so far, each as it stands
        self.open: dict[str, Any] | None = None  # the item being written
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item

    def _event(self, kind: str, **fields: Any) -> RenderedChunk:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return RenderedChunk(json.dumps(event, ensure_ascii=False))

    def _response(self, status: str | None = None) -> dict[str, Any]:
        output = [self._final(item) for item in self.output]
        return response_object(
            self.req,
            self.id,
            self.created_at,
            self.model,
            output,
            self.finish,
            _usage(self.usage),
            status,
        )

    @staticmethod
    def _final(item: dict[str, Any]) -> dict[str, Any]:
        if item["type"] == "message":
            return _message_item(item["id"], item["text"], item["status"])
        return {k: v for k, v in item.items() if k != "index"}

    def start(self, model: str) -> list[RenderedChunk]:
        self.model = model
        created = self._response("in_progress")
        return [
            self._event("response.created", response=created),
            self._event("response.in_progress", response=created),
        ]

    def _text(self, text: str) -> list[RenderedChunk]:
        events: list[RenderedChunk] = []
        item = self.open
        if item is None or item["type"] != "message":
            events += self._close()
            item = {
                "type": "message",
                "id": response_id("msg"),
                "text": "",
                "status": "in_progress",
            }
            events += self._open(item, _message_item(item["id"], "", "in_progress"))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    content_index=0,
                    part=_text_part(""),
                )
            )
        item["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, call: dict[str, Any]) -> list[RenderedChunk]:
        events: list[RenderedChunk] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            events += self._close()
            item = _call_item(call.get("id") or response_id("call"), "", "", "in_progress")
            item["name"] = function.get("name") or ""
            self.calls[index] = item
            events += self._open(item, {**item})
        fragment = function.get("arguments") or ""
        if fragment:
            item["arguments"] += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.output.index(item),
                    delta=fragment,
                )
            )
        return events

    def _open(self, item: dict[str, Any], shown: dict[str, Any]) -> list[RenderedChunk]:
        self.output.append(item)
        self.open = item
        return [
            self._event("response.output_item.added", output_index=len(self.output) - 1, item=shown)
        ]

    def _close(self) -> list[RenderedChunk]:
        """The `.done` events of the item being written, if any."""
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = "completed"
        events = []
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events.append(
                self._event("response.output_text.done", **where, text=item["text"], logprobs=[])
            )
            events.append(
                self._event("response.content_part.done", **where, part=_text_part(item["text"]))
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        events.append(
            self._event("response.output_item.done", output_index=index, item=self._final(item))
        )
        return events

    def items(self) -> list[dict[str, Any]]:
        """The output items as the final response holds them."""
        return [self._final(item) for item in self.output]

    def done(self) -> list[RenderedChunk]:
        """The last events: the open item closed, then the whole response."""
        events = self._close()
        response = self._response()
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=response)]

    def error(self, error: dict[str, Any]) -> RenderedChunk:
        """An `error` event: `error` is OpenAI's error object (message, type, param, code)."""
        return self._event(
            "error",
            code=error.get("code") or error.get("type"),
            message=error.get("message", ""),
            param=error.get("param"),
        )
