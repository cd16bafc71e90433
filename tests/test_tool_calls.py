"""tool_calls.as_function_call: an answer to OpenAI's deprecated `functions`, in its shape;
ToolParser: the constrained answer read as content and calls."""

from __future__ import annotations

from llm_router.tool_calls import ToolParser, as_function_call
from llm_router.types import Finished, MessageFields, TextDelta, Usage

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


def test_a_whole_answer_carries_function_call_and_its_finish() -> None:
    event = as_function_call(MessageFields({"tool_calls": [CALL]}))
    assert event == MessageFields({"function_call": {"name": "f", "arguments": '{"a": 1}'}})
    usage = Usage(3, 4)
    assert as_function_call(Finished("tool_calls", usage)) == Finished("function_call", usage)
    assert as_function_call(Finished("length", usage)) == Finished("length", usage)


def test_streamed_deltas_give_the_name_then_argument_fragments() -> None:
    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    more = {"index": 0, "function": {"arguments": '{"a"'}}
    assert as_function_call(MessageFields({"tool_calls": [first]})) == MessageFields(
        {"function_call": {"name": "f", "arguments": ""}}
    )
    assert as_function_call(MessageFields({"tool_calls": [more]})) == MessageFields(
        {"function_call": {"arguments": '{"a"'}}
    )


def test_other_events_pass_as_they_are() -> None:
    upstream = MessageFields({"function_call": {"name": "f", "arguments": "{}"}})
    for event in (TextDelta("hi"), upstream, MessageFields({"refusal": "no"})):
        assert as_function_call(event) is event


def test_an_answer_cut_inside_the_wrapper_leaks_none_of_it() -> None:
    """`max_tokens` ending the answer before it says whether it calls or answers: no content
    (it was '{"tool' or '{"response": ' as the message's content, found from outside)."""
    for stream in (False, True):
        for cut in ('{"tool', '{"tool_calls', '{"resp', '{"response": ', "{"):
            parser = ToolParser(stream=stream)
            assert parser.feed(cut) == []
            assert parser.finish() == [], (stream, cut)
    text = ToolParser(stream=False)
    assert text.feed("Hi") == [TextDelta("Hi")] and text.finish() == []
