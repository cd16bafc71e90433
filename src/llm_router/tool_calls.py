"""Tool calling on local models, whatever their chat template knows: the request's tools are
written into the system message and its tool history into plain turns (as llama.cpp's Jinja
engine polyfills templates without tools), and the answer is constrained to one JSON shape,

    {"tool_calls": [{"name": "...", "arguments": {...}}, ...]}   or   {"response": "..."}

(llama.cpp's "generic" format): `required` and a named function allow only the first, `auto`
both, and each call's arguments must validate against its function's `parameters`. `ToolParser`
turns that text, as it streams, into OpenAI's content and `tool_calls` deltas.

Pure: no engine, no I/O. The local target applies it (`prepare`), so every engine gets it and
remote targets still receive the client's own `tools`."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import pydantic_core

from .errors import BadRequest
from .types import (
    ChatMessage,
    Constraint,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    MessageFields,
    TextDelta,
    Tools,
)

__all__ = ["ToolParser", "as_function_call", "finish_reason_for", "prepare", "render_history"]

INSTRUCTION = (
    "You can call any of the following tools to satisfy the user's requests: {tools}\n\n"
    "Respond in JSON format, either with `tool_calls` (a request to call tools) or with "
    "`response` (a reply to the user's request). Example of a tool call:\n"
    '{{"tool_calls": [{{"name": "tool_name", "arguments": {{"arg1": "value"}}}}]}}\n'
    "Example of a reply:\n"
    '{{"response": "Hello! How can I help you today?"}}'
)
INSTRUCTION_REQUIRED = (
    "You can call the following tools to satisfy the user's requests: {tools}\n\n"
    "Respond in JSON format with `tool_calls` (a request to call tools). Example:\n"
    '{{"tool_calls": [{{"name": "tool_name", "arguments": {{"arg1": "value"}}}}]}}'
)
CALLS_PREFIX = '{"tool_calls": ['
RESPONSE_PREFIX = '{"response": '


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


def prepare(request: GenerationRequest) -> GenerationRequest:
    """The request as a model without tool support sees it: tools in the system message, the
    tool history as text, the answer's shape as a JSON-schema constraint. Requests without
    tools or tool history come back as they are."""
    messages = request.messages
    if messages is None:
        return request
    tools = request.tools
    if tools is None or tools.choice == "none" or not tools.functions:
        if any(m.tool_calls or m.role == "tool" for m in messages):
            return replace(request, messages=render_history(messages), tools=None)
        return replace(request, tools=None) if tools is not None else request
    functions = tools.functions
    if tools.choice not in ("auto", "required"):
        functions = tuple(f for f in functions if f.name == tools.choice)
        if not functions:
            raise BadRequest(
                f"tool_choice names function '{tools.choice}', which is not in `tools`",
                param="tool_choice",
            )
    listed = json.dumps([_tool_json(f) for f in functions], indent=2)
    text = (INSTRUCTION if tools.choice == "auto" else INSTRUCTION_REQUIRED).format(tools=listed)
    history = list(render_history(messages))
    if history and history[0].role == "system":
        history[0] = ChatMessage("system", f"{history[0].content}\n\n{text}")
    else:
        history.insert(0, ChatMessage("system", text))
    schema = answer_schema(tools, functions, request.constraint)
    constraint = Constraint("json", json.dumps(schema), strict=all(f.strict for f in functions))
    constraint = replace(constraint, param="tools")
    return replace(request, messages=tuple(history), tools=None, constraint=constraint)


def _tool_json(f: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name}
    if f.description:
        out["description"] = f.description
    out["parameters"] = json.loads(f.parameters)
    return out


def answer_schema(
    tools: Tools, functions: tuple[Any, ...], response: Constraint | None
) -> dict[str, Any]:
    """The JSON schema of the answer: calls (at least one; one alone unless `parallel`), and
    for `auto` a response too (a string, or the `response_format` schema when one is given)."""
    calls: dict[str, Any] = {
        "type": "array",
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        "arguments": json.loads(f.parameters),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for f in functions
            ]
        },
        "minItems": 1,
    }
    if not tools.parallel:
        calls["maxItems"] = 1
    call_shape = _object("tool_calls", calls)
    if tools.choice != "auto":
        return call_shape
    reply: dict[str, Any] = {"type": "string"}
    if response is not None and response.kind == "json":
        reply = json.loads(response.source)
    return {"anyOf": [call_shape, _object("response", reply)]}


def _object(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {key: value},
        "required": [key],
        "additionalProperties": False,
    }


def render_history(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """Earlier calls and their results as plain turns: an assistant's calls as the JSON it
    would have written (the constraint's shape, so no call `id`: a model shown one in a call
    copies it into its next call's arguments), a `tool` message as a user turn holding the
    result and the name of the tool that gave it (results follow their calls' order)."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out = []
    for m in messages:
        if m.tool_calls:
            calls = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in m.tool_calls]
            text = json.dumps({"tool_calls": calls})
            out.append(ChatMessage("assistant", f"{m.content}\n{text}" if m.content else text))
        elif m.role == "tool":
            result = {"tool": names.get(m.tool_call_id or "", ""), "content": m.content}
            out.append(ChatMessage("user", json.dumps({"tool_response": result})))
        else:
            out.append(m)
    return tuple(out)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a client's own malformed arguments stay as it wrote them


@dataclass
class _Call:
    index: int
    id: str
    name: str = ""
    start: int = -1  # offset of the arguments' value in the text
    end: int = -1  # offset just past it, once complete
    sent: int = 0  # argument characters sent so far


@dataclass
class ToolParser:
    """Reads the constrained answer as it grows. `feed` returns the events to pass on: content
    as TextDelta, and, when `stream`, each call's first delta (index, id, name) then argument
    fragments; `finish` returns the rest (the whole `tool_calls` when not streaming).
    Text that is not of the shape (a request without the constraint) passes as content."""

    stream: bool
    text: str = ""
    calls: list[_Call] = field(default_factory=list)
    _mode: str = ""  # "", "calls", "response", "text"
    _sent: int = 0  # content characters (response mode) sent
    _pos: int = 0  # scan position in calls mode

    def feed(self, piece: str) -> list[GenerationEvent]:
        self.text += piece
        if not self._mode:
            if self.text.startswith(CALLS_PREFIX):
                self._mode, self._pos = "calls", len(CALLS_PREFIX)
            elif self.text.startswith(RESPONSE_PREFIX):
                self._mode = "response"
            elif not (CALLS_PREFIX.startswith(self.text) or RESPONSE_PREFIX.startswith(self.text)):
                self._mode = "text"
                return [TextDelta(self.text)]
            else:
                return []
        if self._mode == "text":
            return [TextDelta(piece)]
        if self._mode == "response":
            return self._response()
        return self._scan()

    @property
    def made_calls(self) -> bool:
        return bool(self.calls)

    def finish(self) -> list[GenerationEvent]:
        """At the end of the text: anything held back, and the calls when not streaming."""
        # Still undecided (`max_tokens` cut the answer inside '{"tool_calls": [' or
        # '{"response": '): that is the constraint's wrapper, not content; nothing to pass on.
        events: list[GenerationEvent] = []
        if self.stream or not self.calls:
            return events
        calls = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": self._arguments(c)},
            }
            for c in self.calls
        ]
        return [*events, MessageFields({"tool_calls": calls})]

    def _response(self) -> list[GenerationEvent]:
        raw = self.text[len(RESPONSE_PREFIX) :]
        if raw.startswith('"'):
            try:
                value = pydantic_core.from_json(raw, allow_partial="trailing-strings")
            except ValueError:
                return []
            value = value if isinstance(value, str) else ""
        else:  # a structured response (`response_format` with tools): its JSON text
            value = raw[:-1] if _complete_object(self.text) else raw
        new = value[self._sent :]
        self._sent = len(value)
        return [TextDelta(new)] if new else []

    def _arguments(self, c: _Call) -> str:
        if c.start < 0:
            return ""
        return self.text[c.start : c.end if c.end >= 0 else len(self.text)]

    def _scan(self) -> list[GenerationEvent]:
        """Advance through `{"name": "N", "arguments": ARGS}` items, ", "-separated."""
        events: list[GenerationEvent] = []
        text = self.text
        while True:
            call = self.calls[-1] if self.calls else None
            if call is None or call.end >= 0:
                rest = text[self._pos :]
                head = '{"name": "'
                if rest.startswith(", "):
                    self._pos += 2
                    continue
                if not rest.startswith(head):
                    break
                close = rest.find('"', len(head))
                after = '", "arguments": '
                if close < 0 or len(rest) < close + len(after):
                    break
                name = json.loads(rest[len(head) - 1 : close + 1])
                call = _Call(len(self.calls), new_call_id(), name)
                call.start = self._pos + close + len(after)
                self.calls.append(call)
                self._pos = call.start
                if self.stream:
                    events.append(_delta(call, {"name": name, "arguments": ""}, first=True))
                continue
            end = _value_end(text, call.start)
            upto = end if end >= 0 else len(text)
            if upto - call.start > call.sent:
                fragment = text[call.start + call.sent : upto]
                call.sent = upto - call.start
                if self.stream:
                    events.append(_delta(call, {"arguments": fragment}))
            if end < 0:
                break
            call.end = end
            self._pos = end + 1  # past the call object's "}"
        return events


