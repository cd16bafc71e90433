"""Anthropic's Messages API (`POST /v1/messages`) on the way in: the request, validated, and
turned into the chat request `/v1/chat/completions` would get (`to_chat()`), so it is routed,
limited, cached, accounted and traced as a chat request is; nothing generates it separately.
`/v1/messages/count_tokens` takes the same body without `max_tokens` (`CountTokensRequest`).

Text, `tool_use` and `tool_result` blocks translate; images and documents are a 400 (the
models here read text); `output_config.format` is chat's `response_format` (its `effort` is
ignored). `thinking` and `metadata` are accepted and ignored (no model here thinks in
Anthropic's blocks; nothing is billed per user); unknown fields are passed along as on chat
(`temperature`, `top_p`, `top_k`, which the SDK now sends only in `extra_body`, and
llama-server's samplers), Anthropic's own that have no chat counterpart (`service_tier`,
`cache_control`, `container`...) are dropped."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..errors import BadRequest, Unsupported
from .fields import EXAMPLE_MODEL, MAX_MODEL_NAME, MAX_STOPS, MAX_TOKENS, one_answer
from .numbers import Float, Int

__all__ = ["CountTokensRequest", "MessagesRequest"]

# Anthropic fields with no chat counterpart: accepted (its clients send them), not passed on.
_IGNORED = frozenset(
    {
        "cache_control",
        "container",
        "context_management",
        "diagnostics",
        "inference_geo",
        "mcp_servers",
        "metadata",
        "service_tier",
        "speed",
        "thinking",
        "user_profile_id",
        "workspace_id",
    }
)
_UNREADABLE = ("image", "document", "search_result", "container_upload")  # not text
_SKIPPED = ("thinking", "redacted_thinking")  # an earlier turn's thinking given back


class CountTokensRequest(BaseModel):
    """The fields of Anthropic's `MessageCountTokensParams` that mean something here."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME, examples=[EXAMPLE_MODEL])
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None

    def to_chat(self) -> dict[str, Any]:
        """The body of the equivalent chat request; raises BadRequest (or Unsupported)
        naming the field of this request that cannot be translated."""
        extra = {k: v for k, v in (self.model_extra or {}).items() if k not in _IGNORED}
        one_answer(extra)
        chat: dict[str, Any] = {**extra, "model": self.model, "messages": self._messages()}
        if self.tools:
            chat["tools"] = [_tool(i, t) for i, t in enumerate(self.tools)]
        if self.tool_choice is not None:
            choice, parallel = _tool_choice(self.tool_choice)
            chat["tool_choice"] = choice
            if parallel is False:
                chat["parallel_tool_calls"] = False
        fmt = (self.output_config or {}).get("format")  # `effort` means nothing here
        if fmt is not None:
            chat["response_format"] = _format(fmt)
        return chat

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system
            if isinstance(system, list):
                system = _texts("system", system)
            messages.append({"role": "system", "content": system})
        for i, message in enumerate(self.messages):
            messages += _message(i, message)
        return messages


class MessagesRequest(CountTokensRequest):
    """The fields of Anthropic's `MessageCreateParams` that mean something here."""

    max_tokens: Int = Field(ge=1, le=MAX_TOKENS)
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    temperature: Float | None = Field(None, ge=0, le=1)
    top_p: Float | None = Field(None, ge=0, le=1)
    top_k: Int | None = Field(None, ge=0)
    stream: StrictBool | None = None
    metadata: dict[str, Any] | None = None

    def to_chat(self) -> dict[str, Any]:
        chat = super().to_chat()
        chat["max_tokens"] = self.max_tokens
        if self.stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}  # message_delta's usage
        if self.stop_sequences:
            chat["stop"] = self.stop_sequences
        for field in ("temperature", "top_p", "top_k"):
            value = getattr(self, field)
            if value is not None:
                chat[field] = value
        return chat


