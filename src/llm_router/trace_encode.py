"""OTLP/protobuf encoding of span records (trace_export.Record) straight into the bytes of an
`ExportTraceServiceRequest`, for the exporter process.

The SDK's way (a `ReadableSpan` per record, the BatchSpanProcessor, then the exporter's
encoder building a protobuf message per span, attribute and value) cost the exporter process
~25 us a span, on the same two cores as the router. This writes the wire format itself: the
resource and the scope once, a span as a few byte strings joined, and an attribute's encoded
key-value pair looked up in a bounded cache, since most repeat (method, path, model, route).

The bytes are what the SDK's encoder (`encode_spans`) makes of the same spans, field for field:
the same resource and scope, ids, trace state, parent, name, kind, times, attributes (of the
same value types: str, bool, int, float, bytes, sequences, mappings, None), events, status and
flags (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`, and `..._IS_REMOTE_MASK` under a remote
parent); tests/test_trace_encode.py parses both and compares them. An attribute whose value
the SDK could not encode either (another type, an int beyond int64) is left out, as it does."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trace_export import Record

__all__ = ["MAX_BYTES", "Encoder"]

log = logging.getLogger(__name__)
# Spans a request carries, in bytes: a gRPC collector takes up to 4 MiB a message by default,
# and a request per 512 spans (the BatchSpanProcessor's) was half the exporter process's CPU.
MAX_BYTES = 1 << 20
_CACHE_MAX = 20_000  # cached key-value pairs (most are a few dozen bytes)
_ERROR = 2  # StatusCode.ERROR: the only status with a description
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7), end_time_unix_nano (8): fixed64
_EVENT_TIME = struct.Struct("<BQ")  # Event.time_unix_nano (1): fixed64
_FLAGS = struct.Struct("<2sI")  # Span.flags (16): fixed32
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4)
_FLAG_TAG = b"\x85\x01"  # field 16, wire type 5
_SMALL = [bytes((n,)) for n in range(128)]
_KINDS = [b"\x30" + bytes((k + 1,)) for k in range(5)]  # OTLP's SpanKind: the SDK's + 1
# Span.flags: its two values, packed once
_LOCAL_FLAGS = _FLAGS.pack(_FLAG_TAG, _HAS_IS_REMOTE)
_REMOTE_FLAGS = _FLAGS.pack(_FLAG_TAG, _HAS_IS_REMOTE | _IS_REMOTE)
_STR = frozenset({str})
_PER_KEY = 5_000  # cached values of one key: a key whose values never repeat clears only its own
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _value(v: Any) -> bytes:
    """An `AnyValue` (as the SDK's `_encode_value`: bool before int, str before sequence)."""
    if v is None:
        return b""
    if v is True or v is False:
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, str):
        return _field(b"\x0a", v.encode())
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"{v} is beyond int64")
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return _DOUBLE.pack(0x21, v)
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _value(x)) for x in v))
    if isinstance(v, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), x)) for k, x in v.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"invalid type {type(v).__name__} of value {v!r}")


def _key_value(key: str, v: Any) -> bytes:
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _value(v))


