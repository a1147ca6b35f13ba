"""Frames of remote tars waiting to be packed: on local disk, not in a worker's memory.

A tar in object storage has no file the kernel can copy frames from, so its frames would
wait in memory through the packing window (--pack_buffer samples: ~0.7 GB of JPEGs at the
default). Appended to a spool instead, they are copied into the shard like slices of a local
tar, and once their sequence is written their blocks are punched out of the file: the disk
holds only what still waits. Each frame starts on a block of its own, so the blocks a frame
gives back are whole and no neighbour keeps them allocated (frames ending mid-block would leave
one block per frame on disk until the group ends: 62.5 MB per 16,000 frames); when nothing
waits any more the file is emptied and filled again from the front. The spool is unlinked as
soon as it is created and reached through /proc/self/fd, so a worker killed outright leaves
nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import tempfile

from vdp.io.tarslices import FileSlice

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class FrameSpool:
    """An anonymous local file frames are appended to and later given back from (Linux)."""

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        self.fd: int | None = None
        self.path = ""
        self.size = 0  # where the next frame goes: always the start of a block
        self.block = 4096
        self.waiting = 0  # frames put and not given back yet
        self.punch = _punch_hole_function()

    def _open(self) -> None:
        fd, name = tempfile.mkstemp(prefix="vdp-frames-", suffix=".spool", dir=self.folder)
        os.unlink(name)
        self.fd, self.path = fd, f"/proc/self/fd/{fd}"
        # The filesystem's block; a huge one (some network filesystems say 1 MB+) would waste more than it frees.
        self.block = min(max(os.fstat(fd).st_blksize, 512), 65536)

    def put(self, data: bytes) -> FileSlice:
        """Append `data` on a fresh block; where it now lies, as a slice the shard writer copies from."""
        if self.fd is None:
            self._open()
        offset, view = self.size, memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset + len(data) - len(view))
            view = view[written:]
        self.size = _round_up(offset + len(data), self.block)  # the gap up to the next block stays a hole
        self.waiting += 1
        return FileSlice(self.path, offset, len(data))

    def give_back(self, piece: FileSlice) -> None:
        """The slice was copied and will not be read again: free its blocks (when the filesystem can)."""
        if self.fd is None:
            return
        self.waiting -= 1
        if self.waiting == 0:  # nothing waits: empty the file and start again from its front
            os.ftruncate(self.fd, 0)
            self.size = 0
            return
        if self.punch is not None:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            length = _round_up(piece.offset + piece.size, self.block) - piece.offset  # whole blocks, all its own
            if self.punch(self.fd, mode, ctypes.c_int64(piece.offset), ctypes.c_int64(length)) != 0:
                self.punch = None  # not supported here: the file keeps its blocks until nothing waits

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FrameSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _punch_hole_function():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        punch = libc.fallocate
    except (OSError, AttributeError):
        return None
    punch.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    punch.restype = ctypes.c_int
    return punch
