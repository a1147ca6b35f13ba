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

from vdp.errors import jsonl_bytes
from vdp.io import storage

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


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path` (local or object storage); it appears only when complete."""
    storage.write_bytes_atomically(path, data)


def write_errors_file(path: str, rows: list[dict]) -> None:
    """An errors file (one JSON object a line), appearing only when complete."""
    write_bytes_atomically(path, jsonl_bytes(rows))


def write_stream_atomically(path: str, fill) -> None:
    """Call `fill(file)`; `path` appears only if it returns (temp + rename, or multipart upload)."""
    storage.write_stream_atomically(path, fill)


class _CountingWriter:
    """Counts bytes on their way to the real file (an upload cannot be sized afterwards cheaply)."""

    def __init__(self, f):
        self._f, self.count = f, 0

    def write(self, data) -> int:
        self._f.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def write_tar_atomically(path: str, members: Iterable[Member]) -> int:
    """Write a deterministic tar to `path`; it appears under that name only when complete.

    `members` may be a generator: they are streamed out, never held together in memory.
    Returns the tar's size in bytes.
    """
    written = 0

    def fill(f) -> None:
        nonlocal written
        out = _CountingWriter(f)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                tar.addfile(_member_info(name, len(data)), io.BytesIO(data))
        written = out.count

    write_stream_atomically(path, fill)
    return written


class TarReadError(Exception):
    """A tar could not be read to its end; `members_read` says how far it got."""

    def __init__(self, reason: str, members_read: int):
        super().__init__(reason)
        self.reason = reason
        self.members_read = members_read


def iter_tar_entries(fileobj) -> Iterator[tuple[str, bytes, int]]:
    """Yield (name, bytes, offset of the data in the file) for each regular file, in order.

    The offset lets a reader drop a member's bytes and read them again later with one seek
    (the tokenizer keeps only offsets of images while it plans its packing). Raises
    TarReadError (after yielding what was readable) when the tar is truncated or corrupt.
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
                yield info.name, data, info.offset_data
            _check_clean_end(fileobj, tar.offset, count)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarReadError(f"corrupt tar: {e}", count) from None


def _check_clean_end(fileobj, offset: int, count: int) -> None:
    """Raise when non-zero bytes follow the last readable header.

    tarfile ends the member list silently at a damaged header (bad checksum, a header cut
    short), so without this check a corrupt tar would lose its later members unnoticed.
    A sound tar has only zero blocks there. Streams that cannot seek are not checked.
    """
    if not (hasattr(fileobj, "seekable") and fileobj.seekable()):
        return
    fileobj.seek(offset)
    while chunk := fileobj.read(1 << 20):
        if chunk.count(0) != len(chunk):
            raise TarReadError(f"corrupt tar: unreadable header at byte {offset}", count)


def iter_tar_members(fileobj) -> Iterator[Member]:
    """Yield (name, bytes) for each regular file of a tar stream, in order.

    Raises TarReadError (after yielding what was readable) when the tar is truncated or corrupt.
    """
    for name, data, _ in iter_tar_entries(fileobj):
        yield name, data


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way webdataset groups samples."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (os.path.join(folder, key) if folder else key), ext
