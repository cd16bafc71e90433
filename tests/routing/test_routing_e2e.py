"""Routing through the real server: a second `llm-router serve` on the bundled model is a real
OpenAI-compatible upstream, a stub process injects faults. Every test checks which target
served (the `model` field and `x-llm-router-model`) and that no request was lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_router.routing.strategies import ab_split, api_key_id
from servers import GEMMA, SMOL, MakeClient, Server, Stub, new_server

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """A second real server: our own, on the bundled models."""
    srv = new_server(tmp_path_factory.mktemp("upstream"), models_dir=str(models_dir))
    yield srv
    srv.stop()


def remote(target_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": target_id,
        "provider": "openai",
        "base_url": url + "/v1",
        "timeout": 5,
        "health_check_interval": 0,
        **extra,
    }


def router_server(
    tmp_path: Path,
    models_dir: Path,
    models: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    **extra: Any,
) -> Server:
    return new_server(tmp_path, models_dir=str(models_dir), models=models, routes=routes, **extra)


def chat(client: openai.OpenAI, model: str, **kwargs: Any) -> tuple[str, str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, max_tokens=8, temperature=0, **kwargs
    )
    done = raw.parse()
    return done.model, raw.headers["x-llm-router-route"], done.choices[0].message.content or ""


def test_fallback_on_500_429_timeout_and_dead_upstream(
    tmp_path: Path, models_dir: Path, upstream: Server, stub: Stub, make_client: MakeClient
) -> None:
    # "real" is a real model on a shared 2-core box: its timeout is not what is under test
    models = [
        remote("flaky", stub.url, timeout=1),
        remote("real", upstream.url, model=SMOL, timeout=30, cost={"input": 100, "output": 200}),
    ]
    routes = [
        {
            "name": "auto",
            "strategy": "quality-first",
            "targets": ["flaky", "real"],
            "fallbacks": [GEMMA],
        }
    ]
    models[0]["quality"] = 0.9
    srv = router_server(tmp_path, models_dir, models, routes, breaker={"failure_threshold": 100})
    client = make_client(srv)
    try:
        assert chat(client, "auto")[0] == "flaky"
        for mode in ("500", "429", "hang"):
            stub.set(mode=mode)
            model, why, text = chat(client, "auto")
            assert model == "real", (mode, why)
            assert "flaky" in why and text
            if mode == "429":
                time.sleep(1.1)  # the route leaves flaky out for its Retry-After (1 s)
        stub.set(mode="500")
        stream = client.chat.completions.create(
            model="auto", messages=HELLO, max_tokens=5, stream=True, temperature=0
        )
        chunks = list(stream)
        assert {c.model for c in chunks} == {"real"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        seen = Samples(srv)
        fell = {
            e: seen.get("llm_router_fallbacks_total", route="auto", target="flaky", error=e)
            for e in ("UpstreamError", "UpstreamRateLimited", "UpstreamTimeout")
        }
        # two 500s (one streaming), a 429, a hang (a read timeout)
        assert fell == {"UpstreamError": 2, "UpstreamRateLimited": 1, "UpstreamTimeout": 1}
        assert seen.get("llm_router_retries_total", route="auto", target="real") == 4
        prompt = seen.get("llm_router_tokens_total", model="real", kind="prompt")
        completion = seen.get("llm_router_tokens_total", model="real", kind="completion")
        spent = (prompt * 100 + completion * 200) / 1e6
        assert spent > 0 and seen.get("llm_router_cost_total", model="real") == pytest.approx(spent)
        assert seen.get("llm_router_breaker_state", model="flaky", state="closed") == 1
        upstream.stop()  # the real upstream goes away mid-run: the local fallback serves
        model, why, text = chat(client, "auto")
        assert model == GEMMA and text is not None, why
    finally:
        srv.stop()
        upstream.start()


class Samples:
    """/metrics, read once."""

    def __init__(self, srv: Server) -> None:
        text = httpx.get(srv.url + "/metrics").text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def get(self, name: str, **labels: str) -> float:
        values = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(values) == 1, (name, labels)
        return values[0]


def test_breaker_opens_skips_and_closes(
    tmp_path: Path, models_dir: Path, stub: Stub, make_client: MakeClient
) -> None:
    routes = [
        {"name": "auto", "strategy": "quality-first", "targets": ["flaky"], "fallbacks": [SMOL]}
    ]
    srv = router_server(
        tmp_path,
        models_dir,
        [remote("flaky", stub.url, quality=0.9)],
        routes,
        breaker={"failure_threshold": 2, "cooldown": 20},  # > the skipped chats on a busy CI
        preload=[SMOL],
    )
    srv.wait_status(SMOL, "loaded")
    client = make_client(srv)
    try:
        stub.set(mode="500")
        for _ in range(2):
            assert chat(client, "auto")[0] == SMOL
        seen = stub.stats()["requests"]
        listing = httpx.get(srv.url + "/models").json()
        entry = {m["id"]: m for m in listing["data"]}["flaky"]
        assert entry["breaker"]["state"] == "open"
        (route,) = listing["routes"]
        assert route["name"] == "auto" and route["status"]["order"] == [SMOL]
        assert route["status"]["breakers"] == {"flaky": "open", SMOL: "closed"}
        # open: skipped, the upstream is not even asked (the chats that start within the
        # cooldown: on a loaded 2-core machine three chats of a real model can outlast it)
        closes = time.monotonic() + entry["breaker"]["retry_in"] - 0.5
        skipped = 0
        while skipped < 3 and time.monotonic() < closes:
            model, why, _ = chat(client, "auto")
            assert model == SMOL and "breaker open" in why
            skipped += 1
        assert skipped >= 1
        assert stub.stats()["requests"] == seen
        stub.set(mode="ok")
        entry = {m["id"]: m for m in httpx.get(srv.url + "/models").json()["data"]}["flaky"]
        time.sleep((entry["breaker"]["retry_in"] or 0) + 0.2)  # over: one probe closes it
        assert chat(client, "auto")[0] == "flaky"
        entry = {m["id"]: m for m in httpx.get(srv.url + "/models").json()["data"]}["flaky"]
        assert entry["breaker"]["state"] == "closed"
    finally:
        srv.stop()


def test_a_target_that_never_answers_leaves_the_rotation_without_health_checks(
    tmp_path: Path, models_dir: Path, stub: Stub, make_client: MakeClient
) -> None:
    """With health checks off, a target that takes connections and never sends even its
    answer's headers opened no breaker: a round-robin route sent it every other request, each
    waiting out its timeout. A timeout before the headers now has the target checked, and a
    failed check counts; a timeout of a target that still answers (a long generation) does
    not."""
    good = Stub()
    try:
        models = [remote("hanger", stub.url, timeout=1), remote("good", good.url)]
        routes = [{"name": "rr", "strategy": "round-robin", "targets": ["hanger", "good"]}]
        srv = router_server(tmp_path, models_dir, models, routes, breaker={"failure_threshold": 2})
        client = make_client(srv)

        def hanger() -> dict[str, Any]:
            listing = httpx.get(srv.url + "/models").json()["data"]
            entry: dict[str, Any] = {m["id"]: m for m in listing}["hanger"]
            return entry

        try:
            stub.set(mode="hang")  # busy, not dead: its /v1/models answers
            for _ in range(3):
                assert chat(client, "rr")[0] == "good"
                stream = client.chat.completions.create(
                    model="rr", messages=HELLO, max_tokens=4, stream=True
                )
                assert {c.model for c in stream} == {"good"}
            assert hanger()["breaker"]["state"] == "closed"
            stub.set(mode="frozen")
            served = []
            for _ in range(20):
                served.append(chat(client, "rr")[0])
                if (entry := hanger())["breaker"]["state"] == "open":
                    break
            assert entry["breaker"]["state"] == "open", entry
            assert entry["stats"]["error_rate"] > 0
            assert set(served) == {"good"}
            assert chat(client, "rr")[0] == "good"
        finally:
            srv.stop()
    finally:
        good.stop()


def test_ab_split_is_sticky_per_user_and_per_api_key(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    a, b = Stub(), Stub()
    weights = {"arm-a": 1.0, "arm-b": 1.0}
    routes = [
        {"name": "ab", "strategy": "quality-first", "targets": list(weights), "split": weights}
    ]
    srv = router_server(
        tmp_path, models_dir, [remote("arm-a", a.url), remote("arm-b", b.url)], routes
    )

    def one_per_arm(make_key: Callable[[int], str], key_id: Callable[[str], str]) -> list[str]:
        by_arm: dict[str, str] = {}
        for i in range(100):
            by_arm.setdefault(ab_split(weights, key_id(make_key(i)), salt="ab"), make_key(i))
        return [by_arm["arm-a"], by_arm["arm-b"]]

    try:
        client = make_client(srv)
        for user, arm in zip(one_per_arm(lambda i: f"user-{i}", str), weights, strict=True):
            served = {chat(client, "ab", user=user)[0] for _ in range(3)}
            assert served == {arm}
            assert f"split={arm}" in chat(client, "ab", user=user)[1]
        keys = one_per_arm(lambda i: f"sk-key-{i}", api_key_id)
        for key, arm in zip(keys, weights, strict=True):  # no user: the API key is the key
            keyed = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
            assert {chat(keyed, "ab")[0] for _ in range(6)} == {arm}  # by chance: 1 in 32
            # the key as `x-api-key`, as Anthropic's API reference sends it: the same key, the
            # same arm (with auth off it was no key, and each request drew its arm)
            asked = {"model": "ab", "max_tokens": 8, "messages": HELLO}
            served = {
                httpx.post(
                    srv.url + "/v1/messages", json=asked, headers={"x-api-key": key}, timeout=60
                ).json()["model"]
                for _ in range(6)
            }
            assert served == {arm}
        # a user named in the request wins over the key
        keyed = openai.OpenAI(base_url=srv.url + "/v1", api_key=keys[0], max_retries=0)
        user_b = one_per_arm(lambda i: f"user-{i}", str)[1]
        assert chat(keyed, "ab", user=user_b)[0] == "arm-b"
    finally:
        srv.stop()
        a.stop()
        b.stop()


def test_a_models_sampling_fills_what_the_request_leaves_out(
    tmp_path: Path, models_dir: Path, stub: Stub, make_client: MakeClient
) -> None:
    """As an Ollama Modelfile's PARAMETER lines: a local and a remote entry's `sampling`."""
    models = [
        {
            "id": SMOL,
            "system_prompt": "You are a helpful assistant.",
            "sampling": {"max_tokens": 5, "temperature": 0},
        },
        remote("box", stub.url, sampling={"temperature": 0.2, "stop": ["END"]}),
    ]
    srv = router_server(tmp_path, models_dir, models, [])
    try:
        client = make_client(srv)
        ask = [{"role": "user", "content": "Tell me a long story about a dragon."}]
        done = client.chat.completions.create(model=SMOL, messages=ask)
        assert done.usage is not None
        assert (done.usage.completion_tokens, done.choices[0].finish_reason) == (5, "length")
        longer = client.chat.completions.create(model=SMOL, messages=ask, max_tokens=9)
        assert longer.usage is not None and longer.usage.completion_tokens == 9  # its own wins
        client.chat.completions.create(model="box", messages=ask)
        sent = stub.stats()["last_body"]
        assert (sent["temperature"], sent["stop"]) == (0.2, ["END"])
        client.chat.completions.create(model="box", messages=ask, temperature=0.9, stop=["x"])
        sent = stub.stats()["last_body"]
        assert (sent["temperature"], sent["stop"]) == (0.9, ["x"])
    finally:
        srv.stop()


def test_speed_priority_prefers_the_faster_target(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    fast, slow = Stub(), Stub()
    fast.set(delay=0.0)
    slow.set(delay=0.15)
    routes = [{"name": "quick", "strategy": "speed-priority", "targets": ["slow", "fast"]}]
    srv = router_server(
        tmp_path, models_dir, [remote("slow", slow.url), remote("fast", fast.url)], routes
    )
    client = make_client(srv)
    try:
        for target in ("slow", "fast"):  # one measurement each
            chat(client, target)
        served = [chat(client, "quick")[0] for _ in range(4)]
        assert served == ["fast"] * 4
    finally:
        srv.stop()
        fast.stop()
        slow.stop()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tool_calls_from_a_remote_target_reach_the_client(
    tmp_path: Path, models_dir: Path, stub: Stub, make_client: MakeClient
) -> None:
    """A remote target's tool call comes back whole (not streaming) and piece by piece
    (streaming), and the conversation's tool turn goes up as the client sent it."""
    srv = router_server(tmp_path, models_dir, [remote("box", stub.url)], [])
    try:
        client = make_client(srv)
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        done = client.chat.completions.create(model="box", messages=ask, tools=[WEATHER_TOOL])
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and done.model == "box"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert (call.id, call.function.name) == ("call_1", "get_weather")
        assert call.function.arguments == '{"city": "Paris"}'
        assert stub.stats()["last_body"]["tools"] == [WEATHER_TOOL]

        stream = client.chat.completions.create(
            model="box", messages=ask, tools=[WEATHER_TOOL], stream=True
        )
        name, arguments, finish = "", "", None
        for chunk in stream:
            for c in chunk.choices:
                for piece in c.delta.tool_calls or []:
                    name += piece.function.name or "" if piece.function else ""
                    arguments += piece.function.arguments or "" if piece.function else ""
                finish = c.finish_reason or finish
        assert (name, arguments, finish) == ("get_weather", '{"city": "Paris"}', "tool_calls")

        turn = [
            *ask,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ]
        stub.set(reply="It is sunny in Paris.")
        answer = client.chat.completions.create(model="box", messages=turn)
        assert answer.choices[0].message.content == "It is sunny in Paris."
        sent = stub.stats()["last_body"]["messages"]
        assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}
    finally:
        srv.stop()


