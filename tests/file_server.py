"""A loopback HTTP server of files with Range support, for `pull`'s tests (these machines cannot
reach the Hub). It can cut a response short (`cut_after` bytes, once), or stall mid-way until
`release` is set; it records each request's Range and If-Range headers (an If-Range that is
not the file's ETag gets the whole file). It also answers the two Hub calls
`huggingface_hub` makes (`/api/models/{repo}/revision/{rev}` and `/{repo}/resolve/{rev}/{file}`),
so HF_ENDPOINT can point at it."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FileServer", "serve_files"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FileServer:
    files: dict[str, bytes]  # path (no leading /) -> content
    url: str = ""
    ranges: list[str | None] = field(default_factory=list)  # Range header of each GET
    if_ranges: list[str | None] = field(default_factory=list)  # If-Range header of each GET
    cut_after: int | None = None  # close the first GET of a file after this many bytes
    stall_after: int | None = None  # wait for `release` after this many bytes, once
    release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)
    hub_sha: dict[str, str] = field(default_factory=dict)  # sha256 the Hub API reports
    etags: bool = True  # False: no ETag (nor Last-Modified), nothing to tell files apart
    cut_every: int | None = None  # close every GET of a file after this many bytes
    fail_first: list[int] = field(default_factory=list)  # statuses the next GETs answer


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _file(self) -> tuple[str, bytes] | None:
            path = self.path.split("?")[0].lstrip("/")
            m = re.fullmatch(r"([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
            if m and m.group(0) not in state.files:
                path = f"{m.group(1)}/{m.group(2)}"
            return (path, state.files[path]) if path in state.files else None

        def _api(self) -> bool:
            m = re.fullmatch(r"/api/models/([^/?]+/[^/?]+)(?:/revision/[^/?]+)?(\?.*)?", self.path)
            if not m:
                return False
            repo = m.group(1)
            siblings = []
            for path, data in state.files.items():
                if path.startswith(repo + "/"):
                    name = path[len(repo) + 1 :]
                    sha = state.hub_sha.get(name, hashlib.sha256(data).hexdigest())
                    lfs = {"sha256": sha, "size": len(data), "pointerSize": 130}
                    siblings.append({"rfilename": name, "size": len(data), "lfs": lfs})
            body = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def _headers(self, data: bytes, start: int, path: str) -> None:
            etag = hashlib.sha256(data).hexdigest()
            if start:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            if state.etags:
                self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

        def do_HEAD(self) -> None:
            found = self._file()
            if found is None:
                self.send_error(404)
                return
            self._headers(found[1], 0, found[0])

        def do_GET(self) -> None:
            if self._api():
                return
            found = self._file()
            if found is None:
                self.send_error(404)
                return
            path, data = found
            if state.fail_first:
                state.ranges.append(self.headers.get("Range"))
                self.send_error(state.fail_first.pop(0))
                return
            header = self.headers.get("Range")
            state.ranges.append(header)
            state.if_ranges.append(self.headers.get("If-Range"))
            start = int(m.group(1)) if header and (m := re.match(r"bytes=(\d+)-", header)) else 0
            if self.headers.get("If-Range") not in (None, f'"{hashlib.sha256(data).hexdigest()}"'):
                start = 0  # changed since: the whole file (RFC 9110's If-Range)
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._headers(data, start, path)
            body = data[start:]
            if state.cut_every is not None and len(body) > state.cut_every:
                self.wfile.write(body[: state.cut_every])
                self.wfile.flush()
                self.close_connection = True
                return
            if state.cut_after is not None and not start:
                cut, state.cut_after = state.cut_after, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if state.stall_after is not None:
                stall, state.stall_after = state.stall_after, None
                self.wfile.write(body[:stall])
                self.wfile.flush()
                state.stalled.set()
                state.release.wait(60)
                body = body[stall:]
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_files(files: dict[str, bytes]) -> Iterator[FileServer]:
    state = FileServer(files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
