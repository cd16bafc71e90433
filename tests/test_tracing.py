"""OpenTelemetry traces, with the SDK's in-memory exporter: one server span per request with
its children (routing, each attempt with the failed one visible, queue, load, prefill, decode,
the upstream call), GenAI attributes, the client's traceparent continued and passed on."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inproc import app_client, fake_models
from llm_router.config import ModelConfig, RouteConfig, Settings
from llm_router.tracing import Tracing
from otlp_receiver import otlp_receiver
from servers import SMOL, MakeClient, Server

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on for the apps the test makes, into an in-memory exporter: the server's own
    path (create_app asks `Tracing.from_settings`, its front layer opens the spans)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(Tracing, "from_settings", classmethod(lambda cls, s: cls(provider)))
    return memory


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


async def test_a_local_request_has_its_spans_under_one_server_span(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with app_client(tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "chat", **CHAT},
            headers={"traceparent": TRACEPARENT},
        )
    assert response.status_code == 200
    spans = _by_name(exporter.get_finished_spans())
    [server] = spans["POST /v1/chat/completions"]
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # the client's trace, continued
    attrs = server.attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "chat"
    assert attrs["gen_ai.usage.output_tokens"] == 3 and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["http.response.status_code"] == 200
    [route] = spans["llm_router.route"]
    [attempt] = spans["llm_router.attempt"]
    assert _parent(route) == server.context.span_id
    assert _parent(attempt) == route.context.span_id
    for name in ("llm_router.queue", "llm_router.model_load", "llm_router.prefill"):
        [child] = spans[name]
        assert _parent(child) == attempt.context.span_id, name
    [decode] = spans["llm_router.decode"]
    # the attempt lasts as long as its target's work: the decode is in it (it ended at the
    # first token, and the decode hung from the server span; found from outside)
    assert _parent(decode) == attempt.context.span_id
    assert attempt.end_time is not None and decode.end_time is not None
    assert attempt.end_time >= decode.end_time
    assert (decode.attributes or {})["gen_ai.usage.output_tokens"] == 3
    assert all(s.context.trace_id == server.context.trace_id for s in exporter.get_finished_spans())


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[str, str, list[dict[str, str]]]]:
    """Two OpenAI-compatible upstreams on 127.0.0.1: one failing (500), one answering; the
    headers of every request they got."""
    seen: list[dict[str, str]] = []

    async def failing(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"error": {"message": "down"}}, status=500)

    async def answering(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = await request.json()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
            }
        )

    runners = []
    urls = []
    for handler in (failing, answering):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}/v1")
    yield urls[0], urls[1], seen
    for runner in runners:
        await runner.cleanup()


async def test_a_fallback_shows_both_attempts_and_the_upstream_gets_the_traceparent(
    tmp_path: Path,
    exporter: InMemorySpanExporter,
    upstreams: tuple[str, str, list[dict[str, str]]],
) -> None:
    down, up, seen = upstreams
    models = [
        ModelConfig(id="down", provider="openai", base_url=down, health_check_interval=0),
        ModelConfig(id="up", provider="openai", base_url=up, health_check_interval=0),
    ]
    routes = [RouteConfig(name="pair", strategy="round-robin", targets=["down"], fallbacks=["up"])]
    async with app_client(tmp_path, models=models, routes=routes) as client:
        response = await client.post("/v1/chat/completions", json={"model": "pair", **CHAT})
    assert response.status_code == 200, response.text
    spans = _by_name(exporter.get_finished_spans())
    [server] = spans["POST /v1/chat/completions"]
    failed, served = sorted(spans["llm_router.attempt"], key=lambda s: s.start_time or 0)
    assert (failed.attributes or {})["llm_router.target"] == "down"
    assert not failed.status.is_ok and (served.attributes or {})["llm_router.target"] == "up"
    assert served.status.is_ok
    calls = spans["POST /chat/completions"]
    assert len(calls) == 2 and {_parent(c) for c in calls} == {
        failed.context.span_id,
        served.context.span_id,
    }
    trace_id = f"{server.context.trace_id:032x}"
    assert [h["traceparent"].split("-")[1] for h in seen] == [trace_id, trace_id]
    sent = {h["traceparent"].split("-")[2] for h in seen}
    assert sent == {f"{c.context.span_id:016x}" for c in calls}  # each call's own span
    assert (server.attributes or {})["gen_ai.response.model"] == "up"


async def test_tracing_is_off_without_an_endpoint(tmp_path: Path) -> None:
    assert Tracing.from_settings(Settings()) is None
    async with app_client(tmp_path) as client:
        assert client._transport.app.state.tracing is None  # type: ignore[attr-defined]


def test_an_endpoint_in_the_environment_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-router")
    tracing = Tracing.from_settings(Settings())
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes["service.name"] == "my-router"
    finally:
        tracing.shutdown()


def test_a_real_server_exports_its_spans_over_otlp(
    tmp_path: Path, models_dir: Path, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_receiver() as (url, received):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "router-under-test")
        srv = Server(tmp_path, {"models_dir": str(models_dir)}).start()
        try:
            client = make_client(srv)
            done = client.chat.completions.create(
                model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert done.choices[0].message.content is not None
        finally:
            srv.stop()  # the server exports what is left as it stops
    spans = [(span.name, resource) for span, resource in received.spans()]
    names = {name for name, _ in spans}
    assert {
        "POST /v1/chat/completions",
        "llm_router.route",
        "llm_router.attempt",
        "llm_router.model_load",
        "llm_router.prefill",
        "llm_router.decode",
    } <= names
    services = {
        a.value.string_value
        for _, resource in spans
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert services == {"router-under-test"}


async def test_a_trace_not_sampled_makes_no_spans_but_goes_on_to_the_upstream(
    tmp_path: Path,
    exporter: InMemorySpanExporter,
    upstreams: tuple[str, str, list[dict[str, str]]],
) -> None:
    """The client's trace, not sampled (flags 00): nothing is exported, and the upstream gets
    the same trace id with the same decision, so it does not start a trace of its own."""
    _, up, seen = upstreams
    models = [ModelConfig(id="up", provider="openai", base_url=up, health_check_interval=0)]
    async with app_client(tmp_path, models=models) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "up", **CHAT},
            headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00"},
        )
    assert response.status_code == 200, response.text
    assert exporter.get_finished_spans() == ()
    [sent] = [h["traceparent"] for h in seen]
    version, trace_id, parent, flags = sent.split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert parent != "b7ad6b7169203331" and int(flags, 16) & 0x01 == 0


@pytest.mark.parametrize("rate", [0.0, 1e-05, 0.1, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("parent_based", [True, False])
def test_a_ratio_sampler_decides_roots_as_the_sdk_does(rate: float, parent_based: bool) -> None:
    """OTEL_TRACES_SAMPLER=(parentbased_)traceidratio: the roots decided without the SDK's
    sampler objects are the ones it would sample, trace by trace."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = TraceIdRatioBased(rate)
    sampler = ParentBased(ratio) if parent_based else ratio
    tracing = Tracing(TracerProvider(sampler=sampler), sink=object())
    assert tracing.root_bound is not None
    state = random.getstate()
    random.seed(20)  # the trace ids (tracing.py draws them from `random`): a fixed set
    try:
        decided = [tracing.root("GET /", {}, []) for _ in range(2000)]
    finally:
        random.setstate(state)
    for s in decided:
        sdk = sampler.should_sample(None, s.trace_id, "GET /").decision.is_sampled()
        assert bool(s.flags & 0x01) == sdk
    sampled = sum(bool(s.flags & 0x01) for s in decided)
    assert abs(sampled / len(decided) - rate) < 0.05


