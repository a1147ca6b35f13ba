"""A real S3 server on loopback (moto's server mode, its own process) and a proxy in front of
it that fails a share of requests, for the object-storage tests."""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds}s")


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_S3_ADDRESSING_STYLE": "path",
}


@contextmanager
def moto_server():
    """Start `moto_server` on a free loopback port; yield its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=name)


def _creds() -> dict:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


class _FaultyProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    rng: random.Random
    failure_rate: float
    strip_namespace: bool
    counts: dict
    lock: threading.Lock

    def log_message(self, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # requests sends empty streams so
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after the chunk
                if size == 0:
                    return bytes(body)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        with self.lock:
            roll = self.rng.random()
            self.counts["requests"] += 1
        if roll < self.failure_rate / 2:
            with self.lock:
                self.counts["503"] += 1
            payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/xml")
            self.end_headers()
            self.wfile.write(payload)
            return
        if roll < self.failure_rate:
            with self.lock:
                self.counts["dropped"] += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        hop = ("connection", "keep-alive", "transfer-encoding", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if self.strip_namespace:
            # OSS answers in S3's XML without the namespace; oss2's parser expects exactly that
            data = data.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b"")
            if b"<ListBucketResult" in data:  # OSS lists each object's Type too
                data = data.replace(b"</Key>", b"</Key><Type>Normal</Type>")
            if b"<ListMultipartUploadsResult" in data and b"<NextKeyMarker" not in data:  # OSS always has them
                data = data.replace(b"</IsTruncated>", b"</IsTruncated><NextKeyMarker/><NextUploadIdMarker/>")
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # a HEAD answer has no body but tells the object's length
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@contextmanager
def faulty_proxy(endpoint: str, failure_rate: float = 0.2, seed: int = 0, strip_namespace: bool = False):
    """An HTTP proxy to `endpoint` that answers 503 or drops the connection for a share of
    requests; with `strip_namespace` it also speaks OSS's XML dialect (for oss2)."""
    host, port = endpoint.rsplit("//", 1)[1].split(":")
    counts = {"requests": 0, "503": 0, "dropped": 0}
    handler = type(
        "Handler",
        (_FaultyProxyHandler,),
        {"upstream": (host, int(port)), "rng": random.Random(seed), "failure_rate": failure_rate,
         "strip_namespace": strip_namespace, "counts": counts, "lock": threading.Lock()},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()
