"""The worker channel's text operations (llama-server's /tokenize, /detokenize, /apply-template
and /props): their wire format, and a real worker process answering them between the decode
steps of a generation, on the fake engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llm_router.engines import LoadSpec
from llm_router.errors import BadRequest
from llm_router.types import (
    ChatMessage,
    Constraint,
    Function,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    ToolCall,
    Tools,
)
from llm_router.worker.client import Worker
from llm_router.worker.protocol import (
    Reply,
    decode,
    encode,
    event_from_wire,
    messages_from_wire,
    messages_to_wire,
    pieces_from_wire,
    pieces_to_wire,
    request_from_wire,
    request_to_wire,
)
from llm_router.worker.spawn import Spare


def test_pieces_and_messages_cross_the_channel_unchanged() -> None:
    pieces = [b"h", b"", b"\xf0\x9f", b"\x8c\x8d", b"<s>", b"\x00\xff"]
    wire = decode(encode({"id": 1, "result": pieces_to_wire(pieces)}))
    event = event_from_wire(wire)
    assert isinstance(event, Reply) and pieces_from_wire(event.value) == pieces
    messages = (
        ChatMessage("system", "Be brief."),
        ChatMessage("assistant", "", (ToolCall("call_1", "add", '{"a": 1}'),)),
        ChatMessage("tool", "21", (), "call_1"),
    )
    assert messages_from_wire(decode(encode({"m": messages_to_wire(messages)}))["m"]) == messages
    request = GenerationRequest(
        params=SamplingParams(max_tokens=3, stop=("x",), logit_bias=((5, -100.0), (7, 2.5))),
        messages=messages,
        constraint=Constraint("json", '{"type": "object"}'),
        tools=Tools((Function("add", "adds", '{"type": "object"}'),), "auto", True),
    )
    wire = decode(encode({"op": "generate", "request": request_to_wire(request)}))
    assert request_from_wire(wire["request"]) == request


@pytest.mark.real  # a worker process
@pytest.mark.timeout(60)
async def test_a_worker_answers_text_operations_while_it_generates(tmp_path: Path) -> None:
    model = tmp_path / "fake.json"
    model.write_text(json.dumps({"reply": "one two three", "token_seconds": 0.05}))
    worker = await Worker.start(await Spare.spawn("fake"), LoadSpec(str(model)), timeout=30)
    try:
        request = GenerationRequest(SamplingParams(max_tokens=20), prompt="go")
        stream = worker.generate(request)
        first = await anext(stream)
        assert isinstance(first, TextDelta)  # generating now; the operations go in between
        tokens = await worker.tokenize("hé<s>", add_special=True, parse_special=True)
        assert tokens == [256, 104, 195, 169, 256]
        assert await worker.pieces(tokens) == [b"<s>", b"h", b"\xc3", b"\xa9", b"<s>"]
        messages = (ChatMessage("user", "hi"),)
        assert await worker.chat_prompt(messages) == "user: hi\nassistant:"
        assert (await worker.template_info())["bos_token"] == "<s>"
        with pytest.raises(BadRequest) as refused:
            await worker.pieces([1, 999])
        assert refused.value.param == "tokens"
        rest = [event async for event in stream]
        assert rest and worker.in_flight == 0
    finally:
        await asyncio.wait_for(worker.stop(), 10)
