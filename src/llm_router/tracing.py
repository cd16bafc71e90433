"""OpenTelemetry tracing, when the `otel` extra is installed and an endpoint is configured
(`otel_endpoint`, or the standard OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT; the protocol
from OTEL_EXPORTER_OTLP_PROTOCOL, `http/protobuf` by default or `grpc`; the service name from
OTEL_SERVICE_NAME, `llm-runner-router` by default).

Off, nothing of OpenTelemetry is imported and every helper here is one context-variable read
returning None. On, the server's middleware (server/tracing.py) opens one span per request and
makes this process's `Tracing` current for the request's task; the layers below add child
spans through the helpers: routing, each target attempt, queue wait, model load, prefill and
decode (recorded with explicit start and end times: the worker is another process, and a span
kept open across a generator's yields would be attached to whatever the consumer runs), and
the upstream HTTP call, whose W3C `traceparent` goes to the remote target. Attributes follow
the GenAI semantic conventions (`gen_ai.*`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
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
_current: ContextVar[Tracing | None] = ContextVar("llm_router_tracing", default=None)
AttributeValue = Any  # str, bool, int, float, or a sequence of one of them


class Tracing:
    """A tracer from `provider` (an SDK TracerProvider), and its shutdown."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace

        from . import __version__

        self.provider = provider
        self.tracer = provider.get_tracer("llm_router", __version__)
        self.trace = trace
        self.propagate = propagate

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
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "tracing: an OTLP endpoint is set but OpenTelemetry is not installed: "
                "pip install 'llm-runner-router[otel]'"
            )
            return None
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        exporter = _exporter(protocol, settings.otel_endpoint)
        name = env.get("OTEL_SERVICE_NAME", "llm-runner-router")
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing: OTLP (%s) to %s as %s", protocol, endpoint, name)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is pending, then stop (blocks for the export)."""
        self.provider.shutdown()


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


def current() -> Tracing | None:
    """This request's tracing, None when off."""
    return _current.get()


@contextlib.contextmanager
def activate(tracing: Tracing) -> Iterator[None]:
    token = _current.set(tracing)
    try:
        yield
    finally:
        _current.reset(token)


_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, current inside the block (for coroutines: never across
    a generator's yield); the block gets None when tracing is off, at the cost of one
    context-variable read."""
    tracing = _current.get()
    if tracing is None:
        return _OFF
    return tracing.tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]


def start(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    client: bool = False,
    start_ns: int | None = None,
) -> Any:
    """A child span of the current one, not made current (end it with `end`); None when off."""
    tracing = _current.get()
    if tracing is None:
        return None
    kind = tracing.trace.SpanKind.CLIENT if client else tracing.trace.SpanKind.INTERNAL
    return tracing.tracer.start_span(name, kind=kind, attributes=attributes, start_time=start_ns)


def end(
    s: Any,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: BaseException | None = None,
    end_ns: int | None = None,
) -> None:
    if s is None:
        return
    if attributes:
        s.set_attributes(attributes)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        s.set_attribute("error.type", type(error).__name__)
        s.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    s.end(end_time=end_ns)


def record(
    name: str, start_ns: int, end_ns: int, attributes: Mapping[str, AttributeValue] | None = None
) -> None:
    """A finished child span of the current one, with explicit times."""
    end(start(name, attributes, start_ns=start_ns), end_ns=end_ns)


def inject(headers: dict[str, str], s: Any) -> dict[str, str]:
    """`headers` with the W3C `traceparent` of span `s` (the same dict when tracing is off)."""
    tracing = _current.get()
    if tracing is None or s is None:
        return headers
    out = dict(headers)
    tracing.propagate.inject(out, context=tracing.trace.set_span_in_context(s))
    return out


def perf_to_ns(perf: float) -> int:
    """A `time.perf_counter()` reading as wall-clock nanoseconds (OpenTelemetry's time)."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)
