"""A stored answer's events, encoded and decoded (cache/entries.py)."""

from __future__ import annotations

from llm_router.cache.entries import Recorder, decode
from llm_router.types import Finished, MessageFields, TextDelta, Usage


def test_a_stored_tool_call_gets_a_new_id_each_time_it_is_served() -> None:
    """Every hit repeated the stored `call_...` id (found from outside); the deltas of one
    call keep one id between them."""
    record = Recorder("box")
    first = {"index": 0, "id": "call_stored", "type": "function",
             "function": {"name": "f", "arguments": ""}}  # fmt: skip
    record.add(MessageFields({"tool_calls": [first]}))
    record.add(MessageFields({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    record.add(TextDelta("done"))
    record.add(Finished("tool_calls", Usage(3, 2)))
    value = record.encode()
    assert value is not None
    served = [decode(value)[1] for _ in range(2)]
    ids = []
    for events in served:
        fields = [e.fields for e in events if isinstance(e, MessageFields)]
        assert fields[1] == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        ids.append(fields[0]["tool_calls"][0]["id"])
        assert fields[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert ids[0] != ids[1] and "call_stored" not in ids and all(i.startswith("call_") for i in ids)


def test_a_stored_answer_keeps_the_stop_string_that_ended_it() -> None:
    """A cached answer's finish says which stop string ended it, as the first did: Anthropic's
    `stop_reason: stop_sequence` (/v1/messages) of a hit was `end_turn`."""
    for stop in ("Paris", None):
        record = Recorder("box")
        record.add(TextDelta("The capital is "))
        record.add(Finished("stop", Usage(3, 2), stop))
        value = record.encode()
        assert value is not None
        assert decode(value)[1][-1] == Finished("stop", Usage(3, 2), stop)
