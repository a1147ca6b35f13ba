"""Quality signals of a sample, computed on the frames already decoded for it (no second decode).

Every signal reads the kept frames (the sample's frames in the json's `image`/`frames` order,
repeats included) as grey images shrunk once by the smallest whole factor k that brings the
longest side to at most WORK_SIDE pixels: each working pixel is the mean of a k×k block (the
last rows and columns short of a whole block are left out). Values are rounded so a sample's
bytes are the same on every run. Grey levels run 0..255. The built-in signals:

- `motion`: the mean, over consecutive kept frames, of the mean absolute grey difference
  between them, as a share of full scale (0 = nothing changes, 1 = black to white); 0.0 with
  fewer than two frames. Rounded to 4 decimals.
- `static_share`: the share of those steps whose mean absolute difference is below
  STATIC_STEP (2/255: encoder noise, not motion); 1.0 with fewer than two frames.
- `sharpness`: the variance of the Laplacian (3×3 aperture) of each frame, averaged over the
  frames (grey levels squared, 2 decimals): high for crisp edges, low for blur. At the working
  size (128 to 256 pixels on the longest side), so videos of different resolutions compare.
- `black_share`: the share of frames that are black: mean grey below BLACK_MEAN (16) and its
  standard deviation below BLACK_STD (8).
- `shot_changes`: hard cuts among the kept frames that are not black: a step between two
  consecutive ones (black frames skipped, so a fade through black counts once) is a cut when
  their grey histograms (32 bins) differ by more than CUT_HISTOGRAM (half the L1 distance,
  0..1) and their perceptual hashes by more than CUT_BITS of 64. Both must change: motion alone
  moves hash bits but not the histogram, a change of light the reverse.
- `phash`: vdp.media.phash.phash of each frame (16 hex digits), taken from its working-size
  grey image.

A signal is a registered function `fn(frames: KeptFrames) -> JSON value` (round floats);
every registered signal lands in the json's `signals` under its name. Register your own in a
plugin file (samplers.py, or any file given to --plugin):

    from vdp.media.signals import register_signal
    register_signal("brightness", lambda frames: round(sum(g.mean() for g in frames.grey) / len(frames.grey), 2))
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import cv2
import numpy as np

from vdp.media.phash import hamming, phash

WORK_SIDE = 256  # longest side of the grey frames every signal reads
STATIC_STEP = 2 / 255  # a step below this mean absolute difference is near-static
BLACK_MEAN, BLACK_STD = 16.0, 8.0  # a black frame: mean grey below, and standard deviation below
HISTOGRAM_BINS = 32
CUT_HISTOGRAM = 0.3  # a cut: histograms this far apart (half the L1 distance of the normalised histograms)
CUT_BITS = 20  # ... and perceptual hashes more than this many bits apart


def working_grey(image: np.ndarray) -> np.ndarray:
    """An H×W×3 BGR (or H×W grey) frame as uint8 grey, shrunk by whole k×k blocks to a longest side
    of at most WORK_SIDE (a whole factor takes OpenCV's fast block-mean path: a fraction costs 5-15×)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    k = -(-max(h, w) // WORK_SIDE)
    if k == 1:
        return grey
    h, w = max(h // k, 1), max(w // k, 1)  # a side shorter than k is left whole: one block
    return cv2.resize(grey[: h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA)


class KeptFrames:
    """A sample's kept frames as the signals read them; what several signals share is computed once."""

    def __init__(self, images: list[np.ndarray], times: list[float]):
        self.images = images  # as decoded (BGR, upright, at most --max_side): read, never modify
        self.times = times  # seconds from the video's first frame
        shrunk: dict[int, np.ndarray] = {}  # a repeated frame is one array: shrink it once
        for im in images:
            if id(im) not in shrunk:
                shrunk[id(im)] = working_grey(im)
        self.grey = [shrunk[id(im)] for im in images]

    @cached_property
    def steps(self) -> list[float]:
        """Mean absolute grey difference of each pair of consecutive frames, 0..1."""
        return [_mean_abs_diff(a, b) for a, b in zip(self.grey, self.grey[1:])]

    @cached_property
    def hashes(self) -> list[str]:
        return [phash(g) for g in self.grey]

    @cached_property
    def black(self) -> list[bool]:
        return [_is_black(g) for g in self.grey]


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if b.shape != a.shape:  # the stream changed resolution: compare at the first frame's size
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.mean(cv2.absdiff(a, b))[0] / 255


def _is_black(grey: np.ndarray) -> bool:
    mean, std = cv2.meanStdDev(grey)
    return float(mean[0, 0]) < BLACK_MEAN and float(std[0, 0]) < BLACK_STD


def _histogram(grey: np.ndarray) -> np.ndarray:
    counts = cv2.calcHist([grey], [0], None, [HISTOGRAM_BINS], [0, 256]).ravel()
    return counts / grey.size


def _is_cut(a: np.ndarray, b: np.ndarray, hash_a: str, hash_b: str) -> bool:
    distance = 0.5 * float(np.abs(_histogram(a) - _histogram(b)).sum())
    return distance > CUT_HISTOGRAM and hamming(hash_a, hash_b) > CUT_BITS


# --- the registry and the built-in signals ------------------------------------------------------

Signal = Callable[[KeptFrames], object]
SIGNALS: dict[str, Signal] = {}


def register_signal(name: str, fn: Signal) -> None:
    """`fn(frames)` goes into every sample's `signals` under `name` (registration order)."""
    SIGNALS[name] = fn


def compute_signals(images: list[np.ndarray], times: list[float]) -> dict:
    """Every registered signal of these frames (the sample's kept frames, in its order)."""
    frames = KeptFrames(images, times)
    return {name: fn(frames) for name, fn in SIGNALS.items()}


def motion(frames: KeptFrames) -> float:
    return round(float(np.mean(frames.steps)), 4) if frames.steps else 0.0


def static_share(frames: KeptFrames) -> float:
    if not frames.steps:
        return 1.0
    return round(sum(s < STATIC_STEP for s in frames.steps) / len(frames.steps), 4)


def sharpness(frames: KeptFrames) -> float:
    variances = [float(cv2.meanStdDev(cv2.Laplacian(g, cv2.CV_32F))[1][0, 0]) ** 2 for g in frames.grey]
    return round(float(np.mean(variances)), 2) if variances else 0.0


def black_share(frames: KeptFrames) -> float:
    return round(sum(frames.black) / len(frames.black), 4) if frames.black else 0.0


def shot_changes(frames: KeptFrames) -> int:
    seen = [(g, h) for g, h, dark in zip(frames.grey, frames.hashes, frames.black) if not dark]
    return sum(_is_cut(a, b, ha, hb) for (a, ha), (b, hb) in zip(seen, seen[1:]))


def phashes(frames: KeptFrames) -> list[str]:
    return frames.hashes


for _name, _fn in (("motion", motion), ("static_share", static_share), ("sharpness", sharpness),
                   ("black_share", black_share), ("shot_changes", shot_changes), ("phash", phashes)):
    register_signal(_name, _fn)
