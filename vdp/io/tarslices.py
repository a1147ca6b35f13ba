"""Tar members by place instead of by content: an index to read, byte ranges to copy.

The tokenizer passes every frame through untouched, so it never needs a frame's bytes in
Python: it reads the index of a stage-1 tar (name, offset, size of each member; only the
headers are read), reads the few bytes it must parse (json, a JPEG's header), and writes its
output tar with the frames copied file to file by the kernel (`os.copy_file_range`).
`write_tar_slices_atomically` gives exactly the bytes `vdp.io.tario.write_tar_atomically` gives
for the same contents; its members may be bytes or `FileSlice`s.

Tars in object storage (s3://, oss://) are read through `vdp.io.storage.open_read` instead: the
same index and ranges, from memory or a read-ahead stream; there is no file for the kernel to
copy from, so their frames travel as bytes.
"""

from __future__ import annotations

import os
import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vdp.io import storage
from vdp.io.tario import TarReadError, _member_info, write_stream_atomically


@dataclass(frozen=True)
class Entry:
    name: str
    offset: int  # where the member's data starts in the tar file
    size: int  # bytes of data it occupies (none for links and devices)
    problem: str = ""  # why the member must not be used (an unsafe name, a link, a device); "" for a sound file


@dataclass(frozen=True)
class FileSlice:
    """`size` bytes of the file at `path` from `offset`: a member copied without reading it in."""

    path: str
    offset: int
    size: int


# --- what a member may claim -------------------------------------------------------------------
# Input tars are data from elsewhere: a header may promise gigabytes, name a file outside the
# folder, or be a link. Nothing is ever allocated on a header's word alone: members read whole
# are capped (a clear reason instead), extended headers too, and everything is read in chunks.

MAX_MEMBER_BYTES = 64 << 20  # json, ids, a frame: read whole into memory
MAX_VIDEO_BYTES = 1 << 30  # a stage-1 video-only member, read whole by stage 3
MAX_EXTENDED_HEADER = 1 << 20  # pax and GNU long-name data: a name and a few numbers
MAX_NAME_BYTES = 4096  # PATH_MAX: no loader could open a longer name
MAX_FRAME_PIXELS = 1 << 26  # 8192x8192: a decoder allocates what the JPEG header claims
VIDEO_EXTS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "ts", "flv")
READ_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def member_limit(name: str) -> int:
    """The most bytes a member may hold to be read whole: videos are big by nature, nothing else is."""
    return MAX_VIDEO_BYTES if name.rsplit(".", 1)[-1].lower() in VIDEO_EXTS else MAX_MEMBER_BYTES


def too_large(name: str, size: int) -> str:
    """The reason a member of `size` bytes is refused ("" when it is within its limit)."""
    limit = member_limit(name)
    if size <= limit:
        return ""
    return f"too large: {name} holds {size} bytes, over the {limit >> 20} MiB a member may hold"


def unsafe_name(name: str) -> str:
    """Why a member name could reach outside the folder it would be extracted to ("" when it cannot)."""
    if not name:
        return "an empty name"
    if len(name) > MAX_NAME_BYTES // 4 and len(name.encode(tarfile.ENCODING, "surrogateescape")) > MAX_NAME_BYTES:
        return f"a name longer than {MAX_NAME_BYTES} bytes"
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "'..' in its path"
    if _CONTROL.search(name):
        return "a control character in its name"
    return ""


