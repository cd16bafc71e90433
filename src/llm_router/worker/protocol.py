"""The channel between the router and a worker: newline-delimited JSON over a Unix socket pair.

Router -> worker: `{"op": "generate", "id", "request"}`, `{"op": "embed", "id", "inputs"}`,
`{"op": "cancel", "id"}`, `{"op": "threads", "threads"}`, `{"op": "shutdown"}`, and the text
operations behind llama-server's endpoints (TEXT_OPS): `{"op": "tokenize", "id", "text",
"add_special", "parse_special"}`, `{"op": "pieces", "id", "tokens"}`, `{"op": "chat_prompt",
"id", "messages", "template"}`, `{"op": "template_info", "id"}`, `{"op": "prompt_tokens", "id",
"text", "messages", "template"}` and `{"op": "embedding_tokens", "id", "inputs"}` (a prompt's count and embedding
inputs' count, for limits: routing/admission.py). Worker -> router:
`{"op": "spare", "rss"}` once its engine library is imported, then `{"op": "ready", "info"}`
or `{"op": "load_failed", "error"}` once, then per request `{"id", "text"}` deltas (with
`"lp"`, the tokens' log-probabilities, when asked for; `{"id", "prompt_lp"}` once before them
for a prompt's), `{"id", "finish", "usage"}`,
`{"id", "embeddings", "dim", "tokens"}` (the vectors as one base64 string of native-order
float32, far smaller and faster than JSON numbers), `{"id", "result"}` (a text operation's
answer; token pieces as one base64 string and their lengths) or `{"id", "error"}`, and
`{"op": "info", "info"}` snapshots. Errors travel as the name of a class in
`llm_router.errors` plus message and param, and are rebuilt on the other side."""

from __future__ import annotations

import base64
import json
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .. import errors
from ..types import (
    ChatMessage,
    Constraint,
    Embeddings,
    Finished,
    Function,
    GenerationRequest,
    LlamaSampling,
    PromptLogprobs,
    SamplingParams,
    TemplateOptions,
    TextDelta,
    TokenLogprob,
    ToolCall,
    Tools,
    Usage,
)

__all__ = [
    "TEXT_OPS",
    "Reply",
    "decode",
    "embeddings_to_wire",
    "encode",
    "error_from_wire",
    "error_to_wire",
    "event_from_wire",
    "events_to_wire",
    "messages_from_wire",
    "messages_to_wire",
    "pieces_from_wire",
    "pieces_to_wire",
    "request_from_wire",
    "request_to_wire",
    "template_from_wire",
    "template_to_wire",
]

TEXT_OPS = frozenset(
    {"tokenize", "pieces", "chat_prompt", "prompt_tokens", "embedding_tokens", "template_info"}
)


@dataclass(frozen=True, slots=True)
class Reply:
    """The worker's answer to a text operation (TEXT_OPS): its JSON value."""

    value: Any


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("worker message is not an object")
    return value


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.RouterError):
        return {"kind": type(exc).__name__, "message": exc.message, "param": exc.param}
    return {"kind": "EngineError", "message": f"{type(exc).__name__}: {exc}", "param": None}


def error_from_wire(data: dict[str, Any]) -> errors.RouterError:
    cls = getattr(errors, str(data.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.RouterError)):
        cls = errors.EngineError
    if issubclass(cls, errors.QueueFull):
        return cls(str(data.get("message")))
    return cls(str(data.get("message")), param=data.get("param"))


