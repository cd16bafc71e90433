"""An OTLP/HTTP traces endpoint on 127.0.0.1 for the tests (what a collector takes: protobuf
`ExportTraceServiceRequest`s, gzipped or not), keeping every request it receives."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["Received", "otlp_receiver"]


class Received(list[ExportTraceServiceRequest]):
    """The export requests received so far, in order."""

    def spans(self) -> list[tuple[Any, Any]]:
        """Each span received, with the resource it came under."""
        return [
            (span, resource.resource)
            for request in self
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    """The endpoint's URL and what it receives, for the block."""
    received = Received()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # as a collector: the exporter's connection is kept

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()
