"""A seekable read-only file over ranged reads: how large remote objects (OSS, HTTP) are streamed."""

from __future__ import annotations

import io
from collections.abc import Callable


class RangedReader(io.RawIOBase):
    """A seekable read-only file of `size` bytes over `fetch(start, end)` -> bytes start..end-1."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int):
        self._fetch, self._size, self._pos = fetch, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        end = min(self._size, self._pos + len(buf))
        if self._pos >= end:
            return 0
        data = self._fetch(self._pos, end)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)
