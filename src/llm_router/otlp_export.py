"""The exporter process (`python -m llm_router.otlp_export`, started by trace_export.py's
`ExporterProcess`): batches of span records (trace_export.Record) on its stdin, exported over
OTLP on another core than the server's event loop.

It encodes them into OTLP requests itself (trace_encode.py: the bytes the SDK's encoder makes
of the same spans) and sends them with the SDK's OTLP exporter (HTTP or gRPC, configured by
the OTEL_* variables); where an exporter version gives no way in for encoded requests, it makes
the SDK's spans and exports them through the BatchSpanProcessor instead (`_Processed`, ~4x the
CPU). It exits when its pipe closes; told to stop (SIGTERM) it drops what is unsent. As it
exits it says how many spans the collector did not take. It logs as the server does
(`log_format`: its lines were plain text in a JSON log)."""

from __future__ import annotations

import gc
import logging
import marshal
import os
import signal
import sys
from collections.abc import Iterator
from typing import IO, Any

from .trace_export import FRAME, HELD, MAX_PENDING, Record, otlp_protocol, service_resource

__all__ = ["exporting", "main"]

log = logging.getLogger("llm_router.otlp_export")  # also when run as __main__


class _Direct:
    """Records into the SDK's finished spans (`ReadableSpan`), handed straight to `processor`
    (the exporter process's BatchSpanProcessor): a third of the cost of making them through a
    tracer, which checks, locks and times what is already decided here."""

    def __init__(self, processor: Any, resource: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import Status, StatusCode, TraceFlags, TraceState

        from . import __version__

        self.processor = processor
        self.resource = resource
        self.scope = InstrumentationScope("llm_router", __version__)
        self.SpanContext, self.ReadableSpan, self.Event = trace.SpanContext, ReadableSpan, Event
        self.kinds = {k.value: k for k in trace.SpanKind}
        self.unset = Status(StatusCode.UNSET)
        self.Status, self.StatusCode = Status, StatusCode
        self.TraceFlags, self.TraceState = TraceFlags, TraceState

    def __call__(self, rec: Record) -> None:
        name, kind, trace_id, span_id, parent_id, remote, flags, state, start, end = rec[:10]
        attributes, status, events = rec[10:]
        trace_state = self.TraceState.from_header([state]) if state else None
        trace_flags = self.TraceFlags(flags)
        context = self.SpanContext(trace_id, span_id, False, trace_flags, trace_state)
        parent = (
            self.SpanContext(trace_id, parent_id, remote, trace_flags, trace_state)
            if parent_id
            else None
        )
        self.processor.on_end(
            self.ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                events=[self.Event(n, a, at) for n, a, at in events],
                kind=self.kinds[kind],
                status=self.unset
                if status is None
                else self.Status(self.StatusCode(status[0]), status[1]),
                start_time=start,
                end_time=end,
                instrumentation_scope=self.scope,
            )
        )


def _processor(exporter: Any) -> Any:
    """The SDK's way: a BatchSpanProcessor fed `ReadableSpan`s (`_Direct`)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Spans come in batches of a few thousand (every 200 ms at a few thousand requests/s):
    # the SDK's default queue of 2048 would drop some of each.
    queue = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or MAX_PENDING)
    return BatchSpanProcessor(exporter, max_queue_size=queue)


def _exporter(protocol: str, endpoint: str | None) -> Any:
    if protocol == "grpc":
        cls = _grpc_requests()
        return cls(endpoint=endpoint) if endpoint else cls()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if endpoint is None:
        return HttpExporter()  # reads the OTEL_* variables, appends /v1/traces itself
    url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/")
    return HttpExporter(endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")


def _grpc_requests() -> Any:
    """The SDK's OTLP/gRPC span exporter, which also exports a request already made (an
    `ExportTraceServiceRequest`) through its channel, headers, timeout and retries."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class GrpcExporter(OTLPSpanExporter):
        def _translate_data(self, data: Any) -> Any:
            return data if hasattr(data, "resource_spans") else super()._translate_data(data)

        def _count_data(self, data: Any) -> int:
            if not hasattr(data, "resource_spans"):
                return len(data)
            return sum(len(s.spans) for r in data.resource_spans for s in r.scope_spans)

    return GrpcExporter


