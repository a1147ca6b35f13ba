"""A 64-bit perceptual hash of a frame, written as 16 lowercase hex digits.

The classic DCT hash: the frame in grey, shrunk to 32×32 (area averaging), its 2-D DCT, and
of that the 8×8 lowest frequencies: a bit is 1 where the coefficient is above their median (the
DC term left out of the median). Re-encoding,
resizing and small crops move few bits; a different picture moves about half of them. Frames
of one video hashed this way are the signature near-duplicate search compares (Hamming
distance), so the definition is fixed: changing it changes every stored signature.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIZE = 8  # 8×8 coefficients: 64 bits
SHRINK = 32  # the DCT input's side


def phash_bits(image: np.ndarray) -> np.ndarray:
    """64 booleans (row-major over the 8×8 low frequencies) of an H×W×3 (BGR or RGB) or H×W image."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (SHRINK, SHRINK), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE].flatten()
    # the median of the coefficients after DC: the DC term (overall brightness) would skew it
    return low > np.median(low[1:])


def phash(image: np.ndarray) -> str:
    """The hash as 16 lowercase hex digits (bit 0 is the most significant)."""
    return f"{int(''.join('1' if b else '0' for b in phash_bits(image)), 2):016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()

