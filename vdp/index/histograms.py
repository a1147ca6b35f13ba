"""Distributions for check_pair's report: fixed-bin histograms filled during the scan.

Each metric has fixed bin edges (below), so one tar's histogram is a short list of counts and
merging is adding counts: the bins are the same however the samples are split across tars,
workers or Ray tasks, and memory does not grow with the sample count. Bin i holds
edges[i] <= value < edges[i+1]; the last edge is always inf, and a value below the first edge
counts in the first bin. Besides the bins each histogram keeps count, min, max and the exact
sum (an integer count of 2**-1074, the smallest step between doubles: float addition depends on
its order, this does not), so the mean too is the same whatever the order of merging. Only
sound samples are counted, each metric from the kinds of sample that carry it (stage 1: frames
and video-only; stage 2: packed sequences).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

from vdp.index.validate import SampleFacts

INF = float("inf")
UNIT_BITS = 1074  # 2**-1074: the smallest positive double, of which every double is a whole number
STAGE1 = ("frames", "video")

# Bin edges, chosen where the values of real video data fall (a bin per common frame rate, the
# usual heights as the shorter side, log-like steps for durations and sharpness).
DURATION_EDGES = (0, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, INF)  # seconds
SHORT_SIDE_EDGES = (0, 144, 240, 360, 480, 720, 1080, 1440, 2160, INF)  # pixels
FPS_EDGES = (0, 10, 15, 20, 23.5, 24.5, 25.5, 29.5, 30.5, 49.5, 50.5, 59.5, 60.5, 120, INF)
FPS_LABELS = ("<10", "10–15", "15–20", "20–23.5", "≈24", "≈25", "25.5–29.5", "≈30", "30.5–49.5", "≈50",
              "50.5–59.5", "≈60", "60.5–120", "≥120")  # fmt: skip
FRAMES_EDGES = (*range(0, 18), 24, 25, 32, 33, 48, 49, 64, 65, 128, 129, 256, 257, INF)  # 0..16 one bin each
SHARE_EDGES = (*(i / 10 for i in range(11)), INF)  # tenths; the last bin is exactly 1
MOTION_EDGES = (0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, INF)
SHARPNESS_EDGES = (0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, INF)
SHOT_CHANGES_EDGES = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, INF)
FILL_EDGES = (*(i / 20 for i in range(21)), INF)  # 5% steps; the last bin is exactly full
TOKEN_BINS = 20  # tokens per sequence: max_len in 20 steps, plus a bin for exactly max_len


@dataclass(frozen=True)
class Metric:
    name: str
    title: str  # the plot's x axis
    kinds: tuple[str, ...]  # the sample kinds it is read from
    read: Callable[[SampleFacts], object]  # the value; anything but a finite number is skipped
    edges: tuple[float, ...]
    integer: bool = False  # whole numbers: a bin [3, 4) is labelled "3"
    rules: tuple[str, ...] = ()  # stage-1 filters (vdp.pack.filters.RULES) on this value: drawn as lines
    labels: tuple[str, ...] = ()  # one per bin; default: from the edges

    def bin_labels(self) -> tuple[str, ...]:
        return self.labels or tuple(
            _label(self.edges[i], self.edges[i + 1], self.integer) for i in range(len(self.edges) - 1)
        )


def _label(lo: float, hi: float, integer: bool) -> str:
    if hi == INF:
        return f"≥{lo:g}"
    if integer:
        return f"{lo:g}" if hi == lo + 1 else f"{lo:g}–{hi - 1:g}"
    return f"{lo:g}–{hi:g}"


def _doc_field(name: str) -> Callable[[SampleFacts], object]:
    return lambda facts: facts.doc.get(name)


def _short_side(facts: SampleFacts) -> object:
    w, h = facts.doc.get("width"), facts.doc.get("height")
    return min(w, h) if _number(w) is not None and _number(h) is not None else None


def _signal(name: str) -> Callable[[SampleFacts], object]:
    def read(facts: SampleFacts) -> object:
        signals = facts.doc.get("signals")
        return signals.get(name) if isinstance(signals, dict) else None

    return read


def _packed_samples(facts: SampleFacts) -> object:
    return len(facts.doc.get("sample_lengths") or ())


def token_edges(max_len: int) -> tuple[float, ...]:
    step = max(1, math.ceil(max_len / TOKEN_BINS))
    return (*range(0, max_len, step), max_len, INF)


@lru_cache(maxsize=8)
def metrics(max_len: int) -> tuple[Metric, ...]:
    """Every metric, in the report's order; the stage-2 ones are scaled to --max_len."""
    return (
        Metric("duration", "duration (s)", STAGE1, _doc_field("duration"), DURATION_EDGES,
               rules=("min_duration", "max_duration")),
        Metric("short_side", "shorter side (px)", STAGE1, _short_side, SHORT_SIDE_EDGES, True, ("min_side",)),
        Metric("fps", "frames per second", STAGE1, _doc_field("fps"), FPS_EDGES, labels=FPS_LABELS),
        Metric("frames", "frames per sample", ("frames",), lambda f: f.images, FRAMES_EDGES, True),
        Metric("motion", "signals.motion", STAGE1, _signal("motion"), MOTION_EDGES, rules=("min_motion",)),
        Metric("static_share", "signals.static_share", STAGE1, _signal("static_share"), SHARE_EDGES,
               rules=("max_static_share",)),
        Metric("sharpness", "signals.sharpness", STAGE1, _signal("sharpness"), SHARPNESS_EDGES),
        Metric("black_share", "signals.black_share", STAGE1, _signal("black_share"), SHARE_EDGES,
               rules=("max_black_share",)),
        Metric("shot_changes", "signals.shot_changes", STAGE1, _signal("shot_changes"), SHOT_CHANGES_EDGES, True),
        Metric("tokens", "tokens per sequence", ("sequence",), lambda f: f.tokens, token_edges(max_len), True),
        Metric("fill", f"fill (tokens / max_len {max_len})", ("sequence",), lambda f: f.tokens / max_len, FILL_EDGES),
        Metric("packed", "samples per sequence", ("sequence",), _packed_samples, FRAMES_EDGES, True),
    )  # fmt: skip


