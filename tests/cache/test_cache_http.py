"""The response cache through the in-process app on the fake engine: hits, misses, headers,
Cache-Control, the body's `cache` field, streaming hits, single flight, model identity."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from inproc import app_client, fake_models

CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
    "max_tokens": 8,
}


def _computed(metrics: str) -> float:
    """Requests the fake model actually computed (finished with a finish reason)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("llm_router_requests_total{") and 'model="chat"' in line:
            if 'outcome="cache_hit"' not in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _post(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_a_repeated_greedy_chat_is_served_from_cache(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        first = await _post(client, CHAT)
        second = await _post(client, CHAT)
        metrics = (await client.get("/metrics")).text
    assert first.headers["x-llm-router-cache"] == "miss"
    assert second.headers["x-llm-router-cache"] == "hit"
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    assert b["model"] == "chat" and second.headers["x-llm-router-model"] == "chat"
    assert a["id"] != b["id"]
    assert _computed(metrics) == 1
    assert 'llm_router_cache_lookups_total{result="hit",tier="memory"} 1.0' in metrics


async def test_sampled_requests_are_not_cached(tmp_path: Path) -> None:
    body = {**CHAT, "temperature": 0.7}
    async with app_client(tmp_path) as client:
        first = await _post(client, body)
        second = await _post(client, body)
    assert "x-llm-router-cache" not in first.headers
    assert "x-llm-router-cache" not in second.headers


async def test_a_fixed_seed_is_cached_per_seed(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        one = await _post(client, {**CHAT, "temperature": 0.9, "seed": 1})
        again = await _post(client, {**CHAT, "temperature": 0.9, "seed": 1})
        other = await _post(client, {**CHAT, "temperature": 0.9, "seed": 2})
    assert [r.headers["x-llm-router-cache"] for r in (one, again, other)] == ["miss", "hit", "miss"]


async def test_llama_cpps_random_seed_is_not_a_fixed_one(tmp_path: Path) -> None:
    """`seed: -1` (and 4294967295, LLAMA_DEFAULT_SEED) is llama.cpp's random seed: its
    random answer was stored and replayed as if the seed fixed it (found from outside)."""
    async with app_client(tmp_path) as client:
        for seed in (-1, 2**32 - 1):
            answers = [
                await _post(client, {**CHAT, "temperature": 0.9, "seed": seed}) for _ in range(2)
            ]
            assert all("x-llm-router-cache" not in r.headers for r in answers), seed


async def test_fields_that_do_not_change_the_answer_share_an_entry(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        await _post(client, CHAT)
        same = await _post(client, {**CHAT, "user": "someone", "top_p": None, "n": 1})
        different = await _post(client, {**CHAT, "max_tokens": 3})
    assert same.headers["x-llm-router-cache"] == "hit"
    assert different.headers["x-llm-router-cache"] == "miss"


async def test_no_cache_skips_reading_and_no_store_skips_writing(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        stored_not = await _post(client, CHAT, **{"Cache-Control": "no-store"})
        still_miss = await _post(client, CHAT)
        fresh = await _post(client, CHAT, **{"Cache-Control": "no-cache"})
        body_flag = await _post(client, {**CHAT, "cache": False})
        hit = await _post(client, CHAT)
        bad = await client.post("/v1/chat/completions", json={**CHAT, "cache": "yes"})
    assert stored_not.headers["x-llm-router-cache"] == "miss"
    assert still_miss.headers["x-llm-router-cache"] == "miss"
    assert fresh.headers["x-llm-router-cache"] == "miss"
    assert body_flag.headers["x-llm-router-cache"] == "miss"
    assert hit.headers["x-llm-router-cache"] == "hit"
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache"


async def test_what_http_clients_send_for_a_fresh_answer_is_no_cache_too(tmp_path: Path) -> None:
    """`max-age=0` and HTTP/1.0's `Pragma: no-cache` got a hit (found from outside)."""
    async with app_client(tmp_path) as client:
        await _post(client, CHAT)
        asked = [
            {"Cache-Control": "max-age=0"},
            {"Cache-Control": "private, max-age = 0"},
            {"Pragma": "no-cache"},
        ]
        fresh = [await _post(client, CHAT, **headers) for headers in asked]
        hit = await _post(client, CHAT, **{"Cache-Control": "max-age=60", "Pragma": "no-cache"})
    assert [r.headers["x-llm-router-cache"] for r in fresh] == ["miss"] * 3
    assert hit.headers["x-llm-router-cache"] == "hit"  # Cache-Control says; Pragma is ignored


async def test_a_bad_cache_field_is_a_400_whatever_the_temperature(tmp_path: Path) -> None:
    """It was checked only on requests the cache could answer (found from outside)."""
    async with app_client(tmp_path) as client:
        for temperature in (0, 0.9):
            body = {**CHAT, "temperature": temperature, "cache": "x"}
            bad = await client.post("/v1/chat/completions", json=body)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache", bad.text
        unset = await client.post("/v1/chat/completions", json={**CHAT, "cache": None})
        assert unset.status_code == 200, unset.text  # null: the default, as elsewhere


async def test_a_hit_is_refused_what_a_miss_is_refused(tmp_path: Path) -> None:
    """`keep_alive` is no part of the key (it changes no answer), and it was checked only
    when a model was leased: after a greedy chat, the same body with `"keep_alive":
    "banana"` was answered 200 from the cache, a 400 on a miss (found from outside)."""
    embedding = {"model": "chat", "input": ["a"]}
    async with app_client(tmp_path) as client:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", embedding)):
            assert (await client.post(path, json=body)).status_code == 200
            hit = await client.post(path, json={**body, "keep_alive": "5m"})
            assert hit.headers["x-llm-router-cache"] == "hit", hit.text
            bad = await client.post(path, json={**body, "keep_alive": "banana"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive", path
            assert "not a duration" in bad.json()["error"]["message"]


async def test_completions_asking_for_logprobs_0_are_not_cached(tmp_path: Path) -> None:
    """`logprobs: 0` (the chosen token's alone) read as false: a `miss` every time that
    waited for the identical request in flight, then computed its own (found from outside)."""
    body = {"model": "chat", "prompt": "hi", "temperature": 0, "max_tokens": 5, "logprobs": 0}
    async with app_client(tmp_path) as client:
        answers = [await client.post("/v1/completions", json=body) for _ in range(2)]
    assert all(r.status_code == 200 for r in answers)
    assert all("x-llm-router-cache" not in r.headers for r in answers)


def _sse(text: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_a_stream_is_served_from_the_entry_of_a_whole_answer(tmp_path: Path) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with app_client(tmp_path) as client:
        whole = (await _post(client, CHAT)).json()
        streamed = await _post(client, body)
    assert streamed.headers["x-llm-router-cache"] == "hit"
    chunks = _sse(streamed.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_completions_and_embeddings_are_cached(tmp_path: Path) -> None:
    models = fake_models(tmp_path, chat={})
    completion = {"model": "chat", "prompt": "once", "temperature": 0, "max_tokens": 4}
    embedding = {"model": "chat", "input": ["a", "b"]}
    async with app_client(tmp_path, models=models) as client:
        c1 = await client.post("/v1/completions", json=completion)
        c2 = await client.post("/v1/completions", json=completion)
        e1 = await client.post("/v1/embeddings", json=embedding)
        e2 = await client.post("/v1/embeddings", json=embedding)
        e3 = await client.post("/v1/embeddings", json={**embedding, "input": ["c"]})
    assert [c1.headers["x-llm-router-cache"], c2.headers["x-llm-router-cache"]] == ["miss", "hit"]
    assert c1.json()["choices"] == c2.json()["choices"]
    assert e1.status_code == 200, e1.text
    assert [r.headers["x-llm-router-cache"] for r in (e1, e2, e3)] == ["miss", "hit", "miss"]
    assert e1.json()["data"] == e2.json()["data"]


async def test_concurrent_identical_requests_share_one_computation(tmp_path: Path) -> None:
    models = fake_models(tmp_path, chat={"token_seconds": 0.01})
    async with app_client(tmp_path, models=models) as client:
        responses = await asyncio.gather(*(_post(client, CHAT) for _ in range(6)))
        metrics = (await client.get("/metrics")).text
    assert len({json.dumps(r.json()["choices"]) for r in responses}) == 1
    assert _computed(metrics) == 1
    assert sorted(r.headers["x-llm-router-cache"] for r in responses) == ["hit"] * 5 + ["miss"]


async def test_a_changed_model_file_never_serves_a_stale_answer(tmp_path: Path) -> None:
    models = fake_models(tmp_path, changing={"reply": "old answer"})
    body = {**CHAT, "model": "changing"}
    async with app_client(tmp_path, models=models) as client:
        old = await _post(client, body)
        path = tmp_path / "changing.json"
        path.write_text(json.dumps({"reply": "new answer"}))
        await client.post("/models/unload", json={"model": "changing"})
        new = await _post(client, body)
    assert old.json()["choices"][0]["message"]["content"].startswith("old")
    assert new.headers["x-llm-router-cache"] == "miss"
    assert new.json()["choices"][0]["message"]["content"].startswith("new")


async def test_cache_off_serves_without_the_header(tmp_path: Path) -> None:
    async with app_client(tmp_path, cache={"enabled": False}) as client:
        first = await _post(client, CHAT)
        second = await _post(client, CHAT)
    assert "x-llm-router-cache" not in first.headers
    assert "x-llm-router-cache" not in second.headers


@pytest.mark.parametrize("when", ["now", "before the load began"])
async def test_a_model_changed_while_loaded_is_not_cached_until_reloaded(
    tmp_path: Path, when: str
) -> None:
    """`before the load began`: a file's time comes from the kernel's coarse clock, a few ms
    behind the one the load was timed with, so a file rewritten within that of a load was
    taken for one the worker had read, and the old worker's answer was stored under the new
    file's identity (a CI run failed so): the file is compared with the one the worker read."""
    models = fake_models(tmp_path, loaded={"reply": "old answer"})
    body = {**CHAT, "model": "loaded"}
    async with app_client(tmp_path, models=models) as client:
        await _post(client, body)
        path = tmp_path / "loaded.json"
        read = path.stat().st_mtime_ns
        path.write_text(json.dumps({"reply": "new answer"}))
        if when != "now":  # newer than what was read, older than the load's start
            os.utime(path, ns=(read + 1_000_000, read + 1_000_000))
        during = await _post(client, body)  # the old worker may still answer: not from cache
        assert during.headers.get("x-llm-router-cache") != "hit"
        for _ in range(100):  # until the new file is loaded and its answer stored
            after = await _post(client, body)
            assert after.headers.get("x-llm-router-cache") != "hit"
            if after.headers.get("x-llm-router-cache") == "miss":
                break
            await asyncio.sleep(0.02)
        again = await _post(client, body)
    assert after.json()["choices"][0]["message"]["content"].startswith("new")
    assert again.headers["x-llm-router-cache"] == "hit"
    assert again.json()["choices"] == after.json()["choices"]


async def test_several_answers_are_cached_each_and_honour_cache_control(tmp_path: Path) -> None:
    """`n` with a seed: each answer is its own entry (seed + j); the response says hit only
    when every answer came from the cache, and no-store / no-cache hold for all of them."""
    body = {**CHAT, "n": 3, "seed": 11, "temperature": 0.7}
    async with app_client(tmp_path) as client:
        not_stored = await _post(client, body, **{"Cache-Control": "no-store"})
        first = await _post(client, body)
        second = await _post(client, body)
        fresh = await _post(client, body, **{"Cache-Control": "no-cache"})
        wider = await _post(client, {**body, "n": 4})
        streamed = await _post(client, {**body, "stream": True})  # its headers go first
        streamed_new = await _post(client, {**body, "stream": True, "seed": 40})
    assert streamed.headers["x-llm-router-cache"] == "hit"  # it had none (found from outside)
    assert streamed_new.headers["x-llm-router-cache"] == "miss"
    assert not_stored.headers["x-llm-router-cache"] == "miss"
    assert first.headers["x-llm-router-cache"] == "miss"
    assert second.headers["x-llm-router-cache"] == "hit"
    assert fresh.headers["x-llm-router-cache"] == "miss"
    assert wider.headers["x-llm-router-cache"] == "miss"  # the fourth answer is new
    assert first.json()["choices"] == second.json()["choices"]
    assert [c["index"] for c in wider.json()["choices"]] == [0, 1, 2, 3]


async def test_a_split_route_caches_each_arm_apart(tmp_path: Path) -> None:
    """The first user's answer was served to every user of an A/B route, whichever arm they
    were given: the second arm never saw a deterministic request again (found from outside)."""
    from llm_router.routing.strategies import ab_split

    weights = {"a": 0.5, "b": 0.5}
    models = fake_models(tmp_path, a={"reply": "from a"}, b={"reply": "from b"})
    route = {"name": "ab", "targets": ["a", "b"], "split": weights}
    users = [f"user-{i}" for i in range(12)]
    async with app_client(tmp_path, models=models, routes=[route]) as client:
        for _ in range(2):  # a miss, then a hit, for each user: always the user's own arm
            for user in users:
                r = await _post(client, {**CHAT, "model": "ab", "user": user})
                arm = ab_split(weights, user, salt="ab")
                assert r.headers["x-llm-router-model"] == arm
                assert r.json()["choices"][0]["message"]["content"].startswith(f"from {arm}")
        assert r.headers["x-llm-router-cache"] == "hit"
        anonymous = [await _post(client, {**CHAT, "model": "ab"}) for _ in range(2)]
    assert {ab_split(weights, u, salt="ab") for u in users} == {"a", "b"}
    assert [r.headers.get("x-llm-router-cache") for r in anonymous] == [None, None]  # random arm


async def test_a_file_rewritten_in_place_with_its_mtime_put_back_is_never_a_hit(
    tmp_path: Path,
) -> None:
    """Same size, mtime restored (`rsync --inplace -t`): the cache served the answer of the
    old bytes (found from outside). Its ctime, which no one can set back, has the file hashed
    again: other bytes are another identity. A hard link or a chmod moves the ctime too: the
    same bytes, the same identity, so the answer is still a hit and the model stays loaded
    (the first version of this reloaded every model whose file another server linked)."""
    import os

    models = fake_models(tmp_path, edited={"reply": "old answer"})
    body = {**CHAT, "model": "edited"}
    path = tmp_path / "edited.json"
    async with app_client(tmp_path, models=models) as client:
        await _post(client, body)
        await asyncio.sleep(0.05)  # a ctime the clock can tell apart
        os.link(path, tmp_path / "linked.json.bak")
        path.chmod(0o600)
        linked = await _post(client, body)
        listing = (await client.get("/models")).json()["data"]
        before = path.stat()
        await asyncio.sleep(0.05)
        path.write_text(json.dumps({"reply": "new answer"}))  # the same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        assert path.stat().st_mtime_ns == before.st_mtime_ns
        edited = await _post(client, body)
        again = await _post(client, body)
    assert linked.headers["x-llm-router-cache"] == "hit"
    [state] = [m for m in listing if m["id"] == "edited"]
    assert state["status"]["value"] == "loaded"
    # its worker still holds the old bytes (a scan cannot tell): its answers are not stored
    # under the new bytes' identity (they were, and served on the next request)
    assert edited.headers.get("x-llm-router-cache") != "hit"
    assert again.headers.get("x-llm-router-cache") != "hit"


def _replace(path: Path, reply: str, age_seconds: float) -> None:
    """`mv` of another model file over `path`, its mtime `age_seconds` in the past (an earlier
    download, `cp -p`, `rsync -t`, `tar x`)."""
    incoming = path.with_name(".incoming")
    incoming.write_text(json.dumps({"reply": reply}))
    then = path.stat().st_mtime_ns - int(age_seconds * 1e9)
    os.utime(incoming, ns=(then, then))
    os.replace(incoming, path)


async def _reloaded(client: httpx.AsyncClient, body: dict[str, Any], reply: str) -> None:
    """Until the model serves `reply` (the manager reloaded it), asking past the cache."""
    for _ in range(200):
        r = await _post(client, {**body, "cache": False}, **{"Cache-Control": "no-store"})
        if r.json()["choices"][0]["message"]["content"].startswith(reply):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reloaded to {reply!r}")


async def test_a_file_replaced_by_an_older_one_never_gets_the_old_models_answers(
    tmp_path: Path,
) -> None:
    """A file replaced by one with an older mtime: the cache hashed the new file, the request
    ran on the still-loaded old worker, and its answer was stored under the new file's
    identity, then served once the new file was loaded (found from outside)."""
    models = fake_models(tmp_path, swapped={"reply": "old answer"})
    body = {**CHAT, "model": "swapped"}
    async with app_client(tmp_path, models=models) as client:
        await _post(client, {**body, "cache": False})  # loaded, its bytes hashed
        _replace(tmp_path / "swapped.json", "new answer", age_seconds=3600)
        during = await _post(client, body)  # the old worker may still answer: not stored
        await _reloaded(client, body, "new")
        after = await _post(client, body)
    assert during.headers.get("x-llm-router-cache") != "hit"
    assert after.json()["choices"][0]["message"]["content"].startswith("new")


async def test_an_answer_is_not_stored_when_its_model_loaded_other_bytes_than_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file replaced between the hash of a request's key and the load that request caused:
    the new file's answer was stored under the old file's identity, served once the old file
    was back (a rollback)."""
    from llm_router.cache import Identities

    models = fake_models(tmp_path, cold={"reply": "old answer"})
    body = {**CHAT, "model": "cold"}
    path = tmp_path / "cold.json"
    of = Identities.of
    swaps = [lambda: _replace(path, "new answer", age_seconds=10)]

    async def hashed_then_replaced(self: Identities, name: str) -> str:
        identity = await of(self, name)
        if name == "cold" and swaps:
            swaps.pop()()  # after the key's hash, before the load
        return identity

    monkeypatch.setattr(Identities, "of", hashed_then_replaced)
    async with app_client(tmp_path, models=models) as client:
        first = await _post(client, body)  # keyed as the old file, computed by the new one
        _replace(path, "old answer", age_seconds=20)  # rolled back
        await _reloaded(client, body, "old")
        again = await _post(client, body)
    assert first.json()["choices"][0]["message"]["content"].startswith("new")
    assert again.json()["choices"][0]["message"]["content"].startswith("old")
