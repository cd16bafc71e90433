"""Where the spans of tracing.py go: into an SDK TracerProvider, as the SDK's own spans with the
same ids, times, parents, attributes, status and events, at once in this process (`InProcess`,
for a provider given in code: the tests' in-memory exporter), or over OTLP from an exporter
process (`ExporterProcess`, for the server: `python -m llm_router.trace_export`).

The exporter process gets the spans as plain tuples (`Record`), `marshal`led in batches down a
pipe by a thread of this process every 200 ms: ~2 us a span here. It encodes them into OTLP
requests itself (trace_encode.py: the bytes the SDK's encoder makes of the same spans) and
sends them with the SDK's OTLP exporter (HTTP or gRPC, configured by the OTEL_* variables);
where an exporter version gives no way in for encoded requests, it makes the SDK's spans and
exports them through the BatchSpanProcessor instead (`_Processed`, ~4x the CPU). Spans wait
at most 200 ms here; if the exporter process falls behind, up to `MAX_PENDING` spans queue
here, then new ones are dropped (logged once). It exits when its pipe closes: at `shutdown`,
which gives its last exports `DRAIN_S` and then has it drop the rest (a collector that is down
would otherwise hold up the server's stop for its exporter's retries, and one that takes a
request and never answers for its timeout), or when this process dies. As it exits it says
how many spans the collector did not take. It logs as the server does (`log_format`: its
lines were plain text in a JSON log)."""

from __future__ import annotations

import gc
import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

__all__ = [
    "DRAIN_S",
    "MAX_PENDING",
    "ExporterProcess",
    "InProcess",
    "Record",
    "exporting",
    "otlp_protocol",
    "service_resource",
]

log = logging.getLogger("llm_router.trace_export")  # also when run as __main__
# name, kind, trace id, span id, parent span id (0: none), parent is remote, trace flags,
# tracestate header, start ns, end ns, attributes, (status code, description) | None,
# events ((name, attributes, ns), ...)
Record = tuple[
    str,
    int,
    int,
    int,
    int,
    bool,
    int,
    str,
    int,
    int,
    dict[str, Any],
    tuple[int, str | None] | None,
    tuple[tuple[str, dict[str, Any], int], ...],
]
MAX_PENDING = 100_000
DRAIN_S = 5.0  # at shutdown, how long the exporter process may take to send what is left
_FLUSH_S = 0.2
_FRAME = struct.Struct("<I")
_HELD = {signal.SIGTERM, signal.SIGINT}  # held while the exporter process starts


class _Ids:
    """The SDK's id generator, made to give the ids the span already has."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True


class _Emitter:
    """Records into SDK spans through `provider`'s span processors."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace import Status, StatusCode, TraceFlags, TraceState

        from . import __version__

        self.ids = _Ids()
        self.tracer = provider.get_tracer("llm_router", __version__)
        self.tracer.sampler = ALWAYS_ON  # sampled already, by the request's server span
        self.tracer.id_generator = self.ids
        self.trace = trace
        self.empty = Context()
        self.kinds = {k.value: k for k in trace.SpanKind}
        self.Status, self.StatusCode = Status, StatusCode
        self.TraceFlags, self.TraceState = TraceFlags, TraceState

    def __call__(self, rec: Record) -> None:
        name, kind, trace_id, span_id, parent_id, remote, flags, state, start, end = rec[:10]
        attributes, status, events = rec[10:]
        t = self.trace
        context = self.empty
        if parent_id:
            trace_state = self.TraceState.from_header([state]) if state else None
            parent = t.SpanContext(trace_id, parent_id, remote, self.TraceFlags(flags), trace_state)
            context = t.set_span_in_context(t.NonRecordingSpan(parent), self.empty)
        self.ids.trace_id, self.ids.span_id = trace_id, span_id
        s = self.tracer.start_span(
            name,
            context=context,
            kind=self.kinds[kind],
            attributes=attributes,
            start_time=start,
            record_exception=False,
        )
        for event, event_attributes, at in events:
            s.add_event(event, event_attributes, at)
        if status is not None:
            s.set_status(self.Status(self.StatusCode(status[0]), status[1]))
        s.end(end_time=end)


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


class InProcess:
    """Each span into the SDK as it ends, in this process."""

    def __init__(self, provider: Any) -> None:
        self.put = _Emitter(provider)

    def shutdown(self) -> None:
        return None


class ExporterProcess:
    """Spans batched to the exporter process (see the module's docstring). `put` is called on
    the event loop; the thread and the process start with the first span."""

    def __init__(
        self, endpoint: str | None, log_level: str = "info", json_logs: bool = False
    ) -> None:
        self.endpoint = endpoint
        self.logging = [log_level, "json" if json_logs else "text"]  # the process's arguments
        self.pending: deque[Record] = deque()  # appended on the loop, taken by the thread
        self.dropped = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def put(self, rec: Record) -> None:
        if len(self.pending) >= MAX_PENDING:
            if not self.dropped:
                log.warning("tracing: the exporter process is behind; dropping spans")
            self.dropped += 1
            return
        self.pending.append(rec)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        # The exporter process is started from this thread and inherits its signal mask:
        # with SIGTERM and SIGINT blocked it keeps a stop that comes while it starts, until
        # main() can handle it (blocked here only: the main thread still gets them).
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        while not self.stop.wait(_FLUSH_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        take = self.pending.popleft
        batch = [take() for _ in range(len(self.pending))]
        if not batch:
            return
        proc = self.proc or self._start()
        data = marshal.dumps(batch)
        try:
            assert proc.stdin is not None
            proc.stdin.write(_FRAME.pack(len(data)) + data)
            proc.stdin.flush()
        except (OSError, ValueError):
            log.warning("tracing: the exporter process is gone; %d spans lost", len(batch))

    def _start(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "llm_router.trace_export"]
        self.proc = subprocess.Popen(
            [*args, self.endpoint or "", *self.logging], stdin=subprocess.PIPE, env=dict(os.environ)
        )
        return self.proc

    def shutdown(self, drain: float = DRAIN_S) -> None:
        """Send what is pending and give the process `drain` seconds to export it. Then it is
        told to drop the rest (SIGTERM: it stops its exporter's retries and a request the
        collector has not answered, and reads its pipe to the end, which also frees a write
        blocked on the pipe) and killed if it still runs 5 s later."""
        self.stop.set()
        deadline = time.monotonic() + drain
        if self.thread is not None:
            self.thread.join(drain)
        proc = self.proc
        if proc is None:
            return
        if self.thread is not None and self.thread.is_alive():  # blocked on a full pipe
            proc.terminate()
            self.thread.join(5)
        assert proc.stdin is not None
        try:
            proc.stdin.close()
        except OSError:  # the process is gone, with what was left unwritten
            pass
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def otlp_protocol() -> str:
    """The OTLP protocol the OTEL_* variables ask for (`http/protobuf` by default)."""
    env = os.environ
    return env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )


def service_resource() -> Any:
    """The resource, made as the SDK makes it (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES)."""
    from opentelemetry.sdk.resources import Resource

    name = os.environ.get("OTEL_SERVICE_NAME", "llm-runner-router")
    return Resource.create({"service.name": name})


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
    while len(head := pipe.read(_FRAME.size)) == _FRAME.size:
        (size,) = _FRAME.unpack(head)
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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
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
