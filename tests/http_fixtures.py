"""A threaded HTTP server on loopback serving a folder's files, with Range requests, that can
misbehave on demand, for the http(s) input tests.

`serve_folder(folder)` starts it; `server.behaving(...)` switches, for a `with` block, to a
server that refuses HEAD, tells no Content-Length, answers fixed statuses for some names, or
fails a share of requests drawn from a seeded random generator, counting what it did. The
failures take turns (503, a dropped connection, a body cut short), so a few failed GETs
already meet every kind whichever requests the threads' timing made them.
"""

from __future__ import annotations

import http.server
import mimetypes
import os
import random
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

FAULTS = ("503", "drop", "short")


@dataclass
class Behaviour:
    head: bool = True  # False: HEAD is answered 405, as some CDNs and signed-URL servers do
    content_length: bool = True  # False: a body ends when the connection closes, length untold
    statuses: dict[str, int] = field(default_factory=dict)  # file name -> status always answered
    failure_rate: float = 0.0  # share of requests that fail with one of `faults`
    faults: tuple[str, ...] = FAULTS
    seed: int = 0
    stall: float = 0.0  # seconds to wait before answering (a server that hangs)


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder = os.path.abspath(folder)
        self.behaviour = Behaviour()
        self.counts: Counter = Counter()
        self._rng = random.Random(0)
        self._turns: Counter = Counter()  # failures so far, by method
        self._lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets and broken pipes are the faults we made
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @contextmanager
    def behaving(self, **changes):
        """Serve with `Behaviour(**changes)` inside the block; yields the counts of that block."""
        before = self.behaviour
        self.behaviour, self.counts = Behaviour(**changes), Counter()
        self._rng, self._turns = random.Random(self.behaviour.seed), Counter()
        try:
            yield self.counts
        finally:
            self.behaviour = before

    def draw_fault(self, method: str) -> str:
        """The fault this request meets ("" for none), counted under the server's lock."""
        with self._lock:
            self.counts[method] += 1
            b = self.behaviour
            if self._rng.random() >= b.failure_rate:
                return ""
            kinds = [f for f in b.faults if method == "GET" or f != "short"] or ["drop"]  # HEAD has no body to cut
            fault = kinds[self._turns[method] % len(kinds)]
            self._turns[method] += 1
            self.counts[fault] += 1
            return fault


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def _serve(self, with_body: bool) -> None:
        behaviour = self.server.behaviour
        fault = self.server.draw_fault(self.command)
        if behaviour.stall:
            time.sleep(behaviour.stall)
        if fault == "drop":
            return self._drop()
        if fault == "503":
            return self._status(503, with_body)
        if not with_body and not behaviour.head:
            return self._status(405, with_body)
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if name in behaviour.statuses:
            return self._status(behaviour.statuses[name], with_body)
        path = os.path.join(self.server.folder, name)
        if "/" in name or ".." in name or not os.path.isfile(path):
            return self._status(404, with_body)
        with open(path, "rb") as f:
            data = f.read()
        self._send_file(data, mimetypes.guess_type(name)[0], with_body, cut=fault == "short")

    def _send_file(self, data: bytes, mimetype: str | None, with_body: bool, cut: bool) -> None:
        status, headers, body = 200, {"Accept-Ranges": "bytes"}, data
        wanted = _byte_range(self.headers.get("Range"), len(data))
        if wanted == "unsatisfiable":
            return self._status(416, with_body, {"Content-Range": f"bytes */{len(data)}"})
        if wanted is not None:
            start, end = wanted
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Type"] = mimetype or "application/octet-stream"
        self._answer(status, headers, body if with_body else b"", len(body), cut)

    def _status(self, status: int, with_body: bool, headers: dict | None = None) -> None:
        text = f"{status} {http.HTTPStatus(status).phrase}\n".encode()
        self._answer(status, {"Content-Type": "text/plain", **(headers or {})}, text if with_body else b"", len(text))

    def _answer(self, status: int, headers: dict, body: bytes, length: int, cut: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if self.server.behaviour.content_length:
            self.send_header("Content-Length", str(length))
        else:  # HTTP/1.1 without a length: the body runs to the connection's end
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if cut:  # the promised length, half the bytes, then the connection is gone
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return self._drop()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single-range `Range` header; None when there is none to honour."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not m or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":  # the last N bytes
        first, last = max(0, size - int(m.group(2))), size - 1
    else:
        first = int(m.group(1))
        last = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
    return "unsatisfiable" if first >= size or first > last else (first, last)


@contextmanager
def serve_folder(folder: str):
    """A FileServer for `folder` on a free loopback port, on its own thread."""
    server = FileServer(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
