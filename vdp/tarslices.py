"""Tar members by place instead of by content: an index to read, byte ranges to copy.

The tokenizer passes every frame through untouched, so it never needs a frame's bytes in
Python: it reads the index of a stage-1 tar (name, offset, size of each member; only the
headers are read), reads the few bytes it must parse (json, a JPEG's header), and writes its
output tar with the frames copied file to file by the kernel (`os.copy_file_range`).
`write_tar_slices_atomically` gives exactly the bytes `vdp.tario.write_tar_atomically` gives
for the same contents; its members may be bytes or `FileSlice`s.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vdp.tario import TarReadError, _check_clean_end, _member_info, write_stream_atomically


@dataclass(frozen=True)
class Entry:
    name: str
    offset: int  # where the member's data starts in the tar file
    size: int


@dataclass(frozen=True)
class FileSlice:
    """`size` bytes of the file at `path` from `offset`: a member copied without reading it in."""

    path: str
    offset: int
    size: int


def iter_tar_index(fileobj) -> Iterator[Entry]:
    """Yield the regular members of a seekable tar file, in order, reading only headers.

    Raises TarReadError (after yielding what was readable) when the tar is truncated (a
    member's data, padded to a block, must end inside the file) or when a damaged header
    hides later members. Plain USTAR headers (what our writers make) are parsed here, ten
    times faster than tarfile; a tar with anything else (pax, GNU long names) goes through
    tarfile from the start.
    """
    entries, error = _plain_index(fileobj)
    if entries is None:
        yield from _tarfile_index(fileobj)
        return
    yield from entries
    if error is not None:
        raise error


def _tarfile_index(fileobj) -> Iterator[Entry]:
    count = 0
    try:
        fileobj.seek(0)
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    count += 1
                    yield Entry(info.name, info.offset_data, info.size)
            _check_clean_end(fileobj, tar.offset, count)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarReadError(f"corrupt tar: {e}", count) from None


def _plain_index(fileobj) -> tuple[list[Entry] | None, TarReadError | None]:
    """(entries, the error that ended them) for a tar of plain USTAR headers; (None, None) otherwise."""
    fileobj.seek(0, os.SEEK_END)
    end = fileobj.tell()
    if end == 0:
        return [], TarReadError("corrupt tar: empty file", 0)
    entries: list[Entry] = []
    offset = 0
    while offset + tarfile.BLOCKSIZE <= end:
        fileobj.seek(offset)
        header = fileobj.read(tarfile.BLOCKSIZE)
        if header.count(0) == tarfile.BLOCKSIZE:
            break  # end-of-archive block
        parsed = _parse_plain(header)
        if parsed is None:
            return None, None
        if parsed is False:
            if offset == 0:
                return [], TarReadError("corrupt tar: bad checksum in the first header", 0)
            break  # tarfile stops here too; the check below tells damage from the end
        name, size = parsed
        data = offset + tarfile.BLOCKSIZE
        entries.append(Entry(name, data, size))
        offset = data + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if offset > end:  # like tarfile: the member is listed, the next read finds the file cut
            return entries, TarReadError(f"corrupt tar: member {name} cut short (unexpected end of data)", len(entries))
    try:
        _check_clean_end(fileobj, offset, len(entries))
    except TarReadError as e:
        return entries, e
    return entries, None


def _octal(field: bytes) -> int:
    """A numeric header field as tarfile reads it: up to the first NUL, spaces stripped."""
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _parse_plain(header: bytes) -> tuple[str, int] | bool | None:
    """(name, size) of a regular-file USTAR header; False if its checksum is wrong; None if not plain."""
    try:
        stored = _octal(header[148:156])
    except ValueError:
        return False
    if stored != sum(header) - sum(header[148:156]) + 8 * 32:
        return False
    if header[257:263] != b"ustar\0" or header[156:157] not in (b"0", b"\0") or header[124] & 0x80:
        return None  # pax, GNU, links, folders, base-256 sizes: tarfile knows them all
    name = header[0:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    try:
        size = _octal(header[124:136])
    except ValueError:
        return False
    return name.decode(tarfile.ENCODING, "surrogateescape"), size


def read_range(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise TarReadError(f"short read: {len(data)} of {size} bytes at {offset}", 0)
    return data


class _SliceWriter:
    """Writes tar members the way tarfile does (USTAR, fixed metadata), slices by the kernel."""

    def __init__(self, f) -> None:
        self.f = f
        self.count = 0
        self.sources: dict[str, int] = {}
        # copy_file_range needs a real file on both sides; an upload stream gets plain writes.
        self.direct = _has_fileno(f)

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.count += len(data)

    def add(self, name: str, data: bytes | FileSlice) -> None:
        size = data.size if isinstance(data, FileSlice) else len(data)
        self._write(_member_info(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
        if isinstance(data, FileSlice):
            self._copy(data)
        else:
            self._write(data)
        if size % tarfile.BLOCKSIZE:
            self._write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def _source(self, path: str) -> int:
        if path not in self.sources:
            self.sources[path] = os.open(path, os.O_RDONLY)
        return self.sources[path]

    def _copy(self, piece: FileSlice) -> None:
        src = self._source(piece.path)
        if self.direct:
            self.f.flush()  # what was buffered goes first; the copy then appends at the file offset
            done = 0
            try:
                while done < piece.size:
                    n = os.copy_file_range(src, self.f.fileno(), piece.size - done, piece.offset + done)
                    if n == 0:
                        raise TarReadError(f"short read: {piece.path} ends before byte {piece.offset + piece.size}", 0)
                    done += n
                self.count += done
                return
            except OSError:
                if done:  # part of it already landed: cannot fall back cleanly
                    raise
                self.direct = False  # e.g. a filesystem or kernel without the call
        self._write(read_range(src, piece.offset, piece.size))

    def finish(self) -> None:
        # tarfile's end of archive: two zero blocks, then zeros up to a whole record.
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        if self.count % tarfile.RECORDSIZE:
            self._write(bytes(tarfile.RECORDSIZE - self.count % tarfile.RECORDSIZE))

    def release(self) -> None:
        for fd in self.sources.values():
            os.close(fd)
        self.sources.clear()


def _has_fileno(f) -> bool:
    try:
        f.fileno()
        return True
    except (OSError, ValueError, AttributeError):
        return False


def write_tar_slices_atomically(path: str, members: Iterable[tuple[str, bytes | FileSlice]]) -> int:
    """Like vdp.tario.write_tar_atomically, with members that may be FileSlices; returns the size."""
    written = 0

    def fill(f) -> None:
        nonlocal written
        writer = _SliceWriter(f)
        try:
            for name, data in members:
                writer.add(name, data)
            writer.finish()
        finally:
            writer.release()
        written = writer.count

    write_stream_atomically(path, fill)
    return written