# --- reading the index -----------------------------------------------------------------------

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Members with no data of their own, as tarfile reads them (whatever their size field says).
_NO_DATA = {
    tarfile.LNKTYPE: "a hard link",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


@dataclass
class _Header:
    name: str
    size: int
    kind: bytes
    linkname: str


def iter_tar_index(fileobj) -> Iterator[Entry]:
    """Yield the members of a seekable tar file, in order, reading only headers.

    Regular files come with an empty `problem`; a member that must not be used (a link, a
    device, an unsafe name: see `unsafe_name`) comes with the reason, so the sample it belongs
    to can be reported. Directories are passed over. Raises TarReadError (after yielding what
    was readable) when the tar is truncated (a member's data, padded to a block, must end
    inside the file), when a damaged header hides later members, or when an extended header
    claims more than MAX_EXTENDED_HEADER. USTAR, GNU (long names, base-256 sizes) and pax
    headers are parsed here, with tarfile's results, ten times faster and with nothing kept
    per member. Each entry is yielded as soon as its header is read, so a reader that takes a
    sample's members right after its headers goes through the file front to back once (what a
    remote stream needs).
    """
    fileobj.seek(0, os.SEEK_END)
    end = fileobj.tell()
    if end == 0:
        raise TarReadError("corrupt tar: empty file", 0)
    count = offset = 0
    while offset + tarfile.BLOCKSIZE <= end:
        fileobj.seek(offset)
        block = fileobj.read(tarfile.BLOCKSIZE)
        if block.count(0) == tarfile.BLOCKSIZE:
            break  # end-of-archive block
        read = _read_member(fileobj, block, offset, end, count)
        if read is None:
            if offset == 0:
                raise TarReadError("corrupt tar: bad checksum in the first header", 0)
            break  # tarfile stops here too; the check below tells damage from the end
        entry, offset = read
        if entry is None:
            continue  # a directory
        if hasattr(fileobj, "skip") and not fileobj.reads_whole(entry):
            fileobj.skip(entry.offset, offset)  # a stream need not keep what no one reads whole
        count += 1
        yield entry
        if offset > end:  # like tarfile: the member is listed, the next read finds the file cut
            raise TarReadError(f"corrupt tar: member {entry.name} cut short (unexpected end of data)", count)
    _check_end(fileobj, offset, count)


def _check_end(fileobj, offset: int, count: int) -> None:
    """Raise when non-zero bytes follow the last readable header.

    tarfile ends the member list silently at a damaged header (bad checksum, a header cut
    short), so without this check a corrupt tar would lose its later members unnoticed; a
    sound tar has only zero blocks there. Read chunk by chunk, and without a stream keeping
    what it reads: a tar may end in gigabytes of padding."""
    chunks = fileobj.chunks_from(offset) if isinstance(fileobj, _StreamWindow) else _file_chunks(fileobj, offset)
    for chunk in chunks:
        if chunk.count(0) != len(chunk):
            raise TarReadError(f"corrupt tar: unreadable header at byte {offset}", count)


def _file_chunks(fileobj, offset: int) -> Iterator[bytes]:
    fileobj.seek(offset)
    while chunk := fileobj.read(READ_CHUNK):
        yield chunk


def _read_member(fileobj, block: bytes, offset: int, end: int, count: int) -> tuple[Entry | None, int] | None:
    """(the member whose headers start at `offset`, where the next header begins); None for a damaged header.

    Extended headers (pax, GNU long names) before it are read and applied, as tarfile does.
    """
    overrides: dict[str, str] = {}
    header = _parse_header(block)
    while header is not None and header.kind in _EXTENDED:
        data = _extended_data(fileobj, header, offset, end, count)
        try:
            _apply_extended(header, data, overrides)
        except ValueError as e:
            raise TarReadError(f"corrupt tar: extended header at byte {offset}: {e}", count) from None
        offset += tarfile.BLOCKSIZE + _padded(header.size)
        if offset + tarfile.BLOCKSIZE > end:
            raise TarReadError("corrupt tar: unexpected end of data after an extended header", count)
        fileobj.seek(offset)
        block = fileobj.read(tarfile.BLOCKSIZE)
        header = _parse_header(block)
        if header is None:
            raise TarReadError(f"corrupt tar: bad header after an extended header at byte {offset}", count)
    if header is None:
        return None
    for field, value in overrides.items():
        setattr(header, field, int(value) if field == "size" else value)
    return _entry(fileobj, header, block, offset + tarfile.BLOCKSIZE)


def _entry(fileobj, header: _Header, block: bytes, data: int) -> tuple[Entry | None, int]:
    name, kind = header.name, header.kind
    if kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith("/")):
        return None, data  # folders hold nothing a sample needs
    if kind in _NO_DATA:
        target = f" (to {header.linkname})" if kind in (tarfile.LNKTYPE, tarfile.SYMTYPE) else ""
        return Entry(name, data, 0, f"unsafe member: {name} is {_NO_DATA[kind]}{target}, not a regular file"), data
    if kind == tarfile.GNUTYPE_SPARSE:
        data = _after_sparse_maps(fileobj, block, data)
        problem = f"unsupported member: {name} is a GNU sparse file"
    elif kind not in _REGULAR:
        problem = f"unsupported member: {name} is of unknown type {kind!r}"
    else:
        unsafe = unsafe_name(name)
        problem = f"unsafe member: {name} has {unsafe}" if unsafe else ""
    return Entry(name, data, header.size, problem), data + _padded(header.size)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal up to the first NUL, or GNU base-256."""
    if field[0] == 0o200:
        return int.from_bytes(field[1:], "big")
    if field[0] == 0o377:
        raise ValueError("negative number")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _signed_checksum(block: bytes) -> int:
    """The checksum some old writers made, summing bytes as signed chars (tarfile accepts both)."""
    rest = block[:148] + block[156:]
    return sum(rest) - 256 * sum(1 for b in rest if b > 127) + 8 * 32


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")


def _parse_header(block: bytes) -> _Header | None:
    """The header in one block; None when its checksum or a number in it is wrong (tarfile's test)."""
    try:
        stored = _number(block[148:156])
        size = _number(block[124:136])
    except ValueError:
        return None
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned and stored != _signed_checksum(block):
        return None
    kind, name = block[156:157], _text(block[0:100])
    if block[345] and kind not in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE):
        name = _text(block[345:500]) + "/" + name
    return _Header(name, size, kind, _text(block[157:257]) if block[157] else "")


