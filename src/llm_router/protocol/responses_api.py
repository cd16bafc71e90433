"""OpenAI's Responses API (`POST /v1/responses`) on the way in: the request, validated, and
turned into the chat request `/v1/chat/completions` would get (`to_chat()`), so it is routed,
limited, cached, accounted and traced as a chat request is; nothing generates it separately.

Responses are not stored: `previous_response_id` is a 400 rather than a conversation silently
forgotten, as are a `conversation` and a stored `prompt` named (their history, instructions).
Their output items are (protocol/responses_items.py), so an `item_reference` input is the
item it names, as the caller gives it (`to_chat(referenced)`); one not kept is a 400.
Unknown fields are accepted and, as on chat, passed along (llama-server's samplers such as
`top_k` work here too); the Responses API's own fields that have no chat counterpart
(`reasoning`, `include`, `truncation`...) are ignored."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..errors import BadRequest, Unsupported
from .fields import EXAMPLE_MODEL, MAX_MODEL_NAME, MAX_TOKENS, one_answer
from .numbers import Float, Int

__all__ = ["ResponsesRequest"]

# Responses fields with no chat counterpart: accepted (clients send them), not passed on.
_IGNORED = frozenset(
    {
        "background",
        "conversation",  # null only: one that names a conversation is refused (`to_chat`)
        "include",
        "max_tool_calls",
        "prompt",  # null only, as `conversation`
        "prompt_cache_key",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "stream_options",
        "top_logprobs",
        "truncation",
    }
)
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
_TOOL_CHOICES = ("auto", "none", "required")


class ResponsesRequest(BaseModel):
    """The fields of OpenAI's `CreateResponse` that mean something here."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, examples=[EXAMPLE_MODEL])
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    temperature: Float | None = Field(None, ge=0, le=2)
    top_p: Float | None = Field(None, gt=0, le=1)
    max_output_tokens: Int | None = Field(None, ge=1, le=MAX_TOKENS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)
    store: StrictBool | None = None
    stream: StrictBool | None = None
    previous_response_id: str | None = None

    def to_chat(
        self, referenced: Callable[[Any], dict[str, Any] | None] = lambda _: None
    ) -> dict[str, Any]:
        """The body of the equivalent chat request; `referenced` gives the kept output item
        an `item_reference` names (None: not kept). Raises BadRequest naming the field of
        this request that cannot be translated."""
        if self.previous_response_id is not None:
            raise BadRequest(
                "`previous_response_id` is not supported: responses are not stored here; "
                "send the whole conversation in `input`",
                param="previous_response_id",
            )
        given = self.model_extra or {}
        for stored, what in (("conversation", "conversations"), ("prompt", "prompts")):
            if given.get(stored) is not None:  # its history or instructions: not here to use
                raise BadRequest(
                    f"`{stored}` is not supported: {what} are not stored here; send what it "
                    "holds in `input` and `instructions`",
                    param=stored,
                )
        extra = {k: v for k, v in given.items() if k not in _IGNORED}
        one_answer(extra)
        chat: dict[str, Any] = {
            **extra,
            "model": self.model,
            "messages": self._messages(referenced),
        }
        if self.stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}  # the final event's usage
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("max_output_tokens", "max_tokens"),
            ("parallel_tool_calls", "parallel_tool_calls"),
            ("user", "user"),
        ):
            value = getattr(self, ours)
            if value is not None:
                chat[theirs] = value
        if self.tools:
            chat["tools"] = [_tool(i, t) for i, t in enumerate(self.tools)]
        if self.tool_choice is not None:
            chat["tool_choice"] = _tool_choice(self.tool_choice)
        response_format = _format((self.text or {}).get("format"))
        if response_format is not None:
            chat["response_format"] = response_format
        return chat

    def echoed_tools(self) -> list[dict[str, Any]]:
        """The tools as the answer echoes them (OpenAI's `FunctionTool`: every field)."""
        return [
            {
                "type": "function",
                "name": t.get("name"),
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict", True),
            }
            for t in self.tools or ()
        ]

    def _messages(self, referenced: Callable[[Any], dict[str, Any] | None]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
            return messages
        for i, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "item_reference":
                item = _referenced(i, item, referenced)
                kind = item["type"]
            if kind == "message":
                messages.append(_message(i, item))
            elif kind == "function_call":
                call = {
                    "id": _text(item, "call_id", i),
                    "type": "function",
                    "function": {
                        "name": _text(item, "name", i),
                        "arguments": _text(item, "arguments", i),
                    },
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":  # the same turn's calls
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                if isinstance(output, list):
                    output = _parts_text(i, output)
                if not isinstance(output, str):
                    raise BadRequest(
                        f"input[{i}]: a 'function_call_output' needs `output` (a string)",
                        param=f"input[{i}].output",
                    )
                messages.append(
                    {"role": "tool", "tool_call_id": _text(item, "call_id", i), "content": output}
                )
            elif kind == "reasoning":
                continue  # a reasoning model's summary given back: nothing for the model here
            else:
                raise Unsupported(
                    f"input[{i}] is a '{kind}' item: only messages, 'function_call' and "
                    "'function_call_output' items are supported here",
                    param=f"input[{i}].type",
                )
        return messages


def _referenced(
    i: int, item: dict[str, Any], referenced: Callable[[Any], dict[str, Any] | None]
) -> dict[str, Any]:
    found = referenced(item.get("id"))
    if found is None:
        raise BadRequest(
            f"input[{i}] is an 'item_reference' to {json.dumps(item.get('id'))}, an output item "
            "this server does not hold (it keeps the most recent ones in memory, for the API "
            "key they were answered to, not when asked with `store: false`): send the item "
            "itself",
            param=f"input[{i}].id",
        )
    return found


def _text(item: dict[str, Any], field: str, i: int) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise BadRequest(
            f"input[{i}]: a '{item.get('type')}' item needs `{field}` (a string)",
            param=f"input[{i}].{field}",
        )
    return value


def _message(i: int, item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(
            f"input[{i}]: `role` must be one of {', '.join(_ROLES)}", param=f"input[{i}].role"
        )
    content = item.get("content")
    if isinstance(content, list):
        content = _parts_text(i, content)
    if not isinstance(content, str):
        raise BadRequest(
            f"input[{i}]: a message needs `content`, a string or a list of text parts",
            param=f"input[{i}].content",
        )
    return {"role": role, "content": content}


def _parts_text(i: int, parts: list[Any]) -> str:
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise Unsupported(
                f"input[{i}].content[{j}] is an '{kind}' part: image, audio and file input is "
                "not supported by this server (its models read text)",
                param=f"input[{i}].content[{j}].type",
            )
        else:
            raise BadRequest(
                f"input[{i}].content[{j}] is not a text part (`{{type: 'input_text', text: ...}}`)",
                param=f"input[{i}].content[{j}]",
            )
    return "".join(texts)


def _tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    """A Responses function tool (flat) as a chat tool (nested under `function`)."""
    kind = tool.get("type")
    if kind != "function":
        raise Unsupported(
            f"tools[{i}] is a '{kind}' tool: only function tools are supported here",
            param=f"tools[{i}].type",
        )
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    if function.get("strict") is None:
        function.pop("strict", None)
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise BadRequest(
        "`tool_choice` must be 'auto', 'none', 'required' or "
        "{'type': 'function', 'name': ...} here",
        param="tool_choice",
    )


def _format(fmt: Any) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`; None for plain text."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest(
                "`text.format` of type 'json_schema' needs `schema`, a JSON schema (an object)",
                param="text.format.schema",
            )
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise BadRequest(
        "`text.format.type` must be 'text', 'json_object' or 'json_schema'",
        param="text.format.type",
    )
