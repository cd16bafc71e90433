"""The worker's engine loop takes requests sent together into one first step: a step started
on the first request alone makes the others wait for it before their prompts begin."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from llm_router.types import GenerationRequest, SamplingParams
from llm_router.worker.__main__ import serve
from llm_router.worker.protocol import encode, request_to_wire


class Recorder:
    """An engine that records which requests each step had, and ends them in that step."""

    def __init__(self) -> None:
        self.waiting: list[int] = []
        self.steps: list[list[int]] = []
        self.stepped = threading.Event()

    @property
    def busy(self) -> bool:
        return bool(self.waiting)

    def submit(self, seq: int, request: GenerationRequest) -> None:
        self.waiting.append(seq)

    def cancel(self, seq: int) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)

    def step(self) -> list[Any]:
        self.steps.append(self.waiting)
        self.waiting = []
        self.stepped.set()
        return []

    def info(self) -> dict[str, Any]:
        return {}


def _generate(seq: int) -> bytes:
    request = GenerationRequest(params=SamplingParams(max_tokens=4), prompt=f"story {seq}")
    return encode({"op": "generate", "id": seq, "request": request_to_wire(request)})


def _run(gather: tuple[float, float], gaps: list[float]) -> list[list[int]]:
    """Requests written `gaps` seconds apart to an idle worker loop; the steps it made."""
    ours, router = socket.socketpair()  # the router writes, the loop reads
    out, replies = socket.socketpair()  # what the loop sends back (not read here)
    engine = Recorder()
    loop = threading.Thread(
        target=serve, args=(engine, out, ours.makefile("rb"), gather), daemon=True
    )
    loop.start()
    try:
        router.sendall(_generate(0))
        for seq, gap in enumerate(gaps, start=1):
            time.sleep(gap)
            router.sendall(_generate(seq))
        assert engine.stepped.wait(10)
        time.sleep(gather[0] + 0.1)  # any later step too
        router.sendall(encode({"op": "shutdown"}))
        loop.join(10)
        assert not loop.is_alive()
        router.shutdown(socket.SHUT_WR)  # the reader thread sees the end and stops
        for thread in threading.enumerate():
            if thread.name.endswith("(_reader)"):
                thread.join(10)
    finally:
        for s in (router, ours, out, replies):
            s.close()
    return engine.steps


def test_requests_sent_together_start_in_one_step() -> None:
    assert _run((0.3, 3.0), [0.02, 0.02, 0.02]) == [[0, 1, 2, 3]]


def test_without_gathering_the_first_request_steps_alone() -> None:
    """What the gathering is for: the loop as it was stepped the first request by itself."""
    steps = _run((0.0, 0.0), [0.05, 0.05, 0.05])
    assert steps[0] == [0]
    assert sorted(s for step in steps for s in step) == [0, 1, 2, 3]


@pytest.mark.parametrize("gaps", [[], [0.6]])
def test_a_request_alone_is_not_held_past_the_pause(gaps: list[float]) -> None:
    """A lone request waits one quiet pause at most; one sent after the pause is its own step."""
    steps = _run((0.3, 3.0), gaps)
    assert steps == [[0]] + [[seq] for seq in range(1, len(gaps) + 1)]
