"""OpenTelemetry tracing, when the `otel` extra is installed and an endpoint is configured
(`otel_endpoint`, or the standard OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT; the protocol
from OTEL_EXPORTER_OTLP_PROTOCOL, `http/protobuf` by default or `grpc`; the service name from
OTEL_SERVICE_NAME, `llm-runner-router` by default; the sampler from OTEL_TRACES_SAMPLER).

Off, nothing of OpenTelemetry is imported and every helper here is one context-variable read
returning None. On, the server's middleware (server/front.py) opens one span per request and
makes it current for the request's task; the layers below add child spans through the helpers:
routing, each target attempt, queue wait, model load, prefill and decode (recorded with explicit
start and end times: the worker is another process, and a span kept open across a generator's
yields would be attached to whatever the consumer runs), and the upstream HTTP call, whose W3C
`traceparent` goes to the remote target. Attributes follow the GenAI semantic conventions.

The spans of the request path are this module's own `Span` records, not the SDK's: ids, times,
attributes, status and events, and nothing else (an SDK span costs ~25 us to make and ~22 us
to encode, a request has 4-8 of them, and at c=64 that was half the router's CPU, see
BENCHMARKS.md). Sampling is the SDK's sampler, asked once per request at its server span; a
request it does not sample makes no child spans (the helpers answer as when tracing is off),
and its upstream calls carry its server span's `traceparent`, not sampled. A finished span
goes to a sink: `Tracing(provider)` turns it into the SDK span at once, with the same ids,
times and parent (the in-memory exporter of the tests sees it as the SDK made it);
`Tracing.from_settings` batches them to an exporter process (trace_export.py) that encodes
them to OTLP as the SDK would and exports them, on another core."""

from __future__ import annotations

import logging
import os
import random
import re
import time
import traceback
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "Span",
    "Tracing",
    "current",
    "end",
    "inject",
    "perf_to_ns",
    "record",
    "span",
    "start",
]

log = logging.getLogger(__name__)
AttributeValue = Any  # str, bool, int, float, or a sequence of one of them
INTERNAL, SERVER, CLIENT = 0, 1, 2  # opentelemetry.trace.SpanKind's values
_SAMPLED = 0x01
_RANDOM = 0x02  # W3C trace-context level 2: the trace id is random (the SDK sets it too)
_ERROR = 2  # StatusCode.ERROR
_span: ContextVar[Span | None] = ContextVar("llm_router_span", default=None)
_ID_LOW = (1 << 64) - 1  # the bits of a trace id TraceIdRatioBased decides on
_RATIO_ROOT = re.compile(r"TraceIdRatioBased\{([^}]*)\}")


