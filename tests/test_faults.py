"""Transient or permanent by exception type, status code and errno, never by message text:
which failures `storage.with_retries` tries again (counted calls of the operation)."""

from __future__ import annotations

import errno
import socket

import aiohttp
import oss2
import pytest
import yarl
from botocore.exceptions import ClientError, EndpointConnectionError
from multidict import CIMultiDict, CIMultiDictProxy
from s3fs.errors import translate_boto_error

from tests.http_fixtures import closed_port
from vdp.io import storage
from vdp.io.faults import is_transient
from vdp.io.httpfs import HTTPNotFound, HTTPStatusError

SHARD = "s3://bucket/shards/shard-0-0-500-0.tar"  # the default --samples_per_tar puts 500 in names


def client_error(status: int, code: str) -> ClientError:
    response = {"Error": {"Code": code, "Message": f"{code} for {SHARD}"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


def response_error(status: int) -> aiohttp.ClientResponseError:
    url = yarl.URL("http://127.0.0.1/v.mp4")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="")


def raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as e:
        return e


def refused_through_fsspec() -> BaseException:
    """What fsspec's HTTP info() raises for a refused connection: FileNotFoundError, caused by it."""
    from fsspec.implementations.http import HTTPFileSystem

    try:
        HTTPFileSystem(skip_instance_cache=True).info(f"http://127.0.0.1:{closed_port()}/v.mp4")
    except FileNotFoundError as e:
        return e
    raise AssertionError("the connection was not refused")


PERMANENT = {
    "OSError EINVAL naming a 500 shard": lambda: OSError(errno.EINVAL, f"bad request for {SHARD}"),
    "RuntimeError naming a 500 shard": lambda: RuntimeError(f"Connection to {SHARD} failed: 503 InternalError"),
    "ValueError naming a 500 shard": lambda: ValueError(f"short read in {SHARD}"),
    "FileNotFoundError": lambda: FileNotFoundError(SHARD),
    "ENOSPC": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "EACCES": lambda: OSError(errno.EACCES, "Permission denied"),
    "S3 403": lambda: client_error(403, "AccessDenied"),
    "S3 404": lambda: client_error(404, "NoSuchKey"),
    "s3fs PermissionError from 403": lambda: translate_boto_error(client_error(403, "AccessDenied")),
    "HTTP 403": lambda: response_error(403),
    "HTTP 404": lambda: response_error(404),
    "URL 404": lambda: HTTPNotFound("http://h/v.mp4", 404),
    "OSS NoSuchKey": lambda: oss2.exceptions.NotFound(404, {}, b"", {"Code": "NoSuchKey"}),
    "unknown host": lambda: socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
}
TRANSIENT = {
    "S3 503 SlowDown": lambda: client_error(503, "SlowDown"),
    "S3 500 InternalError": lambda: client_error(500, "InternalError"),
    "S3 400 RequestTimeout": lambda: client_error(400, "RequestTimeout"),
    "s3fs OSError from SlowDown": lambda: translate_boto_error(client_error(503, "SlowDown")),
    "HTTP 503": lambda: response_error(503),
    "HTTP 429": lambda: response_error(429),
    "URL 502": lambda: HTTPStatusError("http://h/v.mp4", 502),
    "connection reset": lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "ECONNREFUSED errno": lambda: OSError(errno.ECONNREFUSED, "Connection refused"),
    "EPIPE errno": lambda: OSError(errno.EPIPE, "Broken pipe"),
    "timeout": lambda: TimeoutError("timed out"),
    "read timeout": lambda: aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
    "body cut short": lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
    "server disconnected": lambda: aiohttp.ServerDisconnectedError(),
    "botocore endpoint": lambda: EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    "OSS 503": lambda: oss2.exceptions.ServerError(503, {}, b"", {"Code": "ServiceUnavailable"}),
    "OSS no answer": lambda: oss2.exceptions.RequestError(ConnectionResetError("reset")),
    "wrapped: RuntimeError from a reset": lambda: raised_from(RuntimeError("upload failed"), ConnectionResetError()),
    "fsspec FileNotFoundError from a refused connection": refused_through_fsspec,
}


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent(name):
    assert not is_transient(PERMANENT[name]())


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient(name):
    assert is_transient(TRANSIENT[name]())


def test_a_cause_hidden_with_from_none_is_not_read():
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise ValueError(f"bad tar {SHARD}") from None
    except ValueError as e:
        assert not is_transient(e)


@pytest.fixture()
def no_waits(monkeypatch):
    monkeypatch.setattr(storage._config, "backoff", 0.0)


def calls_until_done(errors: list[BaseException]) -> tuple[int, BaseException | None]:
    """Run an operation failing with `errors` in turn, then succeeding, under with_retries."""
    calls = []

    def operation():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    try:
        storage.with_retries(operation)
    except Exception as e:  # noqa: BLE001 - the test looks at what came out
        return len(calls), e
    return len(calls), None


@pytest.mark.parametrize("name", ["OSError EINVAL naming a 500 shard", "RuntimeError naming a 500 shard", "S3 403",
                                  "S3 404", "HTTP 403", "HTTP 404"])
def test_permanent_errors_are_raised_at_once(no_waits, name):
    calls, raised = calls_until_done([PERMANENT[name]()] * 3)
    assert calls == 1 and raised is not None


@pytest.mark.parametrize("name", ["S3 503 SlowDown", "S3 500 InternalError", "HTTP 503", "connection reset", "timeout",
                                  "body cut short"])
def test_transient_errors_are_retried(no_waits, name):
    calls, raised = calls_until_done([TRANSIENT[name]() for _ in range(2)])
    assert (calls, raised) == (3, None)


def test_retries_end_after_the_attempt_budget(no_waits):
    calls, raised = calls_until_done([TRANSIENT["HTTP 503"]() for _ in range(20)])
    assert calls == storage._config.operation_attempts and isinstance(raised, aiohttp.ClientResponseError)
