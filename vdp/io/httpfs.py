"""http(s):// URLs as read-only inputs, behind the operations vdp.io.storage uses, through fsspec's
HTTP filesystem (aiohttp).

HTTP has no retry layer underneath (botocore has one for S3): vdp.io.storage retries whole
operations, so every failure leaves this module as an exception that says what went wrong in
a form `storage.is_transient` can judge: an answer's status (`HTTPStatusError.status`; 404 and
410 are also FileNotFoundError, 401 and 403 PermissionError), or a network fault raised from
aiohttp's own exception (refused, reset, timed out, a body shorter than its Content-Length).
Each message names the URL.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vdp.io.faults import exception_chain, http_status
from vdp.io.ranged import RangedReader


class URLReadError(OSError):
    """An http(s) input that could not be read; the message names the URL and why."""


class HTTPStatusError(URLReadError):
    def __init__(self, url: str, status: int):
        super().__init__(f"{url} (HTTP {status})")
        self.url, self.status = url, status

    def __reduce__(self):  # crosses process boundaries with its status
        return type(self), (self.url, self.status)


class HTTPNotFound(HTTPStatusError, FileNotFoundError):
    """404 or 410."""


class HTTPForbidden(HTTPStatusError, PermissionError):
    """401 or 403."""


class RangeError(URLReadError):
    """A ranged read answered with other bytes than asked for."""


def _describe(exc: BaseException) -> str:
    """The network fault in one short line: the first exception in the chain that has a message,
    past fsspec's FileNotFoundError (its info() turns every failure into one) and empty timeouts."""
    chain = exception_chain(exc)
    told = [e for e in chain if str(e) and not isinstance(e, FileNotFoundError)] or chain
    return " ".join(f"{type(told[0]).__name__}: {told[0]}".split())[:200]


def translate(url: str, exc: BaseException) -> URLReadError:
    """The URLReadError that says what `exc`, raised while reading `url`, means."""
    status = http_status(exc)
    if status is None and isinstance(exc, FileNotFoundError) and exc.__cause__ is None:
        status = 404  # fsspec's cat_file raises a bare FileNotFoundError for a 404 and only then
    if status in (404, 410):
        return HTTPNotFound(url, status)
    if status in (401, 403):
        return HTTPForbidden(url, status)
    if status is not None:
        return HTTPStatusError(url, status)
    return URLReadError(f"{url} ({_describe(exc)})")


def _failures() -> tuple[type[BaseException], ...]:
    import asyncio

    import aiohttp

    return (aiohttp.ClientError, OSError, asyncio.TimeoutError)


@contextmanager
def _named(url: str) -> Iterator[None]:
    """Re-raise a network or HTTP failure as a URLReadError naming `url` (chained: `from` it)."""
    try:
        yield
    except URLReadError:
        raise
    except _failures() as e:
        raise translate(url, e) from e


class HTTPFileSystem:
    """The operations vdp.io.storage needs, for http:// and https:// URLs (read-only)."""

    def __init__(self, connect_timeout: float, read_timeout: float, retry: Callable):
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem as FsspecHTTP

        # no total limit: a large video may take long; a stalled connection may not
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._fs = FsspecHTTP(client_kwargs={"timeout": timeout, "trust_env": True}, skip_instance_cache=True)
        self._retry = retry  # storage's retry of whole operations, for each ranged read of open()

    def info(self, url: str) -> dict:
        """{"type": "file", "size": n}: HEAD, else a GET's headers; a body without a length is counted."""
        with _named(url):
            size = self._fs.info(url).get("size")
        if size is None:
            size = len(self.cat_file(url))
        return {"type": "file", "size": int(size)}

    def size(self, url: str) -> int:
        return self.info(url)["size"]

    def exists(self, url: str) -> bool:
        try:
            self.info(url)
        except HTTPNotFound:
            return False
        return True

    def isdir(self, url: str) -> bool:
        return False  # a URL names one resource

    def cat_file(self, url: str) -> bytes:
        with _named(url):
            return self._fs.cat_file(url)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes start..end-1, retried as a whole operation."""
        return self._retry(lambda: self._cat_range(url, start, end))

    def _cat_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes start..end-1, exactly, or an error (a server may ignore Range and send all)."""
        with _named(url):
            data = self._fs.cat_file(url, start=start, end=end)
        if len(data) != end - start:
            raise RangeError(f"{url} (asked for bytes {start}-{end - 1}, got {len(data)} bytes)")
        return data

    def open(self, url: str, size: int, block_size: int):
        """A seekable file object over ranged GETs, each retried as a whole."""
        return io.BufferedReader(RangedReader(lambda start, end: self.read_range(url, start, end), size), block_size)
