"""The front layer (server/front.py) as the server assembles it: one request's id, Host check,
trace span and log line agree with one another; and the exporter process (trace_export.py)
exports the spans the request path recorded, with their ids, parents, attributes and status."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inproc import app_client
from llm_router import trace_export, tracing
from llm_router.trace_export import ExporterProcess
from llm_router.tracing import Tracing
from otlp_receiver import Received
from servers import Server

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on for the apps the test makes, into an in-memory exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(Tracing, "from_settings", classmethod(lambda cls, s: cls(provider)))
    return memory


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_the_id_the_span_and_the_line_of_a_request_agree(
    tmp_path: Path, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    spans = exporter.get_finished_spans()
    [server] = _named(spans, "POST /v1/chat/completions")
    attrs = server.attributes or {}
    assert attrs["llm_router.request_id"] == request_id
    assert attrs["http.response.status_code"] == 200
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.response.model"] == "chat"
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    [route] = _named(spans, "llm_router.route")
    assert route.parent is not None and route.parent.span_id == server.context.span_id
    assert all(s.context.trace_id == server.context.trace_id for s in spans)
    [line] = [r for r in caplog.records if r.name == "llm_router.requests"]
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["request_id"] == request_id and fields["status"] == 200
    # from the log line to its trace: the server span's ids (the line had none)
    assert fields["trace_id"] == TRACE_ID and fields["span_id"] == f"{server.context.span_id:016x}"
    assert f"trace_id={TRACE_ID} span_id={fields['span_id']}" in line.getMessage()


async def test_a_refused_host_is_answered_logged_and_traced(
    tmp_path: Path, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path) as client:
        response = await client.get("/health", headers={"host": "rebound.example"})
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "host_not_allowed"
    # never routed: named by the route that would have served it
    [server] = _named(exporter.get_finished_spans(), "GET /health")
    assert (server.attributes or {})["http.response.status_code"] == 421
    [line] = [r for r in caplog.records if r.name == "llm_router.requests"]
    assert line.fields["status"] == 421  # type: ignore[attr-defined]
    assert line.fields["request_id"] == response.headers["x-request-id"]  # type: ignore[attr-defined]


async def test_a_trace_the_client_does_not_sample_is_not_exported(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with app_client(tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00"},
        )
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()


def test_the_exporter_process_exports_the_spans_as_recorded(
    otlp: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "exported")
    url, received = otlp
    t = Tracing(TracerProvider(), ExporterProcess(url))
    root = t.root("POST /v1/chat/completions", {"url.path": "/v1/chat/completions"}, [])
    with tracing.activate(root):
        with tracing.span("llm_router.route", {"gen_ai.request.model": "m"}) as route:
            call = tracing.start("POST /chat/completions", client=True)
            headers = tracing.inject({}, call)
            tracing.end(call, error=ConnectionError("refused"))
            route.set_attribute("llm_router.target", "t")
        tracing.record("llm_router.decode", 1_000, 2_000, {"gen_ai.usage.output_tokens": 3})
    t.shutdown()  # waits for the exporter process's last export
    assert call is not None
    spans = {s.name: (s, resource) for s, resource in received.spans()}
    server, resource = spans["POST /v1/chat/completions"]
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "exported"
    assert server.span_id == root.span_id.to_bytes(8, "big") and server.parent_span_id == b""
    got_route, _ = spans["llm_router.route"]
    assert got_route.parent_span_id == server.span_id
    assert {a.key: a.value.string_value for a in got_route.attributes} == {
        "gen_ai.request.model": "m",
        "llm_router.target": "t",
    }
    upstream, _ = spans["POST /chat/completions"]
    assert upstream.parent_span_id == got_route.span_id and upstream.kind == 3  # client
    assert upstream.status.code == 2 and upstream.status.message == "refused"
    trace_id, span_id = headers["traceparent"].split("-")[1:3]
    assert bytes.fromhex(trace_id) == upstream.trace_id == server.trace_id
    assert bytes.fromhex(span_id) == upstream.span_id
    decode, _ = spans["llm_router.decode"]
    assert (decode.start_time_unix_nano, decode.end_time_unix_nano) == (1_000, 2_000)
    assert decode.attributes[0].value.int_value == 3


async def test_an_exporter_process_that_stops_reading_costs_spans_not_the_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipe fills and the export thread blocks on it: the loop goes on, and once
    MAX_PENDING spans wait, the oldest are dropped (this process does not grow), which is
    logged once the thread is back. Shutting down after the process died returns."""
    monkeypatch.setattr(trace_export, "MAX_PENDING", 5_000)
    monkeypatch.setattr(trace_export, "_FLUSH_S", 0.01)
    sink = ExporterProcess(None)

    def stuck() -> subprocess.Popen[bytes]:  # a process that never reads its stdin
        sink.proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE)
        return sink.proc

    monkeypatch.setattr(sink, "_start", stuck)  # the export thread starts it
    record = ("span", 0, 1, 2, 0, False, 1, "", 1_000, 2_000, {"k": "v" * 40}, None, ())
    try:
        for _ in range(40):
            for _ in range(500):
                sink.put(record)  # type: ignore[arg-type]
            await asyncio.sleep(0.02)  # the export thread's flushes run meanwhile
        assert len(sink.pending) == 5_000  # 20,000 put, the thread blocked on its first
    finally:
        if sink.proc is not None:  # the blocked write fails, and shutdown returns
            sink.proc.kill()
            await asyncio.to_thread(sink.proc.wait)
        await asyncio.to_thread(sink.shutdown)
    assert "behind; dropping the oldest spans" in caplog.text