def test_requests_with_tools_go_only_where_tool_calls_are_made(
    tmp_path: Path, models_dir: Path, stub: Stub, make_client: MakeClient
) -> None:
    """A route prefers the local model, but a request with tools goes to a target that makes
    tool calls: here not SMOL (`tools: false` in its config), which asked directly says so
    instead of ignoring the tools; a route falls back to Gemma, which makes them."""
    routes = [
        {"name": "auto", "strategy": "quality-first", "targets": [SMOL, "box"]},
        {
            "name": "local-only",
            "strategy": "quality-first",
            "targets": [SMOL],
            "fallbacks": [GEMMA],
        },
    ]
    models = [remote("box", stub.url, quality=0.1), {"id": SMOL, "quality": 0.9, "tools": False}]
    srv = router_server(tmp_path, models_dir, models, routes)
    try:
        client = make_client(srv)
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        assert chat(client, "auto")[0] == SMOL  # without tools: the better local model
        done = client.chat.completions.create(model="auto", messages=ask, tools=[WEATHER_TOOL])
        assert done.model == "box" and done.choices[0].finish_reason == "tool_calls"
        # tool_choice "none": the tools will not be called, so the local model may answer
        plain = client.chat.completions.create(
            model="auto", messages=ask, max_tokens=4, tools=[WEATHER_TOOL], tool_choice="none"
        )
        assert plain.model == SMOL
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=SMOL, messages=ask, tools=[WEATHER_TOOL], stream=True
            )
        assert info.value.param == "tools" and "tool calls" in info.value.message
        local = client.chat.completions.create(  # seeded: some draws (and greedy) run long
            model="local-only",
            messages=ask,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            seed=1,
        )
        assert local.model == GEMMA and local.choices[0].finish_reason == "tool_calls"
        assert chat(client, SMOL)[0] == SMOL  # and the server serves on
    finally:
        srv.stop()


