"""The exporter process's own OTLP encoding (trace_encode.py) against the SDK's: the same span
records, made into the SDK's `ReadableSpan`s and encoded by its `encode_spans`, must parse to
the same `ExportTraceServiceRequest`, for any ids, parents, trace states, attributes of every
value type, events and statuses; and batches go to the exporter in requests of at most
OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource

from llm_router import __version__, otlp_export
from llm_router.otlp_export import _Direct
from llm_router.trace_encode import Encoder
from llm_router.trace_export import Record
from otlp_receiver import otlp_receiver

RESOURCE = Resource.create({"service.name": "router-under-test", "deployment": "test"})

scalars = st.one_of(
    st.text(max_size=40),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=20),
    st.none(),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=10), max_size=4),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),  # finish reasons: cached as they are
    st.lists(st.booleans() | st.integers(0, 3), max_size=3).map(tuple),  # True == 1: not
    st.lists(st.integers(min_value=-(1 << 40), max_value=1 << 40), max_size=4),
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
)
attributes = st.dictionaries(
    st.sampled_from(["gen_ai.request.model", "url.path", "n", "x", "llm_router.route", ""])
    | st.text(max_size=12),
    values,
    max_size=8,
)
ids64 = st.integers(min_value=1, max_value=(1 << 64) - 1)
records = st.tuples(
    st.sampled_from(["POST /v1/chat/completions", "llm_router.route", "llm_router.attempt", ""])
    | st.text(max_size=20),
    st.integers(min_value=0, max_value=4),  # SpanKind
    st.integers(min_value=1, max_value=(1 << 128) - 1),
    ids64,
    st.just(0) | ids64,  # parent span id, 0: none
    st.booleans(),  # parent is remote
    st.sampled_from([0, 1, 2, 3]),  # trace flags
    st.sampled_from(["", "congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]),
    st.integers(min_value=0, max_value=(1 << 63) - 1),
    st.integers(min_value=0, max_value=(1 << 63) - 1),
    attributes,
    st.none() | st.tuples(st.just(2), st.none() | st.text(max_size=30)),  # ERROR status
    st.lists(
        st.tuples(
            st.sampled_from(["exception", "retry"]),
            st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
            st.integers(min_value=0, max_value=(1 << 63) - 1),
        ),
        max_size=2,
    ).map(tuple),
)


def _sdk(batch: list[Record]) -> ExportTraceServiceRequest:
    """What the SDK's encoder makes of the records, as the exporter process made them before."""
    spans: list[Any] = []

    class Collect:
        def on_end(self, span: Any) -> None:
            spans.append(span)

    put = _Direct(Collect(), RESOURCE)
    for rec in batch:
        put(rec)
    return encode_spans(spans)


def _ours(batch: list[Record]) -> ExportTraceServiceRequest:
    encoder = Encoder(RESOURCE.attributes, "llm_router", __version__, RESOURCE.schema_url)
    return ExportTraceServiceRequest.FromString(encoder.request(batch))


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=6))
def test_the_request_is_the_one_the_sdk_encodes(batch: list[Record]) -> None:
    assert _ours(batch) == _sdk(batch)


@settings(max_examples=50, deadline=None)
@given(st.lists(records, min_size=1, max_size=6))
def test_the_cache_gives_the_same_bytes_again(batch: list[Record]) -> None:
    encoder = Encoder(RESOURCE.attributes, "llm_router", __version__)
    assert encoder.request(batch) == encoder.request(batch)


def test_an_attribute_the_sdk_cannot_encode_is_left_out_as_it_does() -> None:
    rec: Record = (
        "s",
        0,
        1,
        2,
        0,
        False,
        1,
        "",
        10,
        20,
        {"big": 1 << 70, "ok": 1, "odd": object()},
        None,
        (),
    )
    ours = _ours([rec]).resource_spans[0].scope_spans[0].spans[0]
    assert [a.key for a in ours.attributes] == ["ok"]
    sdk = _sdk([rec]).resource_spans[0].scope_spans[0].spans[0]
    assert ours == sdk