def _put_spans(sink: ExporterProcess, count: int) -> None:
    record = ("span", 0, 1, 2, 0, False, 1, "", 1_000, 2_000, {"k": "v"}, None, ())
    for _ in range(count):
        sink.put(record)  # type: ignore[arg-type]


def test_a_collector_that_is_down_does_not_hold_up_shutdown(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The exporter retries a refused collector for 10 s a batch; at shutdown it gets `drain`
    seconds, then drops what is left, says so, and exits by itself (it was killed after 30 s)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: connections to it are refused
    sink = ExporterProcess(f"http://127.0.0.1:{port}")
    _put_spans(sink, 300)
    sink.shutdown(drain=0.5)
    assert sink.proc is not None and sink.proc.returncode == 0
    assert "up to 300 dropped" in capfd.readouterr().err


def test_a_collector_that_never_answers_does_not_hold_up_shutdown_either(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A collector that takes the connection and never answers: the exporter's request waited
    for its timeout after SIGTERM, past the 5 s the process then gets, and it was killed
    without saying what it dropped (the server's stop took 8 s: found from outside)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen()  # connections complete in the backlog; nothing reads or answers
        sink = ExporterProcess(f"http://127.0.0.1:{stalled.getsockname()[1]}")
        _put_spans(sink, 300)
        sink.shutdown(drain=0.5)
    assert sink.proc is not None and sink.proc.returncode == 0  # not killed
    assert "up to 300 dropped" in capfd.readouterr().err


def test_spans_a_collector_that_is_down_refused_are_counted(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The exporter gives up on a refused collector after its timeout: those spans were lost
    with no count (only a stop cutting the retries short said how many)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: connections to it are refused
    sink = ExporterProcess(f"http://127.0.0.1:{port}")
    _put_spans(sink, 300)
    sink.shutdown(drain=60)  # returns once the process is done: its export failed by itself
    assert sink.proc is not None and sink.proc.returncode == 0
    err = capfd.readouterr().err
    assert "the collector did not take 300 spans" in err and "dropped" not in err


def test_the_exporter_process_logs_json_in_a_json_log(
    tmp_path: Path, models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`log_format: json`: the exporter process's lines (the SDK's retries, the spans it
    dropped) were plain text in the server's JSON log (found from outside)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed again: connections to it are refused
    config = {
        "models_dir": str(models_dir),
        "log_format": "json",
        "otel_endpoint": f"http://127.0.0.1:{port}",
    }
    srv = Server(tmp_path, config).start()
    try:
        for _ in range(3):
            assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    finally:
        srv.stop()
    lines = [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.strip()]
    exporter = [x for x in lines if x["logger"].startswith(("llm_router.otlp_export", "opentel"))]
    assert any(x["logger"].startswith("opentelemetry.exporter") for x in exporter)
    said = [x for x in exporter if "spans_dropped" in x or "spans_lost" in x]
    assert said and all(x["level"] == "warning" for x in said)
    assert sum(x.get("spans_dropped", 0) + x.get("spans_lost", 0) for x in said) >= 3


async def test_a_refusal_before_routing_is_named_by_its_route(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    """A 415 on `POST /admin/reload` (the body guard answers it before any routing) was counted
    as route="unmatched" and its span named "POST" alone (found from outside); a path no
    route serves is still "unmatched"."""
    async with app_client(tmp_path) as client:
        refused = await client.post(
            "/admin/reload", content=b"x", headers={"content-type": "text/plain"}
        )
        assert refused.status_code == 415
        assert (await client.post("/no/such/path", content=b"x")).status_code == 415
        metrics = (await client.get("/metrics")).text
    assert 'llm_router_http_errors_total{route="/admin/reload",status="415"} 1.0' in metrics
    assert 'llm_router_http_errors_total{route="unmatched",status="415"} 1.0' in metrics
    [server] = _named(exporter.get_finished_spans(), "POST /admin/reload")
    assert (server.attributes or {})["http.route"] == "/admin/reload"
