"""The engine's numbers on /metrics of a real server on the bundled SmolLM2: how full a
model's KV cache is (the tokens its slots hold, `llm_router_engine_tokens_cached`, include a
request's prompt, read against the KV cache's size, `llm_router_engine_context_tokens`:
context per slot times slots), and its counters, which go on across its workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil

from servers import SMOL, MakeClient, new_server


def _gauge(server: Any, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    prefix = f'{name}{{model="{SMOL}"}} '
    [value] = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
    return float(value)


def _generated_reaches(server: Any, wanted: float) -> float:
    """`llm_router_engine_tokens_generated_total` once it is `wanted` (the worker reports
    its numbers every second or so), or what it was after 10 s."""
    deadline = time.monotonic() + 10
    while (seen := _gauge(server, "llm_router_engine_tokens_generated_total")) != wanted:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return seen


def test_the_kv_cache_in_use_grows_with_a_prompt_and_is_read_against_its_size(
    client: openai.OpenAI, server: Any
) -> None:
    # a prompt no other test sends: its tokens are new to every slot
    prompt = "Count the sheep: " + " ".join(f"sheep {i}," for i in range(60))
    done = client.completions.create(model=SMOL, prompt=prompt, max_tokens=2, temperature=0)
    assert done.usage is not None and done.usage.prompt_tokens > 100
    # the worker sends its engine's numbers every second (worker INFO_INTERVAL): a snapshot
    deadline = time.monotonic() + 10
    while (after := _gauge(server, "llm_router_engine_tokens_cached")) < done.usage.prompt_tokens:
        assert time.monotonic() < deadline, after  # the slot that served holds its prompt
        time.sleep(0.2)
    total = _gauge(server, "llm_router_engine_context_tokens")
    assert 0 < after <= total


def test_engine_counters_go_on_across_unloads_and_crashes(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    """A counter that falls back to 0 when its model is unloaded and loaded again (its new
    worker counts from 0; found from outside) reads as a reset to Prometheus, or is missed:
    the model's totals add up its workers, and stay on /metrics while it is unloaded."""
    srv = new_server(tmp_path, models_dir=str(models_dir))
    try:
        client = make_client(srv)
        made = 0

        def chat(tokens: int) -> None:
            nonlocal made
            done = client.chat.completions.create(
                model=SMOL,
                messages=[{"role": "user", "content": "Tell a story"}],
                max_tokens=tokens,
                temperature=0.9,
            )
            assert done.usage is not None
            made += done.usage.completion_tokens

        chat(12)
        assert _generated_reaches(srv, made) == made
        unloaded = httpx.post(srv.url + "/models/unload", json={"model": SMOL}, timeout=30)
        assert unloaded.is_success, unloaded.text
        srv.wait_status(SMOL, "unloaded")
        # the worker said its last numbers as it stopped: all of them, still there
        assert _gauge(srv, "llm_router_engine_tokens_generated_total") == made
        chat(5)
        assert _generated_reaches(srv, made) == made
        before = _gauge(srv, "llm_router_engine_decode_steps_total")
        pid = srv.worker_of(f"{SMOL}.gguf")
        assert pid is not None
        psutil.Process(pid).kill()  # a crash: what it last reported is kept
        srv.wait_status(SMOL, "error", "unloaded")
        assert _gauge(srv, "llm_router_engine_decode_steps_total") == before
        chat(3)
        assert _generated_reaches(srv, made) == made
    finally:
        srv.stop()