def test_a_batch_goes_out_in_requests_of_at_most_the_export_batch_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    sent: list[bytes] = []

    class Exporter:
        def shutdown(self) -> None:
            pass

    export = otlp_export._Encoded(Exporter(), RESOURCE, lambda data: not sent.append(data))
    batch: list[Record] = [
        (f"span {i}", 0, 7, i + 1, 0, False, 1, "", i, i + 1, {"i": i}, None, ()) for i in range(10)
    ]
    assert export(batch) == 0  # spans the collector did not take
    requests = [ExportTraceServiceRequest.FromString(data) for data in sent]
    spans = [s for r in requests for s in r.resource_spans[0].scope_spans[0].spans]
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in requests] == [4, 4, 2]
    assert [s.name for s in spans] == [f"span {i}" for i in range(10)]
    refused = iter([True, False, True])  # the collector refuses the second request
    export = otlp_export._Encoded(Exporter(), RESOURCE, lambda data: next(refused))
    assert export(batch) == 4


def test_the_server_exporter_takes_encoded_requests_for_both_protocols(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installed exporters have the way in `_Encoded` needs (else the exporter process
    falls back to the SDK's spans, a fourth of the speed)."""
    for protocol in ("http/protobuf", "grpc"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        export = otlp_export.exporting("http://127.0.0.1:9")
        try:
            assert isinstance(export, otlp_export._Encoded), protocol
        finally:
            export.shutdown()


def test_requests_are_cut_at_the_byte_bound_and_keep_every_span() -> None:
    encoder = Encoder(RESOURCE.attributes, "llm_router", __version__)
    batch: list[Record] = [
        (f"span {i:02}", 0, 7, i + 1, 0, False, 1, "", i, i + 1, {"text": "x" * 100}, None, ())
        for i in range(50)
    ]
    one = len(encoder.span(batch[0])) + 3  # as a field: its tag and its length (2 bytes)
    cut = list(encoder.requests(batch, None, max_bytes=10 * one))
    requests = [ExportTraceServiceRequest.FromString(data) for data, _ in cut]
    counts = [len(r.resource_spans[0].scope_spans[0].spans) for r in requests]
    assert counts == [count for _, count in cut] == [10] * 5
    spans = [s for r in requests for s in r.resource_spans[0].scope_spans[0].spans]
    assert [s.name for s in spans] == [f"span {i:02}" for i in range(50)]
    assert len(list(encoder.requests(batch, None))) == 1  # 1 MiB: all in one
    assert len(list(encoder.requests(batch, 20))) == 3


sampled = records.map(lambda r: (*r[:6], r[6] | 1, *r[7:]))  # only sampled spans are sent


@settings(max_examples=5, deadline=None)
@given(st.lists(sampled, min_size=1, max_size=8))
def test_both_ways_of_the_exporter_process_send_the_same_spans(batch: list[Record]) -> None:
    """Encoded here, or (an exporter without the way in) the SDK's spans and processor."""
    got = []
    with otlp_receiver() as (url, received):
        for encode in (True, False):
            received.clear()
            export = otlp_export.exporting(url, encode=encode)
            assert isinstance(export, otlp_export._Encoded) == encode
            export(batch)
            export.shutdown()  # the processor exports what it holds
            spans = [span for span, _ in received.spans()]
            got.append(sorted(spans, key=lambda s: s.SerializeToString()))
    assert len(got[0]) == len(batch) and got[0] == got[1]


def test_values_that_compare_equal_keep_their_own_encoding() -> None:
    """The cache finds a value's encoding by its value, and True == 1 == 1.0, 0.0 == -0.0,
    (1,) == (True,): one encoder, one key, each value in turn, each as the SDK encodes it."""
    alike = [True, 1, 1.0, False, 0, 0.0, -0.0, (1,), (True,), (1.0,), ("1",), "1", ["1"]]
    batch: list[Record] = [("s", 0, 7, 8, 0, False, 1, "", 1, 2, {"k": v}, None, ()) for v in alike]
    for _ in range(2):  # the second time from the cache
        assert _ours(batch) == _sdk(batch)
    encoder = Encoder(RESOURCE.attributes, "llm_router", __version__, RESOURCE.schema_url)
    once = [encoder.request([rec]) for rec in batch]
    assert [encoder.request([rec]) for rec in batch] == once
    assert len(set(once)) == len(once) - 1  # only ("1",) and ["1"] are the same bytes
