"""Paths that may be local files, s3:// or oss:// objects or http(s):// URLs: read, list, test,
write atomically.

Every stage reads and writes through these few functions, so object storage is one module,
not a branch in each stage.

- s3:// goes through fsspec/s3fs. Endpoint, credentials, region and addressing style come from
  the usual AWS environment and config files (AWS_PROFILE, AWS_ENDPOINT_URL,
  AWS_S3_ADDRESSING_STYLE, ...) or `configure(s3_endpoint=...)` (the `--s3_endpoint` flag), so
  S3-compatible stores (Volcengine TOS, MinIO, Ceph) work as well.
- oss:// goes through oss2 (see vdp/oss.py): OSS_ENDPOINT, OSS_ACCESS_KEY_ID,
  OSS_ACCESS_KEY_SECRET.
- http:// and https:// are read-only inputs (videos by URL) through fsspec's HTTP filesystem
  (see vdp/httpfs.py); writing to one is a usage error.

Transient faults (timeouts, 5xx, throttling, dropped connections, bodies cut short; judged by
type, status and errno in vdp/faults.py) are retried by botocore's "standard" retry mode
(exponential backoff with full jitter) with a larger attempt budget, and by `with_retries`
around whole operations (HTTP has only these, so more of them). A write appears under its
final name only when complete: a local temp file plus rename, or an S3 multipart upload that
is aborted on failure.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from vdp.io.faults import is_transient  # noqa: F401 - callers ask storage.is_transient
from vdp.io.httpfs import HTTPStatusError, URLReadError  # noqa: F401 - what callers catch for http(s) inputs

HTTP_SCHEMES = ("http://", "https://")
REMOTE_SCHEMES = ("s3://", "oss://", *HTTP_SCHEMES)


@dataclass
class StorageConfig:
    s3_endpoint: str | None = None
    max_attempts: int = 10  # per request, botocore standard mode
    operation_attempts: int = 5  # per whole operation (open + read, upload), ours
    http_attempts: int = 8  # per operation on an http(s) URL: no request-level retries below
    backoff: float = 0.2  # longest wait before the first retry (seconds); doubles per retry
    backoff_cap: float = 8.0
    http_connect_timeout: float = 10.0  # seconds; a URL's total time is bounded by these
    http_read_timeout: float = 30.0  # seconds without a byte, not for the whole body


_config = StorageConfig()
_filesystems: dict = {}  # (pid, scheme) -> filesystem; never shared across fork


def configure(s3_endpoint: str | None = None) -> None:
    """Set the S3 endpoint (else AWS_ENDPOINT_URL / the AWS config decides)."""
    _config.s3_endpoint = s3_endpoint or None
    _filesystems.clear()


def is_remote(path: str) -> bool:
    """Object storage or a URL: not a local path (never joined onto a local folder)."""
    return str(path).startswith(REMOTE_SCHEMES)


def is_url(path: str) -> bool:
    """An http(s) URL: a read-only input."""
    return str(path).startswith(HTTP_SCHEMES)


def status_note(exc: BaseException) -> str:
    """" (HTTP 404)" when `exc` is a URL's error answer, else "": for one-line reasons."""
    return f" (HTTP {exc.status})" if isinstance(exc, HTTPStatusError) else ""


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    if is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def absolute(path: str) -> str:
    """A local path made absolute; a URL as it is (what is written into flags files and indexes)."""
    return path if is_remote(path) else os.path.abspath(path)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# --- backends --------------------------------------------------------------------------------


def _s3():
    key = (os.getpid(), "s3")
    if key not in _filesystems:
        import s3fs

        client_kwargs = {}
        endpoint = _config.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        config_kwargs = {"retries": {"max_attempts": _config.max_attempts, "mode": "standard"}}
        style = os.environ.get("AWS_S3_ADDRESSING_STYLE")
        if style:
            config_kwargs["s3"] = {"addressing_style": style}
        _filesystems[key] = s3fs.S3FileSystem(
            client_kwargs=client_kwargs, config_kwargs=config_kwargs, skip_instance_cache=True, use_listings_cache=False
        )
    return _filesystems[key]


def _oss():
    key = (os.getpid(), "oss")
    if key not in _filesystems:
        from vdp.io.oss import OSSFileSystem

        _filesystems[key] = OSSFileSystem.from_env()
    return _filesystems[key]


