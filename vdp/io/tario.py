"""Deterministic, atomic tar writing and tolerant tar reading.

Every stage writes its shards through `write_tar_atomically`, so a shard is either absent or
complete under its final name, and the same members always give the same bytes (fixed mtime,
owner and mode; members in the order given).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

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


def iter_tar_members(fileobj) -> Iterator[Member]:
    """Yield (name, bytes) for each regular file of a seekable tar, in order.

    The tar is walked by the one index reader both stages use (vdp.io.tarslices.iter_tar_index),
    so every reader agrees on what a tar holds and where it breaks; a member it refuses (a link,
    a device, an unsafe name) is passed over. Raises TarReadError (after yielding what was
    readable) when the tar is truncated or corrupt.
    """
    # Imported here: vdp.io.tarslices builds on this module's writer and TarReadError.
    from vdp.io.tarslices import iter_tar_index, read_member

    for count, entry in enumerate(iter_tar_index(fileobj), 1):
        if not entry.problem:
            yield entry.name, read_member(fileobj, entry, count)


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way webdataset groups samples."""
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (os.path.join(folder, key) if folder else key), ext


T = TypeVar("T")


class KeyGroups(Generic[T]):
    """Consecutive members sharing a key, as webdataset groups them into samples: (key, members).

    The one grouping every reader uses (stage 2's frame samples, stage 3's scan, `iter_samples`).
    When the source raises (a broken tar, a store fault) the exception propagates unchanged and
    `key` names the sample being gathered: the one the damage cut short ("" before any member).
    """

    def __init__(self, members: Iterable[T], name_of: Callable[[T], str]) -> None:
        self.members, self.name_of = members, name_of
        self.key = ""

    def __iter__(self) -> Iterator[tuple[str, list[T]]]:
        group: list[T] = []
        for member in self.members:
            key = split_member_name(self.name_of(member))[0]
            if group and key != self.key:
                yield self.key, group
                group = []
            self.key = key
            group.append(member)
        if group:
            yield self.key, group
