"""Tar members by place instead of by content: an index to read, byte ranges to copy.

The tokenizer passes every frame through untouched, so it never needs a frame's bytes in
Python: it reads the index of a stage-1 tar (name, offset, size of each member; only the
headers are read), reads the few bytes it must parse (json, a JPEG's header), and writes its
output tar with the frames copied file to file by the kernel (`os.copy_file_range`).
`write_tar_slices_atomically` gives exactly the bytes `vdp.tario.write_tar_atomically` gives
for the same contents; its members may be bytes or `FileSlice`s.

Tars in object storage (s3://, oss://) are read through `vdp.storage.open_read` instead: the
same index and ranges, from memory or a read-ahead stream; there is no file for the kernel to
copy from, so their frames travel as bytes.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vdp import storage
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
    times faster than tarfile; from the first header that is anything else (pax, GNU long
    names) on, tarfile reads the rest. Each entry is yielded as soon as its header is read,
    so a reader that takes a sample's members right after its headers goes through the file
    front to back once (what a remote stream needs).
    """
    fileobj.seek(0, os.SEEK_END)
    end = fileobj.tell()
    if end == 0:
        raise TarReadError("corrupt tar: empty file", 0)
    count = offset = 0
    while offset + tarfile.BLOCKSIZE <= end:
        fileobj.seek(offset)
        header = fileobj.read(tarfile.BLOCKSIZE)
        if header.count(0) == tarfile.BLOCKSIZE:
            break  # end-of-archive block
        parsed = _parse_plain(header)
        if parsed is None:
            yield from _tarfile_index(fileobj, offset, count)
            return
        if parsed is False:
            if offset == 0:
                raise TarReadError("corrupt tar: bad checksum in the first header", 0)
            break  # tarfile stops here too; the check below tells damage from the end
        name, size = parsed
        data = offset + tarfile.BLOCKSIZE
        count += 1
        yield Entry(name, data, size)
        offset = data + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if offset > end:  # like tarfile: the member is listed, the next read finds the file cut
            raise TarReadError(f"corrupt tar: member {name} cut short (unexpected end of data)", count)
    _check_clean_end(fileobj, offset, count)


def _tarfile_index(fileobj, start: int = 0, count: int = 0) -> Iterator[Entry]:
    """The members from the header at `start` on, through tarfile; `count` members came before it.

    tarfile reads headers one after the other and the plain ones before `start` carry nothing
    it would use later, so taking over there lists what tarfile would from the beginning.
    """
    try:
        fileobj.seek(start)
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    count += 1
                    yield Entry(info.name, info.offset_data, info.size)
            _check_clean_end(fileobj, tar.offset, count)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarReadError(f"corrupt tar: {e}", count) from None


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


class StoreFault(Exception):
    """A remote tar could not be read after every retry: the store or the network failed, not the tar.

    Deliberately not an OSError: the tar readers take an OSError for a corrupt tar, which is
    reported and skipped for good, while this tar must be read again on a rerun.
    """


class _StreamWindow:
    """A remote tar read front to back once, as a seekable file over the part still needed.

    The index yields each entry as its header is read and a sample's members are read right
    after its headers, so every read lands at or after the start of the sample being parsed:
    only that much is kept in memory (`forget_before` drops the rest), and the object is
    downloaded once, whatever its size. A read fault that outlived the store's retries
    becomes StoreFault.
    """

    CHUNK = 4 * 1024 * 1024  # what one pull asks the stream for (it reads ahead in larger blocks)

    def __init__(self, stream, size: int, path: str) -> None:
        self.stream, self.size, self.path = stream, size, path
        self.buf = bytearray()
        self.base = 0  # offset of buf[0] in the object
        self.pos = 0

    def _pull(self, end: int) -> None:
        have = self.base + len(self.buf)
        while have < end:
            try:
                chunk = self.stream.read(max(self.CHUNK, end - have))
            except Exception as e:
                raise StoreFault(f"{self.path}: {type(e).__name__}: {e}") from e
            if not chunk:
                return  # shorter than its size said: the reads come back short
            self.buf += chunk
            have += len(chunk)

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        self._pull(end)
        with memoryview(self.buf) as view:
            data = bytes(view[self.pos - self.base : end - self.base])
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence] + offset
        if target < self.base:
            raise ValueError(f"seek to {target}, before the kept part of {self.path} (from {self.base})")
        self.pos = target
        return target

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def forget_before(self, offset: int) -> None:
        if offset > self.base:
            drop = min(offset, self.base + len(self.buf)) - self.base
            del self.buf[:drop]
            self.base += drop

    def close(self) -> None:
        self.stream.close()


def _open_remote(path: str) -> _StreamWindow:
    """The remote tar through storage.open_read; a missing or forbidden object stays an OSError
    (reported, like an unreadable local file), a fault that outlived the retries is StoreFault
    (the group is done again later)."""
    try:
        size = storage.size(path)
        return _StreamWindow(storage.open_read(path, known_size=size), size, path)
    except Exception as e:
        if isinstance(e, OSError) and not storage.is_transient(e):
            raise
        raise StoreFault(f"{path}: {type(e).__name__}: {e}") from e