def _http():
    key = (os.getpid(), "http")
    if key not in _filesystems:
        from vdp.io.httpfs import HTTPFileSystem

        retry = lambda fn: with_retries(fn, attempts=_config.http_attempts)  # noqa: E731
        _filesystems[key] = HTTPFileSystem(_config.http_connect_timeout, _config.http_read_timeout, retry)
    return _filesystems[key]


def backend(path: str):
    """The filesystem object behind a remote path (s3fs or vdp.oss), for the rare operation not
    wrapped here (vdp.debris lists and aborts unfinished uploads)."""
    return _store(path).fs()


def _usage_error(message: str) -> Exception:
    from vdp.errors import UsageError  # vdp.errors writes through this module

    return UsageError(message)


# --- retries ---------------------------------------------------------------------------------


def with_retries(fn: Callable, what: str = "", attempts: int | None = None):
    """Call fn(); on a transient fault wait (exponential backoff, full jitter) and call again."""
    attempts = attempts or _config.operation_attempts
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if attempt == attempts - 1 or not is_transient(e):
                raise
            time.sleep(random.uniform(0, min(_config.backoff_cap, _config.backoff * 2**attempt)))
    raise AssertionError("unreachable")


class OutputError(OSError):
    """An output that could not be written: the disk is full, the folder read-only or not ours.

    Built as OSError(errno, strerror, final path): it pickles from a worker to the parent, and
    reads as one line naming the output (never the hidden temp file).
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


# Failures of the output itself, whatever call met them (a write, a kernel copy into the file,
# the final fsync or rename); a failure of an input read inside `fill` has other numbers.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def temp_path(path: str) -> str:
    """The hidden temp file a local write of `path` fills: `.{name}.tmp-{pid}` beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")  # the name of a temp_path, `name` its final name's


def _open_locked(tmp: str):
    """Create `tmp` afresh and hold an exclusive flock on it while it is written.

    The lock tells a cleaner (vdp.debris) that a live process writes the file; a killed
    writer's lock dies with it. A cleaner may take a new file for a dead writer's in the
    instant between our create and our lock and remove it: then we create it again.
    """
    while True:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a dead process that had our pid: the name is ours now
        f = open(tmp, "xb")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        except OSError:  # a filesystem without locks: unguarded
            return f
        held, there = os.fstat(f.fileno()), _stat_or_none(tmp)
        if there is not None and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
            return f
        f.close()


def _stat_or_none(path: str):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _write_local(path: str, fill: Callable) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with _open_locked(tmp) as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OutputError:
        raise  # a write nested in `fill` (a tar's errors sidecar) already named its output
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS or e.filename in (tmp, folder, path):
            raise OutputError(e.errno, e.strerror, path) from e
        raise
    finally:
        with contextlib.suppress(OSError):  # a read-only folder keeps it: the next run removes it
            os.unlink(tmp)


def _s3_write(path: str, fill: Callable) -> None:
    def attempt() -> None:
        f = _s3().open(path, "wb", block_size=16 * 1024 * 1024)
        try:
            fill(f)
        except BaseException:
            f.discard()  # aborts the multipart upload: nothing appears under `path`
            f.closed = True
            raise
        f.close()

    # `fill` may be a one-shot generator consumer: only retry when it can be replayed.
    attempt() if not getattr(fill, "replayable", False) else with_retries(attempt)


# --- one store per kind of path --------------------------------------------------------------
# A path's scheme picks its store once (`_store`); each public operation below is one call to
# it, so how local files, S3, OSS and URLs differ is said in one place per store, not in an
# `if is_remote` branch of every function.