def _number(value: object) -> float | None:
    """A finite float or an int within int64 (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if (isinstance(value, int) and abs(value) < 1 << 63) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return None


@dataclass
class Histogram:
    edges: tuple[float, ...]
    counts: list[int]
    count: int = 0
    low: float = INF
    high: float = -INF
    total: int = 0  # the sum in units of 2**-1074 (every double is a whole number of them): exact

    @classmethod
    def empty(cls, edges: tuple[float, ...]) -> Histogram:
        return cls(tuple(edges), [0] * (len(edges) - 1))

    def add(self, value: float) -> None:
        self.counts[bin_of(self.edges, value)] += 1
        self.count += 1
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value
        num, den = value.as_integer_ratio()  # den is a power of two, at most 2**1074
        self.total += num << (UNIT_BITS + 1 - den.bit_length())

    def merge(self, other: Histogram) -> None:
        if other.edges != self.edges:
            raise ValueError("histograms with different bins do not merge")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.count += other.count
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.total += other.total

    @property
    def sum(self) -> Fraction:
        return Fraction(self.total, 1 << UNIT_BITS)

    @property
    def mean(self) -> float:
        return float(self.sum / self.count) if self.count else 0.0


def bin_of(edges: tuple[float, ...], value: float) -> int:
    return min(max(bisect_right(edges, value) - 1, 0), len(edges) - 2)


@dataclass
class Distributions:
    """One histogram per metric that has met a value; filled in a worker, merged in the parent."""

    max_len: int
    hists: dict[str, Histogram] = field(default_factory=dict)

    def add(self, facts: SampleFacts) -> None:
        for m in metrics(self.max_len):
            if facts.kind in m.kinds:
                value = _number(m.read(facts))
                if value is not None:
                    hist = self.hists.get(m.name)
                    if hist is None:
                        hist = self.hists[m.name] = Histogram.empty(m.edges)
                    hist.add(value)

    def merge(self, other: Distributions) -> None:
        for name, hist in other.hists.items():
            self.hists.setdefault(name, Histogram.empty(hist.edges)).merge(hist)

    def shown(self) -> list[tuple[Metric, Histogram]]:
        """The metrics with values, in the report's order."""
        return [(m, self.hists[m.name]) for m in metrics(self.max_len) if m.name in self.hists]


def merge_all(parts: Iterable[Distributions | None], max_len: int) -> Distributions:
    out = Distributions(max_len)
    for part in parts:
        if part is not None:
            out.merge(part)
    return out
