"""Where the spans of tracing.py go: into an SDK TracerProvider, as the SDK's own spans with the
same ids, times, parents, attributes, status and events, either at once in this process
(`InProcess`, for a provider given in code: the tests' in-memory exporter) or in an exporter
process (`ExporterProcess`, for the server: `python -m llm_router.trace_export`), which makes
them and exports them over OTLP with the SDK's BatchSpanProcessor.

The exporter process gets the spans as plain tuples (`Record`), `marshal`led in batches down a
pipe by a thread of this process every 200 ms: ~2 us a span here, where making and encoding
the SDK's span costs ~45 us, now on another core. Spans wait at most that long; if the
exporter process falls behind, up to `MAX_PENDING` spans queue here, then new ones are dropped
(logged once). It exits when its pipe closes: at `shutdown`, which waits for its last export,
or when this process dies."""

from __future__ import annotations

import logging
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["MAX_PENDING", "ExporterProcess", "InProcess", "Record", "emit"]

log = logging.getLogger(__name__)
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
_FLUSH_S = 0.2
_FRAME = struct.Struct("<I")


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


def emit(provider: Any, records: list[Record]) -> None:
    """Make the SDK spans of `records` in `provider` (a one-off; sinks keep their emitter)."""
    one = _Emitter(provider)
    for rec in records:
        one(rec)


class InProcess:
    """Each span into the SDK as it ends, in this process."""

    def __init__(self, provider: Any) -> None:
        self.put = _Emitter(provider)

    def shutdown(self) -> None:
        return None


class ExporterProcess:
    """Spans batched to the exporter process (see the module's docstring). `put` is called on
    the event loop; the thread and the process start with the first span."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
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
            [*args, self.endpoint or ""], stdin=subprocess.PIPE, env=dict(os.environ)
        )
        return self.proc

    def shutdown(self) -> None:
        """Send what is pending and wait (up to 30 s) for the process to export it."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _processor(endpoint: str | None) -> tuple[Any, Any]:
    """The OTLP exporter's BatchSpanProcessor and the resource (configured as the SDK is,
    from the OTEL_* variables)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    env = os.environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    name = env.get("OTEL_SERVICE_NAME", "llm-runner-router")
    resource = Resource.create({"service.name": name})
    # Spans come in batches of a few thousand (every 200 ms at a few thousand requests/s):
    # the SDK's default queue of 2048 would drop some of each.
    queue = int(env.get("OTEL_BSP_MAX_QUEUE_SIZE") or MAX_PENDING)
    return BatchSpanProcessor(_exporter(protocol, endpoint), max_queue_size=queue), resource


def _exporter(protocol: str, endpoint: str | None) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if endpoint is None:
        return HttpExporter()  # reads the OTEL_* variables, appends /v1/traces itself
    url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/")
    return HttpExporter(endpoint=url if url.endswith("/v1/traces") else url + "/v1/traces")


def _frames(pipe: IO[bytes]) -> Iterator[list[Record]]:
    """The batches on `pipe`, each a marshalled list of records."""
    while len(head := pipe.read(_FRAME.size)) == _FRAME.size:
        (size,) = _FRAME.unpack(head)
        data = pipe.read(size)
        if len(data) < size:
            return
        yield marshal.loads(data)


def main() -> None:
    """The exporter process: batches of records on stdin until it closes, then a last export
    (Ctrl-C is for the server, which closes the pipe as it stops)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    processor, resource = _processor(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None)
    put = _Direct(processor, resource)
    try:
        for batch in _frames(sys.stdin.buffer):
            for rec in batch:
                put(rec)
    finally:
        processor.shutdown()


if __name__ == "__main__":
    main()