def _extended_data(fileobj, header: _Header, offset: int, end: int, count: int) -> bytes:
    """The data of a pax or long-name header: small by nature, so a big claim is damage, not a reason to allocate."""
    if header.size > MAX_EXTENDED_HEADER:
        raise TarReadError(
            f"corrupt tar: extended header at byte {offset} claims {header.size} bytes"
            f" (over {MAX_EXTENDED_HEADER >> 20} MiB)",
            count,
        )
    start = offset + tarfile.BLOCKSIZE
    if start + header.size > end:
        raise TarReadError(f"corrupt tar: extended header at byte {offset} cut short (unexpected end of data)", count)
    fileobj.seek(start)
    return fileobj.read(header.size)


def _apply_extended(header: _Header, data: bytes, overrides: dict[str, str]) -> None:
    """What an extended header changes in the member after it (global pax headers change nothing here)."""
    if header.kind == tarfile.GNUTYPE_LONGNAME:
        overrides["name"] = _text(data)
    elif header.kind == tarfile.GNUTYPE_LONGLINK:
        overrides["linkname"] = _text(data)
    elif header.kind != tarfile.XGLTYPE:
        records = _pax_records(data)
        for key, field in (("path", "name"), ("linkpath", "linkname"), ("size", "size")):
            if key in records:
                overrides[field] = records[key]


def _pax_records(data: bytes) -> dict[str, str]:
    """`length key=value` records, each ending in a newline; ValueError when they do not parse (tarfile refuses them too)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos else 0
        record = data[space + 1 : pos + length]
        if length < 5 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError(f"bad pax record at byte {pos}")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    if not records.get("size", "0").isdigit():
        raise ValueError(f"pax size {records['size']!r} is not a number")
    return records


def _after_sparse_maps(fileobj, block: bytes, data: int) -> int:
    """Where an old GNU sparse member's data starts: after its extension blocks, if any."""
    extended = block[482]
    while extended:
        fileobj.seek(data)
        more = fileobj.read(tarfile.BLOCKSIZE)
        if len(more) < tarfile.BLOCKSIZE:
            return data  # the data check that follows reports the cut
        extended, data = more[504], data + tarfile.BLOCKSIZE
    return data


def _tarfile_index(fileobj, start: int = 0, count: int = 0) -> Iterator[Entry]:
    """The regular members from the header at `start` on, through tarfile: the reference the tests
    hold `iter_tar_index` to (the product never uses it: tarfile keeps every member it reads, and
    reads an extended header whole whatever size it claims)."""
    try:
        fileobj.seek(start)
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    count += 1
                    yield Entry(info.name, info.offset_data, info.size)
            _check_end(fileobj, tar.offset, count)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarReadError(f"corrupt tar: {e}", count) from None


def read_member(fileobj, entry: Entry, count: int = 0) -> bytes:
    """A member's bytes, read in chunks: a header that claims more than the file holds costs only what is there.

    TarReadError when the file ends first. The caller checks the size against its limit first.
    A remote tar's window drops each chunk once read: no reader takes a member twice, and a
    video of a gigabyte would otherwise be held twice (in the window and in the result).
    """
    fileobj.seek(entry.offset)
    chunks, left = [], entry.size
    while left:
        chunk = fileobj.read(min(left, READ_CHUNK))
        if not chunk:
            raise TarReadError(f"corrupt tar: member {entry.name} cut short (unexpected end of data)", count)
        chunks.append(chunk)
        left -= len(chunk)
        if isinstance(fileobj, _StreamWindow):
            fileobj.forget_before(fileobj.tell())
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # b"" for an empty member


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


def _json_and_frames(name: str) -> int:
    """What stage 2 reads whole of any member: a json or a frame, never a video."""
    return MAX_MEMBER_BYTES