def embeddings_to_wire(seq: int, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
    dim = len(vectors[0]) if vectors else 0
    if any(len(v) != dim for v in vectors):
        raise errors.EngineError("the engine returned vectors of different lengths")
    flat = array("f", [x for v in vectors for x in v])
    return {
        "id": seq,
        "embeddings": base64.b64encode(flat.tobytes()).decode("ascii"),
        "dim": dim,
        "tokens": tokens,
    }


def _embeddings_from_wire(msg: dict[str, Any]) -> Embeddings:
    flat = array("f")
    flat.frombytes(base64.b64decode(msg["embeddings"]))
    dim = int(msg["dim"])
    values = flat.tolist()
    vectors = [values[i : i + dim] for i in range(0, len(values), dim)] if dim else []
    return Embeddings(vectors, int(msg["tokens"]))


def _logprobs_to_wire(tokens: Sequence[TokenLogprob]) -> list[Any]:
    """Token bytes as latin-1 text (any byte, one code point, reversible), compact lists."""
    return [
        [t.token.decode("latin-1"), t.logprob, [[b.decode("latin-1"), lp] for b, lp in t.top]]
        for t in tokens
    ]


def _logprobs_from_wire(data: list[Any]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(token.encode("latin-1"), lp, tuple((b.encode("latin-1"), v) for b, v in top))
        for token, lp, top in data
    )


def event_from_wire(
    msg: dict[str, Any],
) -> TextDelta | PromptLogprobs | Finished | Embeddings | Reply | errors.RouterError:
    if "text" in msg:
        lp = msg.get("lp")
        return TextDelta(msg["text"], _logprobs_from_wire(lp)) if lp else TextDelta(msg["text"])
    if "prompt_lp" in msg:
        return PromptLogprobs(_logprobs_from_wire(msg["prompt_lp"]))
    if "finish" in msg:
        return Finished(msg["finish"], Usage(**msg["usage"]), msg.get("stop"))
    if "embeddings" in msg:
        return _embeddings_from_wire(msg)
    if "result" in msg:
        return Reply(msg["result"])
    return error_from_wire(msg.get("error") or {})


def pieces_to_wire(pieces: list[bytes]) -> dict[str, Any]:
    return {
        "bytes": base64.b64encode(b"".join(pieces)).decode("ascii"),
        "lengths": [len(p) for p in pieces],
    }


def pieces_from_wire(data: dict[str, Any]) -> list[bytes]:
    raw = base64.b64decode(data["bytes"])
    pieces, start = [], 0
    for n in data["lengths"]:
        pieces.append(raw[start : start + n])
        start += n
    return pieces


def messages_to_wire(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """By hand, not `asdict` (which copies deeply: 15 us a message, so a chat of 100,000
    held the router's event loop for 1.5 s)."""
    return [
        {"role": m.role, "content": m.content}
        if not m.tool_calls and m.tool_call_id is None
        else {
            "role": m.role,
            "content": m.content,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
            ],
            "tool_call_id": m.tool_call_id,
        }
        for m in messages
    ]


def messages_from_wire(data: list[dict[str, Any]]) -> tuple[ChatMessage, ...]:
    return tuple(_message(m) for m in data)


def template_to_wire(options: TemplateOptions | None) -> dict[str, Any] | None:
    if options is None:
        return None
    return {"add_generation_prompt": options.add_generation_prompt, "kwargs": options.kwargs}


def template_from_wire(data: dict[str, Any] | None) -> TemplateOptions | None:
    if data is None:
        return None
    kwargs = tuple((str(k), v) for k, v in data.get("kwargs") or ())
    return TemplateOptions(bool(data.get("add_generation_prompt", True)), kwargs)


def request_to_wire(request: GenerationRequest) -> dict[str, Any]:
    data = asdict(replace(request, messages=None))  # all but the messages: a few fields
    if request.messages is not None:
        data["messages"] = messages_to_wire(request.messages)
    return data


def request_from_wire(data: dict[str, Any]) -> GenerationRequest:
    params = dict(data["params"])
    params["stop"] = tuple(params.get("stop") or ())
    params["logit_bias"] = tuple((int(t), float(b)) for t, b in params.get("logit_bias") or ())
    texts = params.get("logit_bias_text") or ()
    params["logit_bias_text"] = tuple((str(t), float(b)) for t, b in texts)
    if llama := params.get("llama"):
        breakers = tuple(llama["dry_sequence_breakers"])
        params["llama"] = LlamaSampling(**{**llama, "dry_sequence_breakers": breakers})
    messages = data.get("messages")
    constraint = data.get("constraint")
    tools = data.get("tools")
    return GenerationRequest(
        params=SamplingParams(**params),
        messages=messages_from_wire(messages) if messages is not None else None,
        prompt=data.get("prompt"),
        prompt_tokens=tuple(data["prompt_tokens"]) if data.get("prompt_tokens") else None,
        echo_logprobs=bool(data.get("echo_logprobs")),
        template=template_from_wire(data.get("template")),
        constraint=Constraint(**constraint) if constraint else None,
        tools=(
            Tools(
                tuple(Function(**f) for f in tools["functions"]), tools["choice"], tools["parallel"]
            )
            if tools
            else None
        ),
    )


def _message(m: dict[str, Any]) -> ChatMessage:
    calls = tuple(ToolCall(**c) for c in m.get("tool_calls") or ())
    return ChatMessage(m["role"], m["content"], calls, m.get("tool_call_id"))


def events_to_wire(
    events: list[tuple[int, TextDelta | PromptLogprobs | Finished | errors.RouterError]],
) -> bytes:
    """A step's events for several requests, as lines (the worker sends them in one write)."""
    out = []
    for seq, event in events:
        if isinstance(event, TextDelta):
            if event.logprobs:
                lp = _logprobs_to_wire(event.logprobs)
                out.append(encode({"id": seq, "text": event.text, "lp": lp}))
            else:
                out.append(encode({"id": seq, "text": event.text}))
        elif isinstance(event, PromptLogprobs):
            out.append(encode({"id": seq, "prompt_lp": _logprobs_to_wire(event.tokens)}))
        elif isinstance(event, Finished):
            done: dict[str, Any] = {
                "id": seq,
                "finish": event.finish_reason,
                "usage": asdict(event.usage),
            }
            if event.stop is not None:
                done["stop"] = event.stop
            out.append(encode(done))
        else:
            out.append(encode({"id": seq, "error": error_to_wire(event)}))
    return b"".join(out)