class Encoder:
    """The request bytes of a batch of records, under one resource and one instrumentation
    scope. Not thread-safe (its cache): one per exporting thread."""

    def __init__(
        self,
        resource: Mapping[str, Any],
        scope: str,
        version: str,
        schema_url: str = "",
    ) -> None:
        # key -> its values' encoded pairs: a str value by itself, an int, a bool or a tuple of
        # str by (type, value)
        self.cache: dict[str, dict[Any, bytes]] = {}
        self.names: dict[str, bytes] = {}
        self.trace = (0, b"")  # the last trace id, and its bytes (a request's spans share it)
        self.unencodable: set[str] = set()
        attributes = self._attributes(resource, b"\x0a")
        self.resource = _field(b"\x0a", attributes)  # ResourceSpans.resource (1)
        self.schema = _field(b"\x1a", schema_url.encode()) if schema_url else b""
        scope_fields = _field(b"\x0a", scope.encode()) + (
            _field(b"\x12", version.encode()) if version else b""
        )
        self.scope = _field(b"\x0a", scope_fields)  # ScopeSpans.scope (1)

    def request(self, records: Sequence[Record]) -> bytes:
        """An `ExportTraceServiceRequest` of `records`, serialized."""
        return self._wrap([_field(b"\x12", self.span(r)) for r in records])

    def requests(
        self, records: Iterable[Record], max_spans: int | None, max_bytes: int = MAX_BYTES
    ) -> Iterator[tuple[bytes, int]]:
        """`records` in requests of at most `max_spans` spans (None: any number) and of
        `max_bytes` bytes of spans (one span alone may be more), each with its count of spans."""
        spans: list[bytes] = []
        size = 0
        for rec in records:
            span = _field(b"\x12", self.span(rec))
            if spans and (size + len(span) > max_bytes or len(spans) == max_spans):
                yield self._wrap(spans), len(spans)
                spans, size = [], 0
            spans.append(span)
            size += len(span)
        if spans:
            yield self._wrap(spans), len(spans)

    def _wrap(self, spans: list[bytes]) -> bytes:
        scope_spans = _field(b"\x12", self.scope + b"".join(spans))
        return _field(b"\x0a", self.resource + scope_spans + self.schema)

    def span(self, rec: Record) -> bytes:
        """One `Span` message."""
        name, kind, trace_id, span_id, parent_id, remote, _, state, start, end = rec[:10]
        attributes, status, events = rec[10:]
        last, trace = self.trace
        if trace_id != last:
            trace = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
            self.trace = (trace_id, trace)
        head = trace + span_id.to_bytes(8, "big")
        if state:
            head += _field(b"\x1a", state.encode())
        if parent_id:
            head += b"\x22\x08" + parent_id.to_bytes(8, "big")
        encoded_name = self.names.get(name)
        if encoded_name is None:
            encoded_name = _field(b"\x2a", name.encode()) if name else b""
            if len(self.names) < _CACHE_MAX:
                self.names[name] = encoded_name
        parts = [
            head,
            encoded_name,
            _KINDS[kind],
            _TIMES.pack(0x39, start, 0x41, end),
            self._span_attributes(attributes),
        ]
        if events:
            parts.append(b"".join([_field(b"\x5a", self._event(*e)) for e in events]))
        if status is None:
            parts.append(b"\x7a\x00")  # the SDK sends the UNSET status, empty
        else:
            code, description = status
            message = (
                _field(b"\x12", description.encode()) if description and code == _ERROR else b""
            )
            parts.append(_field(b"\x7a", message + (b"\x18" + _varint(code) if code else b"")))
        parts.append(_REMOTE_FLAGS if parent_id and remote else _LOCAL_FLAGS)
        return b"".join(parts)

    def _event(self, name: str, attributes: Mapping[str, Any], at: int) -> bytes:
        return (
            _EVENT_TIME.pack(0x09, at)
            + _field(b"\x12", name.encode())
            + self._attributes(attributes, b"\x1a")
        )

    def _span_attributes(self, attributes: Mapping[str, Any]) -> bytes:
        """Each attribute as a `Span.attributes` field (9); the encoded pairs of scalar values
        come from the cache, by key (a key's values cleared when it holds `_PER_KEY`: a
        request id, unique, clears its own and not the values that repeat)."""
        cache = self.cache
        out = []
        for key, v in attributes.items():
            cls = v.__class__
            if cls is str:
                found = v
            elif cls is int or cls is bool:
                found = (cls, v)  # True == 1, and each is encoded differently
            elif cls is tuple and _STR.issuperset(map(type, v)):
                found = (cls, v)  # strings: ("stop",), a finish reason
            else:  # a float is not cached: 0.0 == -0.0, and each is encoded differently
                out.append(self._pair(b"\x4a", key, v))
                continue
            values = cache.get(key)
            if values is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                values = cache[key] = {}
            encoded = values.get(found)
            if encoded is None:
                encoded = self._pair(b"\x4a", key, v)
                if len(values) >= _PER_KEY:
                    values.clear()
                values[found] = encoded
            out.append(encoded)
        return b"".join(out)

    def _attributes(self, attributes: Mapping[str, Any], tag: bytes) -> bytes:
        """Each attribute as field `tag`, a `KeyValue`."""
        return (
            b"".join([self._pair(tag, k, v) for k, v in attributes.items()]) if attributes else b""
        )

    def _pair(self, tag: bytes, key: str, v: Any) -> bytes:
        try:
            return _field(tag, _key_value(key, v))
        except Exception as exc:  # as the SDK: the attribute is left out (said once a key)
            if key not in self.unencodable:
                self.unencodable.add(key)
                log.warning("tracing: attribute %s left out: %s", key, exc)
            return b""