class _StreamWindow:
    """A remote tar read front to back once, as a seekable file over the part still needed.

    The index yields each entry as its header is read and a sample's members are read right
    after its headers, so every read lands at or after the start of the sample being parsed:
    only that much is kept in memory (`forget_before` drops the rest), and the object is
    downloaded once, whatever its size. The data of a member no reader will take whole (one
    the index refused, or bigger than MAX_MEMBER_BYTES) is announced with `skip` and dropped as
    it streams by, so a member of gigabytes costs no memory either. The stream is read in
    chunks of CHUNK, never in one read of what a header claims. A read fault that outlived the
    store's retries becomes StoreFault.
    """

    CHUNK = 4 * 1024 * 1024  # what one pull asks the stream for (it reads ahead in larger blocks)

    def __init__(self, stream, size: int, path: str, limit: Callable[[str], int] = _json_and_frames) -> None:
        self.stream, self.size, self.path = stream, size, path
        self.limit = limit  # the most bytes its reader takes whole of a member, by name
        self.runs: list[tuple[int, bytearray]] = []  # what is kept: (offset in the object, bytes), in order
        self.skips: list[tuple[int, int]] = []  # [start, end) ranges dropped as they stream by
        self.have = 0  # bytes taken from the stream so far
        self.base = 0  # nothing before it is kept
        self.pos = 0

    def reads_whole(self, entry: Entry) -> bool:
        """Whether the reader may take this member's bytes: if not, they are dropped as they stream by."""
        return not entry.problem and entry.size <= self.limit(entry.name)

    def skip(self, start: int, end: int) -> None:
        """No one will read [start, end): do not keep it."""
        if end > max(start, self.have):
            self.skips.append((max(start, self.have), end))

    def _pull(self, end: int) -> None:
        while self.have < end:
            chunk = self._stream_chunk()
            if not chunk:
                return  # shorter than its size said: the reads come back short
            self._keep(self.have, chunk)
            self.have += len(chunk)

    def _keep(self, at: int, chunk: bytes) -> None:
        """Append `chunk` (object bytes from `at`) to what is kept, minus the skipped ranges."""
        end = at + len(chunk)
        self.skips = [(s, e) for s, e in self.skips if e > at]
        for s, e in sorted(self.skips):
            if s >= end:
                break
            if s > at:
                self._append(at, chunk[: s - at])
            chunk, at = chunk[max(0, min(e, end) - at) :], max(at, min(e, end))
        if chunk:
            self._append(at, chunk)

    def _append(self, at: int, data: bytes) -> None:
        if self.runs and self.runs[-1][0] + len(self.runs[-1][1]) == at:
            self.runs[-1][1].extend(data)
        else:
            self.runs.append((at, bytearray(data)))

    def _stream_chunk(self) -> bytes:
        try:
            return self.stream.read(self.CHUNK)
        except Exception as e:
            raise StoreFault(f"{self.path}: {type(e).__name__}: {e}") from e

    def chunks_from(self, offset: int) -> Iterator[bytes]:
        """The object's bytes from `offset` to its end, none kept beyond what already was (the end check)."""
        for start, run in self.runs:
            if start + len(run) > offset:
                yield bytes(run[max(0, offset - start) :])
        while chunk := self._stream_chunk():
            self.have += len(chunk)
            yield chunk

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        self._pull(end)
        data = b""
        for start, run in self.runs:
            if start <= self.pos < start + len(run):
                with memoryview(run) as view:
                    data = bytes(view[self.pos - start : end - start])
                break
        self.pos += len(data)
        return data  # short when the range runs into a skipped one: the caller reports a short read

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
        if offset <= self.base:
            return
        kept = []
        for start, run in self.runs:
            if start + len(run) > offset:
                if start < offset:
                    del run[: offset - start]
                    start = offset
                kept.append((start, run))
        self.runs, self.base = kept, offset

    def close(self) -> None:
        self.stream.close()


def _open_remote(path: str, limit: Callable[[str], int]) -> _StreamWindow:
    """The remote tar through storage.open_read; a missing or forbidden object stays an OSError
    (reported, like an unreadable local file), a fault that outlived the retries is StoreFault
    (stage 2 does the group again later, stage 3 reports the tar unreadable)."""
    try:
        size = storage.size(path)
        return _StreamWindow(storage.open_read(path, known_size=size), size, path, limit)
    except Exception as e:
        if isinstance(e, OSError) and not storage.is_transient(e):
            raise
        raise StoreFault(f"{path}: {type(e).__name__}: {e}") from e


class InputTar:
    """One input tar open for reading byte ranges, local or in object storage.

    A local file is read with pread (no shared file position) and its slices are later copied
    by the kernel; a remote object is read through `storage.open_read` (in memory below 64 MB,
    ranged read-ahead above) once, front to back (_StreamWindow). Opening raises OSError when
    the tar cannot be read at all. `limit` gives, by member name, the most bytes the reader
    takes whole (stage 2: jsons and frames; stage 3: `member_limit`, videos included).
    """

    def __init__(self, path: str, limit: Callable[[str], int] = _json_and_frames) -> None:
        self.path = path
        self.local = not storage.is_remote(path)
        self.file = open(path, "rb") if self.local else _open_remote(path, limit)
        self.size = os.fstat(self.file.fileno()).st_size if self.local else self.file.size

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
    """Like vdp.io.tario.write_tar_atomically, with members that may be FileSlices; returns the size."""
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
