"""Cache keys: the canonical request plus the identity of what serves it.

The canonical request is the wire request with its defaults filled in (`model_dump` of the
validated model, `None` dropped, so an unset field and its explicit default are one key),
sorted keys, and the fields that do not change the answer left out (`stream`, `user`,
lifecycle options...). `stream` stays in when tools are offered: a streamed tool call comes
as deltas, a whole one as one message. The model name is replaced by the identity of what
serves it (identity.py), so aliases share answers and a changed model file shares none."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from ..errors import BadRequest

__all__ = [
    "NOT_THE_ANSWER",
    "cache_flag",
    "canonical",
    "deterministic",
    "digest",
    "exact_part",
]

# Request fields that change who asks, how the answer travels or the model's lifecycle, never
# the answer itself.
NOT_THE_ANSWER = frozenset(
    {
        "autoload",
        "cache",
        "keep_alive",
        "metadata",
        "model",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "user",
    }
)


def deterministic(temperature: float | None, seed: int | None) -> bool:
    """Whether a request's answer is fixed: greedy (temperature 0) or a fixed seed."""
    return temperature == 0 or seed is not None


def cache_flag(wire: BaseModel) -> bool:
    """The body's own `cache` field (an extension): false skips reading the cache. Raises
    BadRequest when it is not a boolean."""
    extra = wire.model_extra
    value = extra.get("cache", True) if extra else True
    if value is None:  # a client sending its unset fields as null: the default
        return True
    if not isinstance(value, bool):
        raise BadRequest("`cache` must be true or false", param="cache")
    return value


def canonical(wire: BaseModel, kind: str, served_by: str) -> dict[str, Any]:
    """The request as far as it decides the answer, with `served_by` (an identity) for model."""
    body = wire.model_dump(mode="json", by_alias=True, exclude_none=True)
    tools = bool(body.get("tools") or body.get("functions"))
    stream = body.get("stream", False)
    for name in NOT_THE_ANSWER & body.keys():
        del body[name]
    if tools:
        body["stream"] = stream
    body["kind"] = kind
    body["served_by"] = served_by
    return body


def exact_part(body: dict[str, Any]) -> dict[str, Any]:
    """What a semantic hit must match exactly (cache/semantic.py): the canonical request but
    for its free text, the prompt or each turn's `content`. A turn's role, an assistant's tool
    calls with their arguments, which call a tool result answers, and a tool's result are data,
    not paraphrasable text (two conversations that differed only in a call's arguments, Paris
    or Tokyo, were at distance 0 and shared an answer: found from outside); so is a prompt of
    token ids. Tool call ids count by their order of first use: random ids still match."""
    rest = {k: v for k, v in body.items() if k not in ("messages", "prompt")}
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        rest["prompt"] = prompt
    if "messages" in body:
        ids: dict[str, int] = {}
        rest["messages"] = [_turn_shape(m, ids) for m in body["messages"]]
    return rest


def _turn_shape(message: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """A turn without its free text, its tool call ids replaced by their order of first use."""
    data = message.get("role") in ("tool", "function")
    turn = {k: v for k, v in message.items() if data or k != "content"}
    if isinstance(turn.get("tool_call_id"), str):
        turn["tool_call_id"] = ids.setdefault(turn["tool_call_id"], len(ids))
    calls = turn.get("tool_calls")
    if isinstance(calls, list):
        turn["tool_calls"] = [
            {**c, "id": ids.setdefault(c["id"], len(ids))}
            if isinstance(c, dict) and isinstance(c.get("id"), str)
            else c
            for c in calls
        ]
    return turn


def digest(value: Any) -> str:
    """A short stable hash of a JSON value (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()