@pytest.mark.parametrize("streaming", [True, False])
def test_client_disconnect_cancels_upstream(
    tmp_path: Path, models_dir: Path, stub: Stub, streaming: bool
) -> None:
    srv = router_server(tmp_path, models_dir, [remote("slowpoke", stub.url, timeout=30)], [])
    try:
        stub.set(mode="ok", delay=0.5, reply=" ".join(["word"] * 40))
        body = {"model": "slowpoke", "messages": HELLO, "stream": streaming}
        url = srv.url + "/v1/chat/completions"
        if streaming:  # hang up after a few chunks
            with httpx.stream("POST", url, json=body, timeout=30) as r:
                for n, _ in enumerate(line for line in r.iter_lines() if line.startswith("data:")):
                    if n == 2:
                        break
        else:  # give up waiting for the whole answer
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=body, timeout=httpx.Timeout(5, read=1.2))
        deadline = time.monotonic() + 10
        while stub.stats()["disconnects"] < 1:
            assert time.monotonic() < deadline, "the upstream never saw the client go"
            time.sleep(0.1)
        assert stub.stats()["completed"] == 0
        time.sleep(0.3)
        assert (
            "Traceback" not in srv.log_path.read_text()
        )  # a client leaving is normal, not a server error
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def test_ensemble_vote_and_compare_on_two_local_models(
    server: Server, client: openai.OpenAI
) -> None:
    question = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 24,
    }
    r = httpx.post(
        server.url + "/v1/ensemble",
        timeout=120,
        json={**question, "targets": [SMOL, GEMMA, SMOL], "mode": "vote"},
    )
    assert r.status_code == 200, r.text
    data = r.json()
    # each target asked once (a duplicate would only multiply its cost), each answer counted once
    assert sum(data["ensemble"]["votes"].values()) == 2.0
    assert [a["model"] for a in data["ensemble"]["answers"]] == [SMOL, GEMMA]
    assert data["ensemble"]["chosen"] == data["model"]
    assert "Paris" in data["choices"][0]["message"]["content"]
    r = httpx.post(
        server.url + "/v1/compare", timeout=120, json={**question, "targets": [SMOL, GEMMA]}
    )
    rows = r.json()["data"]
    assert [row["model"] for row in rows] == [SMOL, GEMMA]
    for row in rows:
        assert row["error"] is None and row["latency_ms"] > 0
        assert row["usage"]["completion_tokens"] > 0 and "Paris" in row["content"]
    best = httpx.post(
        server.url + "/v1/ensemble",
        timeout=120,
        json={**question, "targets": [SMOL, GEMMA], "mode": "best-of"},
    )
    assert best.status_code == 200 and best.json()["ensemble"]["scorer"] == "agreement"
    missing = httpx.post(server.url + "/v1/ensemble", json={**question, "targets": [SMOL, "nope"]})
    assert missing.status_code == 404
