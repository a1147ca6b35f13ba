"""Transient or permanent: is a failed storage operation worth another try?

Decided by what the exception is, never by its text (a shard named shard-0-0-500-0.tar is
not an HTTP 500):

1. the server's word, when an answer came: an error code (S3's SlowDown, RequestTimeout, ...)
   or an HTTP status (5xx, 408, 429 transient; other 4xx permanent), read from botocore's
   ClientError, aiohttp's ClientResponseError, oss2's exceptions and vdp.io.httpfs's;
2. else the fault's kind: its errno (ECONNRESET, ETIMEDOUT, ... transient; ENOENT, ENOSPC,
   EACCES, ... permanent), then its type (connection errors, timeouts, bodies cut short).

Libraries wrap errors (s3fs turns a ClientError into an OSError, fsspec's HTTP info() turns
any failure into FileNotFoundError), so the whole `__cause__`/`__context__` chain is read,
outermost first; a wrapper that is a bare OSError (no errno) defers to what it wraps.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import sys

TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError",
    "ServiceUnavailable", "PriorRequestNotComplete",
})  # error codes S3 and OSS answer for "try again later", some with status 400
TRANSIENT_STATUSES = frozenset({408, 425, 429})  # and 5xx but 501 and 505 (not implemented, not supported)

TRANSIENT_ERRNOS = frozenset({
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EAGAIN,
    socket.EAI_AGAIN,  # "temporary failure in name resolution"
})
PERMANENT_ERRNOS = frozenset({
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EISDIR,
    errno.ENOTDIR, errno.EEXIST, errno.EINVAL, errno.ENAMETOOLONG, errno.EFBIG, errno.EBADF,
    socket.EAI_NONAME,  # no such host
})

PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
TRANSIENT_TYPES = (ConnectionError, TimeoutError, http.client.IncompleteRead)
# Network faults of the storage libraries, by module: looked up only when the module is loaded
# (an exception of a library nobody imported cannot be here), so none is imported for this.
LIBRARY_TRANSIENT_TYPES = {
    "asyncio": ("TimeoutError",),  # not the builtin one before Python 3.11
    "aiohttp": ("ClientConnectionError", "ClientPayloadError"),
    "botocore.exceptions": ("ConnectionError", "HTTPClientError", "IncompleteReadError"),
    "botocore.parsers": ("ResponseParserError",),  # an answer garbled on the way
    "oss2.exceptions": ("RequestError", "InconsistentError"),  # no answer; a CRC mismatch in transit
    "urllib3.exceptions": ("ProtocolError", "TimeoutError"),
    "requests.exceptions": ("ConnectionError", "Timeout", "ChunkedEncodingError"),
}


def exception_chain(exc: BaseException, limit: int = 16) -> list[BaseException]:
    """`exc`, then what it was raised from or during, as Python's traceback shows them."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < limit and not any(seen is c for c in chain):
        chain.append(seen)
        seen = seen.__cause__ if seen.__cause__ is not None else (None if seen.__suppress_context__ else seen.__context__)
    return chain


def _as_status(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599 else None


def status_and_code(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and error code an exception carries, if it stands for a server's answer."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        error, meta = response.get("Error") or {}, response.get("ResponseMetadata") or {}
        code = error.get("Code")
        return _as_status(meta.get("HTTPStatusCode")), code if isinstance(code, str) else None
    if response is not None and _as_status(getattr(response, "status_code", None)):  # requests' HTTPError
        return response.status_code, None
    # oss2's error code, an instance attribute (not aiohttp's deprecated `code` property)
    code = getattr(exc, "__dict__", {}).get("code")
    return _as_status(getattr(exc, "status", None)), code if isinstance(code, str) else None


def http_status(exc: BaseException) -> int | None:
    """The status of the first server answer in the exception's chain."""
    for e in exception_chain(exc):
        status = status_and_code(e)[0]
        if status is not None:
            return status
    return None


def _answer_verdict(exc: BaseException) -> bool | None:
    status, code = status_and_code(exc)
    if code in TRANSIENT_CODES:
        return True
    if status is None:
        return None
    return status in TRANSIENT_STATUSES or (500 <= status <= 599 and status not in (501, 505))


def _library_types(table: dict[str, tuple[str, ...]]) -> tuple[type, ...]:
    found = []
    for module_name, names in table.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if module is not None and isinstance(getattr(module, n, None), type)]
    return tuple(found)


def _tls_verdict(exc: ssl.SSLError) -> bool | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):  # the connection ended mid-stream
        return True
    return None


def _kind_verdict(exc: BaseException) -> bool | None:
    if isinstance(exc, ssl.SSLError):  # its errno is the TLS library's code, not the system's
        return _tls_verdict(exc)
    number = getattr(exc, "errno", None)
    if number in TRANSIENT_ERRNOS:
        return True
    if number in PERMANENT_ERRNOS:
        return False
    if isinstance(exc, PERMANENT_TYPES):
        return False
    if isinstance(exc, TRANSIENT_TYPES + _library_types(LIBRARY_TRANSIENT_TYPES)):
        return True
    return None


def _is_bare_wrapper(exc: BaseException, chain: list[BaseException]) -> bool:
    """A library's re-raise (an OSError without errno, raised from another): what it wraps knows better."""
    return isinstance(exc, OSError) and exc.errno is None and exc is not chain[-1]


def is_transient(exc: BaseException) -> bool:
    """Faults worth another try: the network or the service, not the object or the request."""
    chain = exception_chain(exc)
    for e in chain:
        verdict = _answer_verdict(e)
        if verdict is not None:
            return verdict
    fallback = None
    for e in chain:
        verdict = _kind_verdict(e)
        if verdict is None:
            continue
        if not _is_bare_wrapper(e, chain):
            return verdict
        fallback = verdict if fallback is None else fallback
    return bool(fallback)