class InputTar:
    """One input tar open for reading byte ranges, local or in object storage.

    A local file is read with pread (no shared file position) and its slices are later copied
    by the kernel; a remote object is read through `storage.open_read` (in memory below 64 MB,
    ranged read-ahead above) once, front to back (_StreamWindow). Opening raises OSError when
    the tar cannot be read at all.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = not storage.is_remote(path)
        self.file = open(path, "rb") if self.local else _open_remote(path)

    def read(self, offset: int, size: int) -> bytes:
        if self.local:
            return read_range(self.file.fileno(), offset, size)
        self.file.seek(offset)
        data = self.file.read(size)
        if len(data) != size:
            raise TarReadError(f"short read: {len(data)} of {size} bytes at {offset}", 0)
        return data

    def done_before(self, offset: int) -> None:
        """Nothing before `offset` will be read again: a remote tar's bytes there can go."""
        if not self.local:
            self.file.forget_before(offset)

    def __enter__(self) -> InputTar:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


# A shard's bytes are made durable in steps of this size while it is written, not all at the end.
FLUSH_EVERY = 4 * 1024 * 1024


class _Flusher:
    """fdatasync of a file being written, on a helper thread, whenever nudged.

    An atomic write ends with an fsync. Left to the end, it flushes the whole shard while the
    worker's core idles: 0.13 s per 100 MB shard on this machine's disk even with the kernel's
    writeback started early (the device's own flush is the cost), a third of a group's time,
    and with two workers flushing at once, more. Flushing on a thread as the shard grows
    (fdatasync releases the GIL) overlaps that with tokenizing; the final fsync finds almost
    nothing left. A failed flush is raised by `close`: the kernel reports a write error to one
    flush only, so the final fsync could not be relied on to see it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.wake = threading.Event()
        self.stopping = False
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="shard-flush", daemon=True)
        self.thread.start()

    def nudge(self) -> None:
        self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.stopping:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                self.error = e
                return

    def close(self) -> None:
        if self.thread.is_alive():
            self.stopping = True
            self.wake.set()
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _copy_file_range(src: int, dst: int, offset: int, count: int) -> int:
    return os.copy_file_range(src, dst, count, offset)


def _sendfile(src: int, dst: int, offset: int, count: int) -> int:
    return os.sendfile(dst, src, offset, count)


# Ways to copy file to file inside the kernel, best first. copy_file_range wants both files on
# one filesystem (Linux >= 5.19); sendfile copies across them (input on one disk, shards on
# another or on tmpfs) without the bytes passing through Python (15-35% faster than read+write).
KERNEL_COPIES = (_copy_file_range, _sendfile)


class _Unsupported(Exception):
    """This kernel copy cannot serve these two files; nothing was copied."""


def _copy_slice(copy, src: int, dst: int, piece: FileSlice) -> int:
    """Copy the slice to dst's position with `copy`; _Unsupported when it cannot even start."""
    done = 0
    try:
        while done < piece.size:
            n = copy(src, dst, piece.offset + done, piece.size - done)
            if n == 0:
                raise TarReadError(f"short read: {piece.path} ends before byte {piece.offset + piece.size}", 0)
            done += n
    except OSError:
        if done:  # part of it already landed: cannot fall back cleanly
            raise
        raise _Unsupported() from None
    return done


class _SliceWriter:
    """Writes tar members the way tarfile does (USTAR, fixed metadata), slices by the kernel."""

    def __init__(self, f) -> None:
        self.f = f
        self.count = 0
        self.sources: dict[str, int] = {}
        # The kernel copies need a real file on both sides; an upload stream gets plain writes.
        self.direct = _has_fileno(f)
        self.copies = list(KERNEL_COPIES) if self.direct else []
        self.flusher = _Flusher(f.fileno()) if self.direct else None
        self.flushed_at = 0  # bytes written when the flusher was last nudged

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.count += len(data)

    def _flush_in_steps(self) -> None:
        if self.flusher is None or self.count - self.flushed_at < FLUSH_EVERY:
            return
        self.f.flush()  # the flusher sees only what reached the file
        self.flusher.nudge()
        self.flushed_at = self.count

    def add(self, name: str, data: bytes | FileSlice) -> None:
        size = data.size if isinstance(data, FileSlice) else len(data)
        self._write(_member_info(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
        if isinstance(data, FileSlice):
            self._copy(data)
        else:
            self._write(data)
        if size % tarfile.BLOCKSIZE:
            self._write(bytes(tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))
        self._flush_in_steps()

    def _source(self, path: str) -> int:
        if path not in self.sources:
            self.sources[path] = os.open(path, os.O_RDONLY)
        return self.sources[path]

    def _copy(self, piece: FileSlice) -> None:
        src = self._source(piece.path)
        while self.copies:
            self.f.flush()  # what was buffered goes first; the copy then appends at the file offset
            try:
                self.count += _copy_slice(self.copies[0], src, self.f.fileno(), piece)
                return
            except _Unsupported:
                self.copies.pop(0)  # another filesystem, or a kernel without the call: try the next way
        self._write(read_range(src, piece.offset, piece.size))

    def finish(self) -> None:
        # tarfile's end of archive: two zero blocks, then zeros up to a whole record.
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        if self.count % tarfile.RECORDSIZE:
            self._write(bytes(tarfile.RECORDSIZE - self.count % tarfile.RECORDSIZE))

    def release(self) -> None:
        """Close the sources and stop the flusher (raising a flush's error): before the file is closed."""
        for fd in self.sources.values():
            os.close(fd)
        self.sources.clear()
        if self.flusher is not None:
            flusher, self.flusher = self.flusher, None
            flusher.close()


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