class Tracing:
    """The sampler, the propagator and where finished spans go (`provider`: an SDK
    TracerProvider; its span processors get every sampled span, see the module's docstring)."""

    def __init__(self, provider: Any, sink: Any = None) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.sampler = provider.sampler
        self.trace = trace
        self.propagate = propagate
        fields = propagate.get_global_textmap().fields  # the headers it reads: traceparent...
        self.fields = frozenset(f.lower().encode("latin-1") for f in fields)
        # W3C trace context (and baggage, which no span here carries): `inject` writes the
        # header itself, as the propagator would; any other propagator is asked.
        self.w3c = fields <= {"traceparent", "tracestate", "baggage"}
        # Roots (no parent came) decided here when the sampler decides them on the trace id
        # alone: always on (the SDK's default) or a trace-id ratio, compared as the ratio
        # sampler compares, without its objects (~15 us a request in the server).
        self.root_bound = _root_bound(self.sampler.get_description())
        if sink is None:
            from .trace_export import InProcess

            sink = InProcess(provider)
        self.sink = sink

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """None when no endpoint is configured, or (with a warning) without the extra."""
        env = os.environ
        endpoint = (
            settings.otel_endpoint
            or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        if not endpoint:
            return None
        try:
            from opentelemetry.sdk.trace import TracerProvider

            from .trace_export import ExporterProcess, otlp_protocol, service_resource
        except ImportError:
            log.warning(
                "tracing: an OTLP endpoint is set but OpenTelemetry is not installed: "
                "pip install 'llm-runner-router[otel]'"
            )
            return None
        resource = service_resource()  # as the exporter process makes it
        provider = TracerProvider(resource=resource)
        name = resource.attributes.get("service.name")
        log.info("tracing: OTLP (%s) to %s as %s", otlp_protocol(), endpoint, name)
        json_logs = settings.log_format == "json"
        return cls(provider, ExporterProcess(settings.otel_endpoint, settings.log_level, json_logs))

    def root(
        self, name: str, attributes: dict[str, AttributeValue], headers: list[tuple[bytes, bytes]]
    ) -> Span:
        """The server span of a request, continuing the client's trace when its headers carry
        one (W3C `traceparent`), sampled by the SDK's sampler; not made current."""
        fields = self.fields
        parent = None
        for k, _ in headers:  # a loop, not any(): a generator's frame costs more
            if k in fields:
                carrier = {
                    k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in fields
                }
                parent = self.propagate.extract(carrier)
                remote = self.trace.get_current_span(parent).get_span_context()
                if remote.is_valid:
                    return self._asked(name, attributes, parent, remote, remote.trace_id)
                break
        trace_id = random.getrandbits(128) or 1
        if self.root_bound is not None:  # no trace came, and the trace id decides
            sampled = _SAMPLED if trace_id & _ID_LOW < self.root_bound else 0
            return Span(self, name, SERVER, trace_id, attributes, None, 0, _RANDOM | sampled)
        return self._asked(name, attributes, parent, None, trace_id)

    def _asked(
        self,
        name: str,
        attributes: dict[str, AttributeValue],
        parent: Any,
        remote: Any,
        trace_id: int,
    ) -> Span:
        """The server span, sampled as the SDK's sampler says (a remote parent came, or the
        sampler decides on more than the trace id)."""
        flags = remote.trace_flags & _RANDOM if remote is not None else _RANDOM
        result = self.sampler.should_sample(
            parent, trace_id, name, self.trace.SpanKind.SERVER, attributes
        )
        if result.attributes:
            attributes = {**attributes, **result.attributes}
        flags |= _SAMPLED if result.decision.is_sampled() else 0
        state = result.trace_state.to_header() if result.trace_state else ""
        parent_id = remote.span_id if remote is not None else 0
        s = Span(self, name, SERVER, trace_id, attributes, None, parent_id, flags, state)
        s.remote = remote is not None
        return s

    def shutdown(self) -> None:
        """Export what is pending, then stop (blocks for the export)."""
        self.sink.shutdown()
        self.provider.shutdown()


def _root_bound(description: str) -> int | None:
    """What the low 64 bits of a root's trace id must be under to be sampled, when the
    sampler `description` names decides roots on the trace id alone (always on: every id; a
    trace-id ratio: TraceIdRatioBased's bound); else None (the sampler is asked)."""
    root = description.removeprefix("ParentBased{root:")
    if root.startswith("AlwaysOnSampler"):
        return _ID_LOW + 1
    found = _RATIO_ROOT.match(root)
    if found is None:
        return None
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    try:
        return TraceIdRatioBased.get_bound_for_rate(float(found.group(1)))
    except ValueError:
        return None


class Span:
    """One span: made by `Tracing.root` or as a child of the current one (`start`, `span`,
    `record`); `end` hands a sampled one to the sink. Not thread-safe (one request's task)."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "flags",
        "kind",
        "name",
        "parent_id",
        "remote",
        "span_id",
        "start_ns",
        "state",
        "status",
        "trace_id",
        "tracing",
    )

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        kind: int,
        trace_id: int,
        attributes: Mapping[str, AttributeValue] | None,
        start_ns: int | None = None,
        parent_id: int = 0,
        flags: int = 0,
        state: str = "",
    ) -> None:
        self.tracing = tracing
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = random.getrandbits(64) or 1
        self.parent_id = parent_id
        self.remote = False
        self.flags = flags
        self.state = state
        self.attributes = {**attributes} if attributes else {}
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.end_ns = 0
        self.status: tuple[int, str | None] | None = None
        self.events: list[tuple[str, dict[str, AttributeValue], int]] | None = None

    def is_recording(self) -> bool:
        return bool(self.flags & _SAMPLED) and not self.end_ns

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def set_error(self, description: str | None) -> None:
        self.status = (_ERROR, description)

    def record_exception(self, exc: BaseException) -> None:
        """The SDK's `exception` event and ERROR status, as its spans record an exception
        that leaves their block."""
        module, qualname = type(exc).__module__, type(exc).__qualname__
        event = {
            "exception.type": qualname if module in ("builtins", "") else f"{module}.{qualname}",
            "exception.message": str(exc),
            "exception.stacktrace": "".join(traceback.format_exception(exc)),
            "exception.escaped": "False",
        }
        if self.events is None:
            self.events = []
        self.events.append(("exception", event, time.time_ns()))
        if self.status is None:
            self.status = (_ERROR, f"{type(exc).__name__}: {exc}")

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns:
            return
        self.end_ns = time.time_ns() if end_ns is None else end_ns
        if self.flags & _SAMPLED:  # the record made here: a call less a span
            self.tracing.sink.put(
                (
                    self.name,
                    self.kind,
                    self.trace_id,
                    self.span_id,
                    self.parent_id,
                    self.remote,
                    self.flags,
                    self.state,
                    self.start_ns,
                    self.end_ns,
                    self.attributes,
                    self.status,
                    tuple(self.events) if self.events else (),
                )
            )


def current() -> Tracing | None:
    """This request's tracing, None when off or when the request is not sampled (what would
    be recorded is not)."""
    s = _span.get()
    return None if s is None or not s.flags & _SAMPLED else s.tracing


class _Within:
    """A span current inside a `with` block, not ended at its exit."""

    __slots__ = ("span", "token")

    def __init__(self, s: Span) -> None:
        self.span = s
        self.token: Token[Span | None] | None = None

    def __enter__(self) -> Span:
        self.token = _span.set(self.span)
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if self.token is not None:
            _span.reset(self.token)


class _Block(_Within):
    """A span current inside a `with` block, ended at its exit; an exception leaving the
    block is recorded on it (as the SDK's `start_as_current_span` does)."""

    __slots__ = ()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception):
            self.span.record_exception(exc)
        self.span.end()
        if self.token is not None:  # _Within's, here: a call less a span
            _span.reset(self.token)