def _message(i: int, message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: a user turn's `tool_result` blocks become
    `tool` messages (in their place among its text), an assistant's `tool_use` blocks its
    `tool_calls`."""
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(
            f"messages[{i}]: `role` must be 'user' or 'assistant' (the system prompt is `system`)",
            param=f"messages[{i}].role",
        )
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(
            f"messages[{i}]: `content` must be a string or a list of content blocks",
            param=f"messages[{i}].content",
        )
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == "assistant":
            calls.append(_call(where, block))
        elif kind == "tool_result" and role == "user":
            if texts:  # the text before it, in its place
                out.append({"role": "user", "content": "".join(texts)})
                texts = []
            out.append(_result(where, block))
        elif kind in _SKIPPED:
            continue
        else:
            _refuse_block(where, kind, role)
    if role == "assistant":
        turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            turn["tool_calls"] = calls
        return [turn]
    if texts or not out:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _refuse_block(where: str, kind: Any, role: str) -> None:
    if kind in _UNREADABLE:
        raise Unsupported(
            f"{where} is an '{kind}' block: image and document input is not supported by this "
            "server (its models read text)",
            param=f"{where}.type",
        )
    if kind in ("tool_use", "tool_result"):
        raise BadRequest(
            f"{where}: a '{kind}' block cannot be in a '{role}' message",
            param=f"{where}.type",
        )
    raise BadRequest(
        f"{where} is not a 'text', 'tool_use' or 'tool_result' block (type {json.dumps(kind)})",
        param=where,
    )


def _call(where: str, block: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise BadRequest(
            f"{where}: a 'tool_use' block needs `id` and `name` (strings)", param=where
        )
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _result(where: str, block: dict[str, Any]) -> dict[str, Any]:
    """A `tool_result` as a `tool` message; an error's text is marked so, as the model has
    no other way to tell it from a result."""
    if not isinstance(block.get("tool_use_id"), str):
        raise BadRequest(
            f"{where}: a 'tool_result' block needs `tool_use_id` (a string)",
            param=f"{where}.tool_use_id",
        )
    content = block.get("content", "")
    if isinstance(content, list):
        content = _texts(f"{where}.content", content)
    if not isinstance(content, str):
        raise BadRequest(
            f"{where}: `content` must be a string or a list of text blocks",
            param=f"{where}.content",
        )
    if block.get("is_error") is True:
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _texts(where: str, blocks: list[Any]) -> str:
    texts = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in _UNREADABLE:
            _refuse_block(f"{where}[{j}]", kind, "user")
        else:
            raise BadRequest(
                f"{where}[{j}] is not a text block (`{{type: 'text', text: ...}}`)",
                param=f"{where}[{j}]",
            )
    return "".join(texts)


def _tool(i: int, tool: dict[str, Any]) -> dict[str, Any]:
    """A client tool (`name`, `description`, `input_schema`) as a chat function tool."""
    kind = tool.get("type", "custom")
    if kind != "custom":
        raise Unsupported(
            f"tools[{i}] is a '{kind}' tool: only client tools (`name`, `description`, "
            "`input_schema`) are supported here",
            param=f"tools[{i}].type",
        )
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        raise BadRequest(
            f"tools[{i}] needs `name` (a string) and `input_schema` (a JSON schema)",
            param=f"tools[{i}]",
        )
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _format(fmt: Any) -> dict[str, Any]:
    """`output_config.format` (structured output) as chat's `response_format`."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise BadRequest(
            "`output_config.format.type` must be 'json_schema'", param="output_config.format.type"
        )
    if not isinstance(fmt.get("schema"), dict):
        raise BadRequest(
            "`output_config.format` needs `schema`, a JSON schema (an object)",
            param="output_config.format.schema",
        )
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _tool_choice(choice: dict[str, Any]) -> tuple[str | dict[str, Any], bool | None]:
    """Chat's `tool_choice` and `parallel_tool_calls` (None: unsaid) for Anthropic's."""
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise BadRequest(
        "`tool_choice` must be {'type': 'auto'}, {'type': 'any'}, {'type': 'none'} or "
        "{'type': 'tool', 'name': ...}",
        param="tool_choice",
    )
