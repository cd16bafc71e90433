"""How full a model's KV cache is, on /metrics of a real server on the bundled SmolLM2: the
tokens its slots hold (`llm_router_engine_tokens_cached`) include a request's prompt, read
against the KV cache's size (`llm_router_engine_context_tokens`: context per slot times
slots)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai

from servers import SMOL


def _gauge(server: Any, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    prefix = f'{name}{{model="{SMOL}"}} '
    [value] = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
    return float(value)


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