class _Off:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def within(s: Span | None) -> Any:
    """`s` current inside the block and not ended at its exit (a span that lasts across
    several steps, such as a target's attempt across its events); nothing when None."""
    return _OFF if s is None else _Within(s)


def activate(s: Span) -> _Block:
    """`s` current for the block, ended at its exit (the server span of a request)."""
    return _Block(s)


def span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Any:
    """A child span of the current one, current inside the block (for coroutines: never across
    a generator's yield); the block gets None when tracing is off, at the cost of one
    context-variable read."""
    s = start(name, attributes)
    return _OFF if s is None else _Block(s)


def start(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    client: bool = False,
    start_ns: int | None = None,
) -> Span | None:
    """A child span of the current one, not made current (end it with `end`); None when off
    or not sampled."""
    parent = _span.get()
    if parent is None or not parent.flags & _SAMPLED:
        return None
    return Span(
        parent.tracing,
        name,
        CLIENT if client else INTERNAL,
        parent.trace_id,
        attributes,
        start_ns,
        parent.span_id,
        parent.flags,
        parent.state,
    )


def end(
    s: Span | None,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: BaseException | None = None,
    end_ns: int | None = None,
) -> None:
    if s is None:
        return
    if attributes:
        s.attributes.update(attributes)
    if error is not None:  # a more precise error.type said before (an HTTP status) stays
        s.attributes.setdefault("error.type", type(error).__name__)
        s.set_error(str(error)[:200])
    s.end(end_ns)


def record(
    name: str, start_ns: int, end_ns: int, attributes: Mapping[str, AttributeValue] | None = None
) -> None:
    """A finished child span of the current one, with explicit times."""
    end(start(name, attributes, start_ns=start_ns), end_ns=end_ns)


def inject(headers: dict[str, str], s: Span | None) -> dict[str, str]:
    """`headers` with the W3C `traceparent` of span `s`, or when `s` is None of the current
    span (a request not sampled has no child spans, but its trace and its decision go on);
    the same dict when tracing is off."""
    if s is None:
        s = _span.get()
        if s is None:
            return headers
    t = s.tracing
    if t.w3c:
        out = {**headers, "traceparent": f"00-{s.trace_id:032x}-{s.span_id:016x}-{s.flags:02x}"}
        if s.state:
            out["tracestate"] = s.state
        return out
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    state = TraceState.from_header([s.state]) if s.state else None
    context = SpanContext(s.trace_id, s.span_id, False, TraceFlags(s.flags), state)
    out = dict(headers)
    t.propagate.inject(out, context=t.trace.set_span_in_context(NonRecordingSpan(context)))
    return out


def perf_to_ns(perf: float) -> int:
    """A `time.perf_counter()` reading as wall-clock nanoseconds (OpenTelemetry's time)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)