def _delta(call: _Call, function: dict[str, str], first: bool = False) -> MessageFields:
    item: dict[str, Any] = {"index": call.index}
    if first:
        item.update(id=call.id, type="function")
    item["function"] = function
    return MessageFields({"tool_calls": [item]})


def _value_end(text: str, start: int) -> int:
    """Offset just past the JSON value starting at `start` (an object, array, string or
    scalar), or -1 while it is incomplete."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return i + 1
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            if depth == 0:
                return i  # a scalar ended by its container
            depth -= 1
            if depth == 0:
                return i + 1
        elif depth == 0 and ch == ",":
            return i
    return -1


def _complete_object(text: str) -> bool:
    return _value_end(text, 0) == len(text)


def finish_reason_for(parser: ToolParser, reason: FinishReason) -> FinishReason:
    """A generation that made calls and ended on its own ended for them."""
    return "tool_calls" if parser.made_calls and reason == "stop" else reason


def as_function_call(event: GenerationEvent) -> GenerationEvent:
    """An event of an answer to OpenAI's deprecated `functions`, as OpenAI gave it: the (one)
    call as `function_call` ({"name", "arguments"}; streamed, the name first, then argument
    fragments) instead of `tool_calls`, and `finish_reason` "function_call". Other events,
    and an upstream's own `function_call`, pass as they are."""
    if isinstance(event, Finished):
        if event.finish_reason == "tool_calls":
            return Finished("function_call", event.usage)
        return event
    if not isinstance(event, MessageFields) or "tool_calls" not in event.fields:
        return event
    fields = dict(event.fields)
    calls = fields.pop("tool_calls") or []
    function = calls[0].get("function") if calls and isinstance(calls[0], dict) else None
    if isinstance(function, dict) and calls[0].get("index", 0) == 0:
        fields["function_call"] = {k: v for k, v in function.items() if k in ("name", "arguments")}
    return MessageFields(fields)
