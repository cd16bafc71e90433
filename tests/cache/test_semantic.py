"""The semantic cache: in-process on the fake engine (the plumbing: any distance within the
threshold is a hit, parameters must match) and on the real all-MiniLM-L6-v2 through a real
server (a paraphrase is a hit, another question is not)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from inproc import app_client, fake_models
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


async def test_a_lookup_waits_at_most_its_timeout_for_a_busy_embedding_model(
    tmp_path: Path,
) -> None:
    """Found from outside: behind another client's 32 s embedding batch a cacheable chat
    waited 30.7 s, its lookup queued for the embedding model; without the semantic cache it
    would not have waited at all."""
    models = fake_models(tmp_path, chat={}, emb={"parallel": 1})
    cache = {"semantic": {"model": "emb", "threshold": 2.0, "timeout": 0.1}}
    apps: list[FastAPI] = []
    async with app_client(
        tmp_path, models=models, cache=cache, queue_timeout=5, setup=apps.append
    ) as client:
        await _post(client, _chat("one question"))
        async with apps[0].state.manager.lease("emb"):  # a user's batch, in its only slot
            busy = await _post(client, _chat("another question"))
        metrics = (await client.get("/metrics")).text
    assert busy.headers["x-llm-router-cache"] == "miss"  # else a hit: every distance is near
    assert 'llm_router_cache_lookups_total{result="timeout",tier="semantic"} 1.0' in metrics


async def test_a_lookup_never_evicts_a_model_to_load_the_embedding_model(tmp_path: Path) -> None:
    """Found from outside: with `models_max: 1` every semantic miss evicted the chat model to
    embed its request, and loaded it again to answer (about 5 s a request)."""
    models = fake_models(tmp_path, chat={}, emb={})
    cache = {"semantic": {"model": "emb", "threshold": 0.0}}
    async with app_client(
        tmp_path, models=models, cache=cache, models_max=1, drain_after=0.01
    ) as client:
        answers = [await _post(client, _chat(f"question {i}")) for i in range(4)]
        metrics = (await client.get("/metrics")).text
    assert [a.headers["x-llm-router-cache"] for a in answers] == ["miss"] * 4
    # on a fresh server the first lookup finds room and loads the embedding model; once the
    # chat model holds the only place, lookups are skipped and it stays
    assert 'llm_router_model_loads_total{model="chat",reason="request"} 1.0' in metrics
    assert 'llm_router_cache_lookups_total{result="unloaded",tier="semantic"} 3.0' in metrics


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


def warm_up(srv: Server) -> None:
    """Load the embedding model: a lookup waits at most `semantic.timeout` (0.5 s) for its
    vector, and a cold load may take longer (that lookup is skipped; the load goes on)."""
    body = {"model": defaults.MINILM_ID, "input": "warm"}
    assert httpx.post(srv.url + "/v1/embeddings", json=body, timeout=120).status_code == 200


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
    warm_up(srv)
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


def test_with_models_max_1_the_chat_model_stays_loaded(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """Found from outside (`models_max: 1`): every semantic miss evicted the chat model to
    embed its request with all-MiniLM-L6-v2, then loaded it again to answer."""
    folder = link_models(tmp_path / "models", smollm2_gguf)
    assert defaults.place_minilm(folder) is not None
    config = {
        "models_dir": str(folder),
        "models_max": 1,
        "cache": {"enabled": True, "semantic": {"model": defaults.MINILM_ID}},
    }
    srv = Server(tmp_path, config).start()
    try:
        client = make_client(srv)
        for question in (
            "Name a fruit.",
            "What is the capital of Peru?",
            "Write a haiku about snow.",
            "How many legs does a spider have?",
        ):
            raw = client.chat.completions.with_raw_response.create(
                model=SMOL,
                messages=[{"role": "user", "content": question}],
                temperature=0,
                max_tokens=2,
            )
            assert raw.headers["x-llm-router-cache"] == "miss"
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
    finally:
        srv.stop()
    assert f'llm_router_model_loads_total{{model="{SMOL}",reason="request"}} 1.0' in metrics
    assert 'llm_router_cache_lookups_total{result="unloaded",tier="semantic"} 3.0' in metrics


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