class _Encoded:
    """Batches of records encoded here (trace_encode.py) and sent by the SDK's OTLP exporter:
    its endpoint, headers, compression, timeout, retries and TLS settings, with no SDK span,
    span processor or protobuf message made per span. A request carries up to 1 MiB of spans
    (trace_encode.MAX_BYTES), and at most OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans when it is set
    (the BatchSpanProcessor's 512 a request made it half this process's CPU). `send` says
    whether the collector took a request (after the exporter's retries)."""

    def __init__(self, exporter: Any, resource: Any, send: Any) -> None:
        from . import __version__
        from .trace_encode import Encoder

        self.exporter = exporter
        self.send = send
        self.encoder = Encoder(
            resource.attributes, "llm_router", __version__, resource.schema_url or ""
        )
        size = os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        self.size = int(size) if size else None
        self.aborted = False

    @classmethod
    def make(cls, protocol: str, exporter: Any, resource: Any) -> _Encoded | None:
        """None when this version of the exporter has no way in for encoded bytes."""
        if protocol == "grpc":
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )
            from opentelemetry.sdk.trace.export import SpanExportResult

            parse, ok = ExportTraceServiceRequest.FromString, SpanExportResult.SUCCESS
            return cls(exporter, resource, lambda data: exporter.export(parse(data)) == ok)
        client = getattr(exporter, "_client", None)  # opentelemetry-exporter-otlp >= 1.40
        if client is None or not callable(getattr(client, "export", None)):
            return None
        # its result says `success` (1.45); one that says nothing is taken as a success
        return cls(exporter, resource, lambda data: getattr(client.export(data), "success", True))

    def __call__(self, records: list[Record]) -> int:
        """The spans of `records` the collector did not take (not counting those left when
        `abort` came: the caller counts the batch)."""
        lost = 0
        for request, spans in self.encoder.requests(records, self.size):
            if self.aborted:
                break
            if not self.send(request):
                lost += spans
        return lost

    def abort(self) -> None:
        """No more sending: the exporter's retries stop (from a signal handler)."""
        self.aborted = True
        self.exporter.shutdown()

    def shutdown(self) -> None:
        if not self.aborted:
            self.exporter.shutdown()


class _Processed:
    """The SDK's way, where `_Encoded` cannot be: `ReadableSpan`s into a BatchSpanProcessor."""

    def __init__(self, exporter: Any, resource: Any) -> None:
        self.exporter = exporter
        self.processor = _processor(exporter)
        self.put = _Direct(self.processor, resource)

    def __call__(self, records: list[Record]) -> int:
        """0: the processor exports later, and its failures are the SDK's own log lines."""
        for rec in records:
            self.put(rec)
        return 0

    def abort(self) -> None:
        """No more sending: the exporter fails what it is given from now on, at once."""
        self.exporter.shutdown()

    def shutdown(self) -> None:
        self.processor.shutdown()


def exporting(endpoint: str | None, *, encode: bool = True) -> _Encoded | _Processed:
    """What the exporter process hands its batches to (configured, as the SDK is, from the
    OTEL_* variables); `encode=False`: the SDK's way (a test compares the two)."""
    protocol, resource = otlp_protocol(), service_resource()
    exporter = _exporter(protocol, endpoint)
    encoded = _Encoded.make(protocol, exporter, resource) if encode else None
    return encoded or _Processed(exporter, resource)


def _frames(pipe: IO[bytes]) -> Iterator[list[Record]]:
    """The batches on `pipe`, each a marshalled list of records."""
    while len(head := pipe.read(FRAME.size)) == FRAME.size:
        (size,) = FRAME.unpack(head)
        data = pipe.read(size)
        if len(data) < size:
            return
        yield marshal.loads(data)


class _Stopped(BaseException):
    """Raised by the SIGTERM handler into a send the collector has not answered (a stalled
    one: the exporter's `shutdown` stops its retries, not a request waiting for its timeout,
    10 s by default). Not an Exception: the exporter's own `except Exception` lets it by."""


def main() -> None:
    """The exporter process: batches of records on stdin until it closes, then a last export
    (Ctrl-C is for the server, which closes the pipe as it stops). SIGTERM: the server stops
    and its time for the last export is up; what is still unsent is dropped and counted.
    Arguments: the endpoint (empty: the OTEL_* variables'), the log level and format."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = [*sys.argv[1:], *["", "info", "text"][len(sys.argv) - 1 :]]
    endpoint, level, log_format = args[:3]
    dropped: list[int] = []
    sending = [False]
    export: _Encoded | _Processed | None = None

    def stop(signum: int, frame: Any) -> None:
        if not dropped:
            dropped.append(0)
            if export is not None:
                export.abort()
        if sending[0]:
            raise _Stopped

    # Handled before the SDK's imports (~1 s on a busy machine), and a SIGTERM sent while
    # this process started was held (ExporterProcess._run) and comes now: a server stopping
    # right after its first spans does not kill it before it can say what it dropped.
    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
    from .logs import setup_logging

    setup_logging(level, log_format == "json")
    export = exporting(endpoint or None)
    if dropped:  # told to stop while it was starting
        export.abort()
    gc.freeze()  # what the imports made: not walked by every collection of the batches'

    def send(batch: list[Record]) -> int:
        assert export is not None
        sending[0] = True
        try:
            return export(batch)
        finally:
            sending[0] = False

    lost = 0  # spans the collector refused, or did not take in the exporter's time
    try:
        for batch in _frames(sys.stdin.buffer):
            if not dropped:
                try:
                    failed = send(batch)
                except _Stopped:
                    failed = 0
                if not dropped:
                    lost += failed
            if dropped:  # stopped before or while this batch was sent
                dropped[0] += len(batch)
    finally:
        export.shutdown()
        _say_lost(lost, dropped[0] if dropped else None)


def _say_lost(lost: int, dropped: int | None) -> None:
    if lost:
        log.warning(
            "tracing: the collector did not take %d spans (refused, or not reached in the "
            "exporter's time)",
            lost,
            extra={"fields": {"spans_lost": lost}},
        )
    if dropped is not None:
        log.warning(
            "tracing: stopped before the collector took every span; up to %d dropped",
            dropped,
            extra={"fields": {"spans_dropped": dropped}},
        )


if __name__ == "__main__":
    main()