class _Local:
    """Files on this machine, through the os module; nothing is retried (a local error is not transient)."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def stat(self, path: str, missing_ok: bool) -> tuple[str, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        return ("directory", 0) if os.path.isdir(path) else ("file", st.st_size)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str, whole_below: int, known_size: int | None):
        return open(path, "rb")

    def open_text(self, path: str, encoding: str, newline: str | None):
        return open(path, encoding=encoding, errors="replace", newline=newline)

    def list_files(self, prefix: str, suffix: str) -> list[str]:
        out = []
        for root, dirs, files in os.walk(prefix):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            out += [os.path.join(root, f) for f in files if f.endswith(suffix) and not f.startswith(".")]
        return sorted(out)

    def write_stream(self, path: str, fill: Callable) -> None:
        _write_local(path, fill)

    def write_bytes(self, path: str, fill: Callable) -> None:
        write_stream_atomically(path, fill)  # a local write is not retried: its errors are the disk's

    def check_output_folder(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission on {path}")

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)


class _Remote:
    """An object store behind an fsspec-style filesystem; every request is retried on transient faults."""

    def fs(self):
        raise NotImplementedError

    def attempts(self) -> int | None:
        """Tries per whole operation; None: the configured default (read when called: tests change it)."""
        return None

    def _retrying(self, fn: Callable):
        return with_retries(fn, attempts=self.attempts())

    def exists(self, path: str) -> bool:
        return self._retrying(lambda: self.fs().exists(path))

    def isdir(self, path: str) -> bool:
        return self._retrying(lambda: self.fs().isdir(path))

    def size(self, path: str) -> int:
        return self._retrying(lambda: int(self.fs().size(path)))

    def stat(self, path: str, missing_ok: bool) -> tuple[str, int] | None:
        def ask():
            try:
                info = self.fs().info(path)
            except FileNotFoundError:
                if missing_ok:
                    return None
                raise
            return ("directory", 0) if info.get("type") == "directory" else ("file", int(info.get("size") or 0))

        return self._retrying(ask)

    def read_bytes(self, path: str) -> bytes:
        return self._retrying(lambda: self.fs().cat_file(path))

    def open_read(self, path: str, whole_below: int, known_size: int | None):
        # Through the module's size and read_bytes, which tests may replace.
        n = size(path) if known_size is None else known_size
        if n < whole_below:
            return io.BytesIO(read_bytes(path))
        return self._open_stream(path, n)

    def _open_stream(self, path: str, n: int):
        fs = self.fs()
        return with_retries(lambda: fs.open(path, "rb", block_size=16 * 1024 * 1024, cache_type="readahead"))

    def open_text(self, path: str, encoding: str, newline: str | None):
        return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding, errors="replace", newline=newline)

    def list_files(self, prefix: str, suffix: str) -> list[str]:
        fs = self.fs()
        scheme = prefix.split("://", 1)[0] + "://"
        found = with_retries(lambda: fs.find(prefix.rstrip("/")))
        paths = [p if p.startswith(scheme) else scheme + p for p in found]
        return sorted(p for p in paths if p.endswith(suffix) and not _hidden_below(prefix, p))

    def write_stream(self, path: str, fill: Callable) -> None:
        raise NotImplementedError

    def write_bytes(self, path: str, fill: Callable) -> None:
        with_retries(lambda: write_stream_atomically(path, fill))  # `fill` is replayable: a failed upload is redone

    def bucket_exists(self, bucket: str) -> bool:
        raise NotImplementedError

    def check_output_folder(self, path: str) -> None:
        from vdp.errors import UsageError  # vdp.errors writes through this module

        scheme, rest = path.split("://", 1)
        bucket = rest.split("/", 1)[0]
        if not with_retries(lambda: self.bucket_exists(bucket)):
            raise UsageError(f"bucket not found: {scheme}://{bucket} (for {path})")

    def makedirs(self, path: str) -> None:
        pass  # an object store has no folders: a key's prefix exists once an object is under it


def _hidden_below(prefix: str, path: str) -> bool:
    """A hidden name (temp files, .nv-meta) anywhere in `path` below `prefix`."""
    return any(part.startswith(".") for part in path[len(prefix) :].split("/"))


class _S3(_Remote):
    """s3:// through s3fs: a write is a multipart upload, aborted when `fill` raises."""

    def fs(self):
        return _s3()

    def write_stream(self, path: str, fill: Callable) -> None:
        _s3_write(path, fill)

    def bucket_exists(self, bucket: str) -> bool:
        return _s3().exists(f"s3://{bucket}")


class _OSS(_Remote):
    """oss:// through vdp.io.oss, which does its own atomic multipart write."""

    def fs(self):
        return _oss()

    def write_stream(self, path: str, fill: Callable) -> None:
        _oss().write_atomically(path, fill)

    def bucket_exists(self, bucket: str) -> bool:
        return _oss().bucket_exists(bucket)


