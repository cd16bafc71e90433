"""Failed attempts per target on /metrics (`llm_router_target_failures_total`), in-process on the
fake engine: counted when a fallback then serves (as `llm_router_fallbacks_total` is) and
also when nothing does, which the fallbacks cannot show; and the attempts a route made after a
failed one (`llm_router_retries_total`), served or not."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from inproc import app_client, fake_models


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_failed_attempts_are_counted_per_target_served_by_a_fallback_or_not(
    tmp_path: Path,
) -> None:
    chat, broken = fake_models(tmp_path, chat={}, broken={"fail_load": True})
    models = [chat, broken.model_copy(update={"quality": 0.9})]  # tried first
    routes = [{"name": "auto", "strategy": "quality-first", "targets": ["broken", "chat"]}]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with app_client(tmp_path, models=models, routes=routes) as client:
        before = _samples((await client.get("/metrics")).text)
        served = await client.post("/v1/chat/completions", json={"model": "auto", **body})
        after_fallback = _samples((await client.get("/metrics")).text)
        failed = await client.post("/v1/chat/completions", json={"model": "broken", **body})
        after_failure = _samples((await client.get("/metrics")).text)
    assert served.status_code == 200 and served.json()["model"] == "chat"
    assert failed.status_code >= 500 and failed.json()["error"]["type"]
    failures = ("llm_router_target_failures_total", (("model", "broken"),))
    fallbacks = (
        "llm_router_fallbacks_total",
        (("error", "ModelLoadFailed"), ("route", "auto"), ("target", "broken")),
    )
    assert (before.get(failures, 0), after_fallback[failures], after_failure[failures]) == (0, 1, 2)
    assert after_fallback[fallbacks] == after_failure[fallbacks] == 1
    assert after_failure[("llm_router_target_failures_total", (("model", "chat"),))] == 0


async def test_retries_are_counted_per_route_and_target_served_or_not(tmp_path: Path) -> None:
    chat, one, two = fake_models(
        tmp_path, chat={}, one={"fail_load": True}, two={"fail_load": True}
    )
    models = [
        chat,
        one.model_copy(update={"quality": 0.9}),
        two.model_copy(update={"quality": 0.8}),
    ]
    routes = [
        {"name": "auto", "strategy": "quality-first", "targets": ["one", "two", "chat"]},
        {"name": "dead", "strategy": "quality-first", "targets": ["one", "two"]},
        {"name": "capped", "strategy": "quality-first", "targets": ["one", "chat"], "retries": 0},
    ]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with app_client(tmp_path, models=models, routes=routes) as client:
        served = await client.post("/v1/chat/completions", json={"model": "auto", **body})
        failed = await client.post("/v1/chat/completions", json={"model": "dead", **body})
        capped = await client.post("/v1/chat/completions", json={"model": "capped", **body})
        seen = _samples((await client.get("/metrics")).text)
    assert served.status_code == 200 and served.json()["model"] == "chat"
    assert failed.status_code >= 500 and capped.status_code >= 500
    retries = {
        labels: value
        for (name, labels), value in seen.items()
        if name == "llm_router_retries_total"
    }
    assert retries == {
        (("route", "auto"), ("target", "two")): 1,
        (("route", "auto"), ("target", "chat")): 1,
        (("route", "dead"), ("target", "two")): 1,
    }
