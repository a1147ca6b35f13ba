"""Frames of remote tars waiting to be packed: on local disk, not in a worker's memory.

A tar in object storage has no file the kernel can copy frames from, so its frames would
wait in memory through the packing window (--pack_buffer samples: ~0.7 GB of JPEGs at the
default). Appended to a spool instead, they are copied into the shard like slices of a local
tar, and once their sequence is written their blocks are punched out of the file: the disk
holds only what still waits. The spool is unlinked as soon as it is created and reached
through /proc/self/fd, so a worker killed outright leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import tempfile

from vdp.tarslices import FileSlice

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class FrameSpool:
    """An anonymous local file frames are appended to and later given back from (Linux)."""

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        self.fd: int | None = None
        self.path = ""
        self.size = 0
        self.punch = _punch_hole_function()

    def put(self, data: bytes) -> FileSlice:
        """Append `data`; where it now lies, as a slice the shard writer copies from."""
        if self.fd is None:
            fd, name = tempfile.mkstemp(prefix="vdp-frames-", suffix=".spool", dir=self.folder)
            os.unlink(name)
            self.fd, self.path = fd, f"/proc/self/fd/{fd}"
        offset, view = self.size, memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset + len(data) - len(view))
            view = view[written:]
        self.size += len(data)
        return FileSlice(self.path, offset, len(data))

    def give_back(self, piece: FileSlice) -> None:
        """The slice was copied and will not be read again: free its blocks (when the filesystem can)."""
        if self.fd is not None and self.punch is not None:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if self.punch(self.fd, mode, ctypes.c_int64(piece.offset), ctypes.c_int64(piece.size)) != 0:
                self.punch = None  # not supported here: the file keeps its blocks until close

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FrameSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _punch_hole_function():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        punch = libc.fallocate
    except (OSError, AttributeError):
        return None
    punch.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    punch.restype = ctypes.c_int
    return punch
