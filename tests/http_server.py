"""A small threaded HTTP server on 127.0.0.1 for download tests (no network needed).

It serves in-memory files, honours ``Range: bytes=N-``, ``bytes=N-M`` and ``bytes=-N`` (206 / 416)
and can misbehave on purpose: cut the connection after N bytes of the first response, or in the
first response that reaches byte X of the file, answer the first K requests with 503, ignore
Range headers (plain 200 without ``Accept-Ranges``, as a server without range support), or
redirect. Every request is recorded for assertions.

Use it as a fixture by importing it into a test module::

    from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

    def test_x(http_server: LocalHTTPServer) -> None:
        url = http_server.add("/a.bin", b"data")
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_SUFFIX_RANGE = re.compile(r"bytes=-(\d+)")


@dataclass
class ServedFile:
    data: bytes
    cut_after: int | None = None  # first data response: full Content-Length, then only N bytes
    cut_at: int | None = None  # first response whose body passes file byte X: stop at X, cut
    fail_first: int = 0  # the first K requests get 503
    ignore_range: bool = False  # always answer 200 with the whole file
    redirect_to: str | None = None  # answer 302 to this path instead
    requests: int = 0
    cut_done: bool = False


@dataclass(frozen=True)
class RequestRecord:
    path: str
    headers: dict[str, str]
    status: int

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class LocalHTTPServer:
    """Owns the server thread; ``add`` files, read ``requests`` afterwards."""

    files: dict[str, ServedFile] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() (one per test) from waiting the default 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(
        self,
        path: str,
        data: bytes,
        *,
        cut_after: int | None = None,
        fail_first: int = 0,
        ignore_range: bool = False,
        cut_at: int | None = None,
    ) -> str:
        """Serve ``data`` at ``path`` (replacing what was there) and return its URL."""
        with self.lock:
            self.files[path] = ServedFile(
                data,
                cut_after=cut_after,
                cut_at=cut_at,
                fail_first=fail_first,
                ignore_range=ignore_range,
            )
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        with self.lock:
            self.files[path] = ServedFile(b"", redirect_to=target)
        return self.url(path)

    def requests_for(self, path: str) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _make_handler(owner: LocalHTTPServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            with owner.lock:
                served = owner.files.get(self.path)
                if served is not None:
                    served.requests += 1
                    failing = served.requests <= served.fail_first
            if served is None:
                return self._reply(404, b"not found")
            if failing:
                return self._reply(503, b"try again later")
            if served.redirect_to is not None:
                return self._reply(302, b"", {"Location": served.redirect_to})
            self._send_data(served)

        def _byte_range(self, served: ServedFile) -> tuple[int, int, int] | None:
            """(status, start, end) to answer with; None when the range cannot be satisfied."""
            total = len(served.data)
            header = self.headers.get("Range", "").strip()
            match, suffix = _RANGE.fullmatch(header), _SUFFIX_RANGE.fullmatch(header)
            if served.ignore_range or (match is None and suffix is None):
                return 200, 0, total
            if suffix is not None:
                length = int(suffix.group(1))
                return (206, max(0, total - length), total) if length and total else None
            assert match is not None
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, total) if match.group(2) else total
            return (206, start, end) if start < total and start < end else None

        def _take_cut(self, served: ServedFile, start: int, end: int) -> int | None:
            """Bytes of this body to send before dropping the connection, None to send it all."""
            with owner.lock:
                if served.cut_done:
                    return None
                if served.cut_after is not None:
                    served.cut_done = True
                    return served.cut_after
                if served.cut_at is not None and start <= served.cut_at < end:
                    served.cut_done = True
                    return served.cut_at - start
            return None

        def _send_data(self, served: ServedFile) -> None:
            data, total = served.data, len(served.data)
            answer = self._byte_range(served)
            if answer is None:
                return self._reply(416, b"", {"Content-Range": f"bytes */{total}"})
            status, start, end = answer
            headers = {"Content-Type": "application/octet-stream"}
            if not served.ignore_range:
                headers["Accept-Ranges"] = "bytes"
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
            body = data[start:end]
            cut = self._take_cut(served, start, end)
            self._record(status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is None:
                self.wfile.write(body)
                return
            # Promise the whole body, deliver part of it, then drop the connection.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self._record(status)
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self, status: int) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            with owner.lock:
                owner.requests.append(RequestRecord(self.path, headers, status))

    return Handler


# Registered as ``http_server`` but defined under another Python name, so importing it into a test
# module and naming the test argument ``http_server`` does not shadow the import (ruff F811).
@pytest.fixture(name="http_server")
def http_server_fixture() -> Iterator[LocalHTTPServer]:
    """A fresh local server per test, shut down afterwards."""
    server = LocalHTTPServer()
    try:
        yield server
    finally:
        server.close()
