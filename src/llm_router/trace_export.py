"""Where the spans of tracing.py go: into an SDK TracerProvider, as the SDK's own spans with the
same ids, times, parents, attributes, status and events, at once in this process (`InProcess`,
for a provider given in code: the tests' in-memory exporter), or to an exporter process
(`ExporterProcess`, for the server), which is otlp_export.py.

The exporter process gets the spans as plain tuples (`Record`), `marshal`led in batches down a
pipe by a thread of this process every 200 ms: ~0.5 us a span here. Spans wait at most 200 ms
here; if the exporter process falls behind, up to `MAX_PENDING` spans queue here, then the
oldest are dropped (logged once). At `shutdown` the process gets its last exports' `DRAIN_S`,
then is told to drop the rest (a collector that is down would otherwise hold up the server's
stop for its exporter's retries, and one that takes a request and never answers for its
timeout); it exits when its pipe closes, or when this process dies."""

from __future__ import annotations

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
from typing import Any

__all__ = [
    "DRAIN_S",
    "MAX_PENDING",
    "ExporterProcess",
    "InProcess",
    "Record",
    "otlp_protocol",
    "service_resource",
]

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
DRAIN_S = 5.0  # at shutdown, how long the exporter process may take to send what is left
_FLUSH_S = 0.2
FRAME = struct.Struct("<I")
HELD = {signal.SIGTERM, signal.SIGINT}  # held while the exporter process starts


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
        # appended on the loop, taken by the thread; past MAX_PENDING the oldest go
        self.pending: deque[Record] = deque(maxlen=MAX_PENDING)
        self.behind = False  # said once
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def put(self, rec: Record) -> None:
        """The first span: starts the thread, then `put` is the queue's own `append` (a
        span's cost on the request path is one C call)."""
        self.pending.append(rec)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
            self.thread.start()
            self.put = self.pending.append  # type: ignore[method-assign,assignment]

    def _run(self) -> None:
        # The exporter process is started from this thread and inherits its signal mask:
        # with SIGTERM and SIGINT blocked it keeps a stop that comes while it starts, until
        # main() can handle it (blocked here only: the main thread still gets them).
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
        while not self.stop.wait(_FLUSH_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        take = self.pending.popleft
        batch = [take() for _ in range(len(self.pending))]
        if not batch:
            return
        if len(batch) == MAX_PENDING and not self.behind:
            self.behind = True
            log.warning("tracing: the exporter process is behind; dropping the oldest spans")
        proc = self.proc or self._start()
        data = marshal.dumps(batch)
        try:
            assert proc.stdin is not None
            proc.stdin.write(FRAME.pack(len(data)) + data)
            proc.stdin.flush()
        except (OSError, ValueError):
            log.warning("tracing: the exporter process is gone; %d spans lost", len(batch))

    def _start(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "llm_router.otlp_export"]
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