def test_always_on_roots_are_sampled_and_other_samplers_are_asked() -> None:
    """The SDK's default sampler (parent-based, always on) samples every root without being
    asked; a sampler that does not decide on the trace id alone is asked for each."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    default = Tracing(TracerProvider(), sink=object())
    assert all(default.root("GET /", {}, []).flags & 0x01 for _ in range(100))
    asked = Tracing(TracerProvider(sampler=ParentBased(ALWAYS_OFF)), sink=object())
    assert asked.root_bound is None
    assert not any(asked.root("GET /", {}, []).flags & 0x01 for _ in range(100))


async def test_server_spans_are_named_by_route_never_by_a_clients_path(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """Named `{method} {path}`, every random path a client tried made a new span name (an
    unbounded set for the trace backend; found from outside): a matched route names it by
    its template, anything else by the method alone."""
    async with app_client(tmp_path) as client:
        for i in range(3):
            assert (await client.get(f"/v1/nope-{i}")).status_code == 404
        assert (await client.get("/v1/models/chat")).status_code == 200
        assert (
            await client.post("/v1/chat/completions", json={"model": "chat", **CHAT})
        ).is_success
    names = sorted(s.name for s in exporter.get_finished_spans() if s.parent is None)
    assert names == [
        "GET",
        "GET",
        "GET",
        "GET /v1/models/{model:path}",
        "POST /v1/chat/completions",
    ]
    [listed] = [s for s in exporter.get_finished_spans() if s.name.startswith("GET /v1/models")]
    assert (listed.attributes or {})["http.route"] == "/v1/models/{model:path}"


async def test_the_route_span_lasts_to_the_answers_end_and_says_the_inference(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """The route span ended at the first token while its attempt ran on to the answer's end
    (a parent ending before its child), and the GenAI attributes of an inference were short:
    no provider, no sampling asked, the finish reasons on the decode span only (found from
    outside)."""
    async with app_client(tmp_path) as client:
        body = {"model": "chat", **CHAT, "temperature": 0.5, "top_p": 0.9}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    spans = _by_name(exporter.get_finished_spans())
    [server] = spans["POST /v1/chat/completions"]
    [route] = spans["llm_router.route"]
    [attempt] = spans["llm_router.attempt"]
    [decode] = spans["llm_router.decode"]
    assert route.end_time is not None and attempt.end_time is not None
    assert route.end_time >= attempt.end_time >= (decode.end_time or 0)
    assert (server.attributes or {})["gen_ai.provider.name"] == "llm_router"
    asked = route.attributes or {}
    assert asked["gen_ai.request.max_tokens"] == 3
    assert asked["gen_ai.request.temperature"] == 0.5 and asked["gen_ai.request.top_p"] == 0.9
    for s in (route, attempt):
        assert (s.attributes or {})["gen_ai.response.finish_reasons"] == ("length",), s.name


async def test_an_upstream_call_span_follows_the_http_client_conventions(
    tmp_path: Path,
    exporter: InMemorySpanExporter,
    upstreams: tuple[str, str, list[dict[str, str]]],
) -> None:
    """An upstream's 500 left its client span UNSET (a client span is an error from 400
    up), a streamed call had no status code, and `server.address` held the whole URL."""
    down, up, _ = upstreams
    models = [
        ModelConfig(id="down", provider="openai", base_url=down, health_check_interval=0),
        ModelConfig(id="up", provider="openai", base_url=up, health_check_interval=0),
    ]
    async with app_client(tmp_path, models=models) as client:
        failed = await client.post("/v1/chat/completions", json={"model": "down", **CHAT})
        streamed = await client.post(
            "/v1/chat/completions", json={"model": "up", **CHAT, "stream": True}
        )
    assert failed.status_code >= 500 and streamed.status_code == 200
    calls = {
        (s.attributes or {})["gen_ai.request.model"]: s
        for s in exporter.get_finished_spans()
        if s.name == "POST /chat/completions"
    }
    bad, good = calls["down"], calls["up"]
    assert not bad.status.is_ok and bad.status.status_code.name == "ERROR"
    assert (bad.attributes or {})["http.response.status_code"] == 500
    assert (bad.attributes or {})["error.type"] == "500"
    assert (good.attributes or {})["http.response.status_code"] == 200
    assert good.status.status_code.name == "UNSET"
    for span, url in ((bad, down), (good, up)):
        attrs = span.attributes or {}
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["server.port"] == int(url.rsplit(":", 1)[1].split("/")[0])
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.operation.name"] == "chat"


async def test_an_embedding_that_loads_its_model_shows_the_load(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """An embedding request was one server span, its model's cold load in it unseen: it has
    the route, attempt, queue and model-load spans a generation has."""
    async with app_client(tmp_path) as client:
        done = await client.post("/v1/embeddings", json={"model": "chat", "input": "hi"})
    assert done.status_code == 200, done.text
    spans = _by_name(exporter.get_finished_spans())
    [server] = spans["POST /v1/embeddings"]
    [route] = spans["llm_router.route"]
    [attempt] = spans["llm_router.attempt"]
    assert _parent(route) == server.context.span_id
    assert _parent(attempt) == route.context.span_id
    for name in ("llm_router.queue", "llm_router.model_load"):
        [child] = spans[name]
        assert _parent(child) == attempt.context.span_id, name
    assert (attempt.attributes or {})["llm_router.target"] == "chat"


async def test_a_decode_cut_by_the_client_leaving_is_ended(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """A client gone mid-stream left a prefill span and no decode span at all: the decode
    ends where it was cut, as cancelled, inside its attempt."""
    models = fake_models(tmp_path, slow={"token_seconds": 0.01})
    async with app_client(tmp_path, models=models) as client:
        body = {"model": "slow", **CHAT, "max_tokens": 1000, "stream": True}
        asked = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        while not any(s.name == "llm_router.prefill" for s in exporter.get_finished_spans()):
            assert not asked.done()
            await asyncio.sleep(0.01)
        asked.cancel()  # the client leaves
        with contextlib.suppress(asyncio.CancelledError):
            await asked
    spans = _by_name(exporter.get_finished_spans())
    [decode] = spans["llm_router.decode"]
    [attempt] = spans["llm_router.attempt"]
    [route] = spans["llm_router.route"]
    assert _parent(decode) == attempt.context.span_id
    assert decode.status.status_code.name == "ERROR"
    assert (decode.attributes or {})["error.type"] == "cancelled"
    assert (route.end_time or 0) >= (attempt.end_time or 0) >= (decode.end_time or 0) > 0
