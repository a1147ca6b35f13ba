"""JPEG frames passed through untouched: read their size from the header, shrink only the big ones.

Decoding a frame only to learn its size, or to re-encode it unchanged, costs far more than
the rest of tokenization; the header says the size in a few hundred bytes.
"""

from __future__ import annotations

import cv2
import numpy as np

from vdp.errors import RecordError

# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn stand alone


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a whole JPEG; RecordError when the bytes are not a whole JPEG."""
    check_jpeg_end(data[-32:])
    size = jpeg_header_size(data, complete=True)
    assert size is not None  # complete=True raises instead
    return size


def check_jpeg_end(tail: bytes) -> None:
    """A cut-off file has lost its end-of-image marker; a few padding bytes after it are tolerated."""
    if b"\xff\xd9" not in tail:
        raise RecordError("truncated jpeg: no end-of-image marker")


def jpeg_header_size(head: bytes, complete: bool) -> tuple[int, int] | None:
    """(width, height) from the frame header within the first bytes of a JPEG.

    None when `head` (not the whole file) ends before the frame header: read more. The
    header is usually within the first kilobyte, after the APPn segments.
    """
    if head[:2] != b"\xff\xd8":
        raise RecordError("not a jpeg: no start-of-image marker")
    pos, n = 2, len(head)
    while pos + 4 <= n:
        if head[pos] != 0xFF:
            raise RecordError(f"corrupt jpeg: no marker at byte {pos}")
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in _SOF:
            if pos + 9 > n:
                break
            height = int.from_bytes(head[pos + 5 : pos + 7], "big")
            width = int.from_bytes(head[pos + 7 : pos + 9], "big")
            if width == 0 or height == 0:
                raise RecordError("corrupt jpeg: zero size in frame header")
            return width, height
        if marker == 0xDA:  # scan data begins: no frame header came before it
            raise RecordError("corrupt jpeg: no frame header")
        pos += 2 + int.from_bytes(head[pos + 2 : pos + 4], "big")
    if complete:
        raise RecordError("corrupt jpeg: no frame header")
    return None


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longest side at most max_side, aspect ratio kept (0 = no limit)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """H×W×3 BGR pixels of a JPEG, or None when the bytes do not decode (the caller names the member)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def fit_jpeg(data: bytes, width: int, height: int, max_side: int, quality: int = 95) -> bytes:
    """The JPEG itself when it fits in max_side, else a shrunk copy (aspect ratio kept)."""
    target = fit_size(width, height, max_side)
    if target == (width, height):
        return data
    img = decode_jpeg(data)
    if img is None:
        raise RecordError("corrupt jpeg: cannot decode")
    small = cv2.resize(img, target, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RecordError("jpeg encode failed")
    return buf.tobytes()
