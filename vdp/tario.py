"""Deterministic, atomic tar writing and tolerant tar reading.

Every stage writes its shards through `write_tar_atomically`, so a shard is either absent or
complete under its final name, and the same members always give the same bytes (fixed mtime,
owner and mode; members in the order given).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator

Member = tuple[str, bytes]


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # a fixed time keeps reruns byte-identical
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_bytes(members: Iterable[Member]) -> bytes:
    """The bytes of a tar holding `members` (name, data) in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_member_info(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def _temp_path(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temp name in the same folder and a rename."""
    write_stream_atomically(path, lambda f: f.write(data))


def write_stream_atomically(path: str, fill) -> None:
    """Call `fill(file)` on a temp file beside `path`, then rename it to `path`.

    If `fill` raises, the temp file is removed and `path` is untouched.
    """
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_tar_atomically(path: str, members: Iterable[Member]) -> int:
    """Write a deterministic tar to `path`; it appears under that name only when complete.

    `members` may be a generator: they are streamed to disk, never held together in memory.
    Returns the tar's size in bytes.
    """

    def fill(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                tar.addfile(_member_info(name, len(data)), io.BytesIO(data))

    write_stream_atomically(path, fill)
    return os.path.getsize(path)


class TarReadError(Exception):
    """A tar could not be read to its end; `members_read` says how far it got."""

    def __init__(self, reason: str, members_read: int):
        super().__init__(reason)
        self.reason = reason
        self.members_read = members_read


def iter_tar_members(fileobj) -> Iterator[Member]:
    """Yield (name, bytes) for each regular file of a tar stream, in order.

    Raises TarReadError (after yielding what was readable) when the tar is truncated or corrupt.
    """
    count = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if len(data) != info.size:
                    raise TarReadError(f"member {info.name} truncated", count)
                count += 1
                yield info.name, data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarReadError(f"corrupt tar: {e}", count) from None


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way webdataset groups samples."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (os.path.join(folder, key) if folder else key), ext
