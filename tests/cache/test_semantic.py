"""The semantic cache: in-process on the fake engine (the plumbing: any distance within the
threshold is a hit, parameters must match) and on the real all-MiniLM-L6-v2 through a real
server (a paraphrase is a hit, another question is not)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inproc import app_client
from llm_router import defaults
from servers import SMOL, MakeClient, Server, link_models


def _chat(text: str, **extra: object) -> dict[str, object]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 4,
        **extra,
    }


async def _post(client: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response


async def test_a_near_request_with_the_same_parameters_gets_the_cached_answer(
    tmp_path: Path,
) -> None:
    cache = {"semantic": {"model": "chat", "threshold": 2.0}}  # every distance is near
    async with app_client(tmp_path, cache=cache) as client:
        first = await _post(client, _chat("one question"))
        near = await _post(client, _chat("another question"))
        other_params = await _post(client, _chat("another question", max_tokens=2))
        metrics = (await client.get("/metrics")).text
    assert first.headers["x-llm-router-cache"] == "miss"
    assert near.headers["x-llm-router-cache"] == "hit"
    assert near.headers["x-llm-router-route"].startswith("cache semantic distance=")
    assert near.json()["choices"] == first.json()["choices"]
    assert other_params.headers["x-llm-router-cache"] == "miss"
    assert 'llm_router_cache_lookups_total{result="hit",tier="semantic"} 1.0' in metrics


async def test_off_by_default_and_a_far_request_is_a_miss(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        await _post(client, _chat("one question"))
        plain = await _post(client, _chat("another question"))
    assert plain.headers["x-llm-router-cache"] == "miss"
    cache = {"semantic": {"model": "chat", "threshold": 0.0}}
    async with app_client(tmp_path, cache=cache) as client:
        await _post(client, _chat("one question"))
        far = await _post(client, _chat("a different question entirely"))
    assert far.headers["x-llm-router-cache"] == "miss"


def _weather(city: str, result: str = "sunny, 25 C", call_id: str = "call_1") -> dict[str, object]:
    """A conversation with a tool call: only its words are text; the call is data."""
    return {
        "model": "chat",
        "temperature": 0,
        "max_tokens": 4,
        "messages": [
            {"role": "user", "content": "What's the weather like?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": result},
            {"role": "user", "content": "Summarize the weather and name the city."},
        ],
    }


async def test_tool_calls_and_their_results_must_match_exactly(tmp_path: Path) -> None:
    """Conversations that differed only in a tool call's arguments (Paris, Tokyo) were at
    distance 0, their text being the same, and shared an answer (found from outside)."""
    cache = {"semantic": {"model": "chat", "threshold": 2.0}}  # every distance is near
    async with app_client(tmp_path, cache=cache) as client:
        await _post(client, _weather("Paris"))
        tokyo = await _post(client, _weather("Tokyo"))
        rainy = await _post(client, _weather("Paris", result="rain, 9 C"))
        other_id = await _post(client, _weather("Paris", call_id="call_xyz"))
        reworded = _weather("Paris")
        reworded["messages"][0]["content"] = "How is the weather?"  # type: ignore[index]
        paraphrase = await _post(client, reworded)
    assert tokyo.headers["x-llm-router-cache"] == "miss"
    assert rainy.headers["x-llm-router-cache"] == "miss"
    assert other_id.headers["x-llm-router-route"].startswith("cache semantic")  # ids are names
    assert paraphrase.headers["x-llm-router-cache"] == "hit"


@pytest.fixture(scope="module")
def semantic_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[Server]:
    folder = link_models(tmp_path_factory.mktemp("semantic-models"), smollm2_gguf)
    assert defaults.place_minilm(folder) is not None
    config = {
        "models_dir": str(folder),
        "cache": {"enabled": True, "semantic": {"model": defaults.MINILM_ID, "threshold": 0.1}},
    }
    srv = Server(tmp_path_factory.mktemp("semantic-server"), config).start()
    yield srv
    srv.stop()


def test_a_paraphrase_is_served_from_the_semantic_cache(
    semantic_server: Server, make_client: MakeClient
) -> None:
    client = make_client(semantic_server)
    answers = []
    for question in (
        "What is the capital of France?",
        "What's the capital city of France?",
        "Write a short poem about the sea.",
    ):
        raw = client.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=12,
        )
        answers.append((raw.headers["x-llm-router-cache"], raw.parse().choices[0].message.content))
    (first, text), (paraphrase, same), (other, _) = answers
    assert (first, paraphrase, other) == ("miss", "hit", "miss")
    assert same == text
    metrics = httpx.get(semantic_server.url + "/metrics", timeout=10).text
    assert 'llm_router_cache_lookups_total{result="hit",tier="semantic"} 1.0' in metrics


async def test_prompts_of_token_ids_must_match_exactly(tmp_path: Path) -> None:
    """A prompt of token ids has no text to embed: every one was at distance 0 of the others."""
    cache = {"semantic": {"model": "chat", "threshold": 2.0}}
    body = {"model": "chat", "temperature": 0, "max_tokens": 4}
    async with app_client(tmp_path, cache=cache) as client:
        first = await client.post("/v1/completions", json={**body, "prompt": [72, 105]})
        other = await client.post("/v1/completions", json={**body, "prompt": [66, 121, 101]})
    assert first.status_code == other.status_code == 200, other.text
    assert other.headers["x-llm-router-cache"] == "miss"


DOC = (
    "The Zorblax 3000 is a kitchen appliance made by Acme Corp in 2019. "
    + "It has a 2 litre bowl, a 900 watt motor, twelve speed settings and a pulse button. " * 14
    + "Its warranty lasts 5 years. It is sold in red, blue and green."
)  # ~300 tokens: more than all-MiniLM-L6-v2 reads (256)
QUESTIONS = ("What colours is it sold in?", "How long is the warranty?")


def test_a_text_longer_than_the_semantic_model_reads_is_not_looked_up(
    semantic_server: Server, make_client: MakeClient
) -> None:
    """Found from outside: past the 256 tokens all-MiniLM-L6-v2 reads, every question after a
    shared RAG document embedded alike (distance 0.0000) and got the first one's answer, in a
    system message, in the user's own message and in a completion's prompt alike."""
    client = make_client(semantic_server)
    headers: dict[str, list[str]] = {"system": [], "user": [], "prompt": []}
    for question in QUESTIONS:
        for where in ("system", "user"):
            messages = [{"role": "user", "content": f"Context:\n{DOC}\n\nQuestion: {question}"}]
            if where == "system":
                messages = [
                    {"role": "system", "content": "Answer from this document only.\n" + DOC},
                    {"role": "user", "content": question},
                ]
            raw = client.chat.completions.with_raw_response.create(
                model=SMOL,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=4,
            )
            headers[where].append(raw.headers["x-llm-router-cache"])
        completion = client.completions.with_raw_response.create(
            model=SMOL,
            prompt=f"Context:\n{DOC}\n\nQuestion: {question}\nAnswer:",
            temperature=0,
            max_tokens=4,
        )
        headers["prompt"].append(completion.headers["x-llm-router-cache"])
    again = client.completions.with_raw_response.create(
        model=SMOL,
        prompt=f"Context:\n{DOC}\n\nQuestion: {QUESTIONS[0]}\nAnswer:",
        temperature=0,
        max_tokens=4,
    )
    assert headers == {k: ["miss", "miss"] for k in headers}
    assert again.headers["x-llm-router-cache"] == "hit"  # the exact cache applies as before
    assert again.headers["x-llm-router-route"] == "cache"
    metrics = httpx.get(semantic_server.url + "/metrics", timeout=10).text
    assert 'llm_router_cache_lookups_total{result="too_long",tier="semantic"} 6.0' in metrics