class _HTTP(_Remote):
    """http(s):// URLs: read-only inputs, naming one file each; ranged GETs, each retried, for a stream."""

    def fs(self):
        return _http()

    def attempts(self) -> int | None:
        return _config.http_attempts  # no request-level retries below, so more of these

    def _open_stream(self, path: str, n: int):
        return self.fs().open(path, n, block_size=16 * 1024 * 1024)

    def list_files(self, prefix: str, suffix: str) -> list[str]:
        raise _usage_error(f"cannot list {prefix}: an http(s) URL names one file, not a folder")

    def write_stream(self, path: str, fill: Callable) -> None:
        raise _usage_error(f"cannot write to {path}: http(s) URLs are read-only inputs")

    def check_output_folder(self, path: str) -> None:
        self.write_stream(path, lambda f: None)


_LOCAL = _Local()
_STORES = {"s3://": _S3(), "oss://": _OSS(), "http://": _HTTP(), "https://": _HTTP()}


def _store(path: str) -> _Local | _Remote:
    """The store a path's scheme names; a path without a remote scheme is a local file."""
    for scheme, store in _STORES.items():
        if str(path).startswith(scheme):
            return store
    return _LOCAL


# --- the operations --------------------------------------------------------------------------


def exists(path: str) -> bool:
    return _store(path).exists(path)


def isdir(path: str) -> bool:
    return _store(path).isdir(path)


def size(path: str) -> int:
    return _store(path).size(path)


def stat(path: str, missing_ok: bool = True) -> tuple[str, int] | None:
    """("file", size) or ("directory", 0), or None when nothing is there: one request remotely.

    With `missing_ok=False` nothing there raises FileNotFoundError instead, which for a URL
    tells the HTTP status (404 or 410). A URL whose server tells no length is read to count it.
    """
    return _store(path).stat(path, missing_ok)


def read_bytes(path: str) -> bytes:
    return _store(path).read_bytes(path)


def open_read(path: str, whole_below: int = 64 * 1024 * 1024, known_size: int | None = None):
    """A seekable binary file object for PyAV, tarfile or json.

    A remote object smaller than `whole_below` is read in one request into memory (one round
    trip beats the many small ranged reads a demuxer makes); a larger one is streamed with
    large read-ahead blocks (for a URL: ranged GETs, each retried). Nothing is staged on disk.
    """
    return _store(path).open_read(path, whole_below, known_size)


def open_text(path: str, encoding: str = "utf-8", newline: str | None = None):
    return _store(path).open_text(path, encoding, newline)


def list_files(prefix: str, suffix: str = "") -> list[str]:
    """Every file below `prefix` ending in `suffix`, sorted; hidden names are left out."""
    return _store(prefix).list_files(prefix, suffix)


def write_stream_atomically(path: str, fill: Callable) -> None:
    """Call `fill(file)`; `path` appears only if it returns, complete, never half-written.

    Local: a hidden temp file beside `path` (locked while written), fsync, rename; a full disk or
    a folder that cannot be written raises OutputError naming `path`. Remote: a multipart upload
    that is completed only after `fill` returns and aborted if it raises.
    """
    _store(path).write_stream(path, fill)


def write_bytes_atomically(path: str, data: bytes) -> None:
    def fill(f) -> None:
        f.write(data)

    fill.replayable = True  # type: ignore[attr-defined]
    _store(path).write_bytes(path, fill)


def check_output_folder(path: str) -> None:
    """Raise UsageError, one line, when outputs cannot go to `path`; called before any work.

    Local: the folder is created and must be writable. Remote: its bucket must exist and answer
    with the configured endpoint and credentials (a typo in the bucket, a wrong endpoint or key
    would otherwise surface only at the first shard's upload, or after a whole index scan).
    """
    from vdp.errors import UsageError  # vdp.errors writes through this module

    try:
        _store(path).check_output_folder(path)
    except UsageError:
        raise
    except Exception as e:  # the user's to fix: a path, a permission, an endpoint or credentials
        raise UsageError(f"cannot write to {path}: {type(e).__name__}: {e}") from None


def makedirs(path: str) -> None:
    _store(path).makedirs(path)
