"""The response cache on the real bundled models through a real server, driven by the openai
client: chat, streams, completions and embeddings served from cache with the header, no-cache,
a fixed seed's determinism, the disk tier across a restart, a touched model file."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llm_router import defaults
from llm_router.serving.embed import to_base64
from servers import SMOL, MakeClient, Server

MESSAGES = [{"role": "user", "content": "Name one color."}]


@pytest.fixture(scope="module")
def cache_models(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    folder = tmp_path_factory.mktemp("cache-models")
    shutil.copyfile(smollm2_gguf, folder / smollm2_gguf.name)  # a copy: the test touches it
    assert defaults.place_minilm(folder) is not None
    return folder


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory: pytest.TempPathFactory, cache_models: Path) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("cache-server")
    config = {
        "models_dir": str(cache_models),
        "watch_interval": 0,
        "cache": {"enabled": True, "disk_path": str(workdir / "cache.db")},
    }
    srv = Server(workdir, config).start()
    yield srv
    srv.stop()


def _chat(client: openai.OpenAI, **params: object) -> tuple[str, str]:
    """The answer's text and its x-llm-router-cache header."""
    raw = client.chat.completions.with_raw_response.create(
        model=SMOL,
        messages=MESSAGES,
        max_tokens=12,
        **params,  # type: ignore[arg-type]
    )
    answer = raw.parse().choices[0].message.content or ""
    return answer, raw.headers.get("x-llm-router-cache", "")


def test_a_repeated_greedy_chat_is_a_hit_and_a_stream_replays_it(
    cache_server: Server, make_client: MakeClient
) -> None:
    client = make_client(cache_server)
    first, miss = _chat(client, temperature=0)
    second, hit = _chat(client, temperature=0)
    assert (miss, hit) == ("miss", "hit")
    assert second == first and first
    with client.chat.completions.with_streaming_response.create(
        model=SMOL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        assert raw.headers["x-llm-router-cache"] == "hit"
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    fresh, header = _chat(client, temperature=0, extra_headers={"Cache-Control": "no-cache"})
    assert header == "miss" and fresh == first  # computed again: greedy gives the same


def test_a_fixed_seed_is_deterministic_and_cached(
    cache_server: Server, make_client: MakeClient
) -> None:
    client = make_client(cache_server)
    sampled = {"temperature": 1.0, "seed": 1234}
    first, miss = _chat(client, **sampled)
    again, recomputed = _chat(client, **sampled, extra_body={"cache": False})
    cached, hit = _chat(client, **sampled)
    assert (miss, recomputed, hit) == ("miss", "miss", "hit")
    assert again == first == cached  # the engine itself gives one answer per seed


def test_completions_and_embeddings_are_hits_the_second_time(
    cache_server: Server, make_client: MakeClient
) -> None:
    client = make_client(cache_server)
    outcomes = []
    texts = []
    for _ in range(2):
        raw = client.completions.with_raw_response.create(
            model=SMOL, prompt="The sky is", max_tokens=6, temperature=0
        )
        outcomes.append(raw.headers["x-llm-router-cache"])
        texts.append(raw.parse().choices[0].text)
    vectors = []
    for _ in range(2):
        emb = client.embeddings.with_raw_response.create(
            model=defaults.MINILM_ID, input=["a red apple", "a green pear"]
        )
        outcomes.append(emb.headers["x-llm-router-cache"])
        vectors.append([d.embedding for d in emb.parse().data])
    assert outcomes == ["miss", "hit", "miss", "hit"]
    assert texts[0] == texts[1] and vectors[0] == vectors[1] and len(vectors[0][0]) == 384


def test_the_disk_tier_survives_a_restart_and_a_touched_model_serves_its_answers(
    cache_server: Server, make_client: MakeClient, cache_models: Path
) -> None:
    client = make_client(cache_server)
    params = {"temperature": 0, "seed": 99}
    first, _ = _chat(client, **params)
    cache_server.stop()
    cache_server.start()
    client = make_client(cache_server)
    after_restart, hit = _chat(client, **params)
    assert hit == "hit" and after_restart == first
    _chat(client, **params, extra_headers={"Cache-Control": "no-cache"})  # loads the model
    model = cache_models / f"{SMOL}.gguf"
    os.utime(model)  # a new mtime, the same bytes as the running worker read
    headers = []
    for _ in range(100):
        touched, header = _chat(client, **params)
        headers.append(header)
        if header == "hit":
            break
        time.sleep(0.05)
    # the same bytes are the same identity: the answers stored before serve on, at once when
    # the worker's bytes were hashed before the touch (else once it is reloaded), never a miss
    assert headers[-1] == "hit" and "miss" not in headers and touched == first


def test_an_embedding_cached_in_one_encoding_serves_the_other(
    cache_server: Server, make_client: MakeClient
) -> None:
    """Found from outside: the openai SDK (base64 unless told) and a raw client (floats) each
    missed the other's entry, though the vectors are the same."""
    texts = ["a blue whale", "a grey heron"]
    sdk = make_client(cache_server).embeddings.with_raw_response.create(
        model=defaults.MINILM_ID, input=texts
    )
    answers = [
        httpx.post(
            cache_server.url + "/v1/embeddings",
            json={"model": defaults.MINILM_ID, "input": texts, "encoding_format": encoding},
            timeout=60,
        )
        for encoding in ("float", "base64")
    ]
    headers = [
        sdk.headers["x-llm-router-cache"],
        *(a.headers["x-llm-router-cache"] for a in answers),
    ]
    assert headers == ["miss", "hit", "hit"]
    floats = [d["embedding"] for d in answers[0].json()["data"]]
    assert [d.embedding for d in sdk.parse().data] == floats
    assert [d["embedding"] for d in answers[1].json()["data"]] == [to_base64(v) for v in floats]
