"""Which samples share a sequence: packing token counts into sequences of at most max_len.

In a packed sequence every sample after the first loses its leading BOS, so a sample of n
tokens costs n - 1 and a sequence holds one token more than its samples' costs: packing
sizes n - 1 into bins of max_len - 1 is exact. Every function returns bins as lists of
sample indices (input order inside a bin), and every sample lands in exactly one bin.
The packers take the lengths as a stream and yield each bin as soon as it is decided.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np


def _bin_sizes(lengths: Sequence[int]) -> list[int]:
    return [n - 1 for n in lengths]


def sequence_length(lengths: Sequence[int]) -> int:
    """Tokens of a sequence made of samples of these lengths (later samples drop their BOS)."""
    return sum(lengths) - max(0, len(lengths) - 1)


def best_fit_decreasing(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing, one bin at a time, with a slack-closing refinement.

    Each bin starts with the largest waiting item and keeps taking the largest waiting item
    that still fits (best fit, decreasing). Plain BFD stops there and leaves on average half
    the smallest item's size empty in every bin (3% of 8000 tokens for 600-token samples),
    since the first bins get the longest samples. So while a bin has room, one of its items
    is swapped for the waiting pair that fills it best: that uses the short samples where
    they close a gap. Ties go to the earlier item (sorted by (size, index)), so the result
    depends on the sizes only.
    """
    pool = sorted((s, i) for i, s in enumerate(sizes))  # waiting items, ascending
    bins: list[list[int]] = []
    while pool:
        size, first = pool.pop()
        content = [(size, first)]
        room = capacity - size
        room = _take_largest_fitting(pool, content, room)
        while room > 0 and len(pool) >= 2 and (swap := _best_swap(pool, content, room)):
            gain, k, pair = swap
            out = content[k]
            content[k : k + 1] = [pool[j] for j in pair]
            for j in sorted(pair, reverse=True):
                del pool[j]
            bisect.insort(pool, out)
            room -= gain
        bins.append(sorted(i for _, i in content))
    return bins


def _take_largest_fitting(pool: list[tuple[int, int]], content: list[tuple[int, int]], room: int) -> int:
    while pool:
        at = bisect.bisect_right(pool, (room, math.inf)) - 1
        if at < 0:
            break
        item = pool.pop(at)
        content.append(item)
        room -= item[0]
    return room


def _best_swap(pool: list[tuple[int, int]], content: list[tuple[int, int]], room: int):
    """(gain, position in content, (j1, j2) in pool) of the best one-for-two swap, or None.

    For item x the pair must sum to more than x and at most x + room; for every waiting
    item the best partner is found at once with a vectorised binary search.
    """
    sizes = np.fromiter((s for s, _ in pool), dtype=np.int64, count=len(pool))
    own = np.arange(len(sizes))
    best = None
    for k, (x, _) in enumerate(content):
        partner = np.searchsorted(sizes, x + room - sizes, side="right") - 1
        partner = np.where(partner == own, partner - 1, partner)  # an item is not its own partner
        total = np.where(partner >= 0, sizes + sizes[np.maximum(partner, 0)], -1)
        j = int(np.argmax(total))
        gain = int(total[j]) - x
        if gain > 0 and (best is None or gain > best[0]):
            best = (gain, k, (j, int(partner[j])))
    return best


def pack_bfd(lengths: Iterable[int], max_len: int, window: int = 1000) -> Iterator[list[int]]:
    """Best-fit decreasing over windows of `window` samples, streamed in input order.

    Each full window is packed and its bins yielded except the emptiest one, whose samples
    wait for the next window (so a window boundary costs no half-empty sequence); the last
    window yields everything. Within a window bins come out ordered by their first sample.
    Only one window of samples is ever waiting, which bounds the caller's memory.
    """
    capacity = max_len - 1
    sizes: dict[int, int] = {}  # waiting sample index -> its size in a bin
    for i, n in enumerate(lengths):
        sizes[i] = n - 1
        if len(sizes) >= window:
            bins = _pack_window(sizes, capacity)
            keep = min(range(len(bins)), key=lambda b: (sum(sizes[k] for k in bins[b]), -b)) if len(bins) > 1 else -1
            for n_bin, b in enumerate(bins):
                if n_bin != keep:
                    yield b
                    for k in b:
                        del sizes[k]
    if sizes:
        yield from _pack_window(sizes, capacity)


def _pack_window(sizes: dict[int, int], capacity: int) -> list[list[int]]:
    indices = sorted(sizes)
    local = best_fit_decreasing([sizes[k] for k in indices], capacity)
    return sorted(([indices[j] for j in b] for b in local), key=lambda b: b[0])


def pack_greedy(lengths: Iterable[int], max_len: int, window: int = 0) -> Iterator[list[int]]:
    """The seed's in-order filling: start a new sequence when the next sample would pass max_len.

    Like the seed it counts every sample's full length (BOS included), so its sequences can
    end a few tokens short of max_len; unlike the seed it keeps the last partial sequence.
    """
    current: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if current and total + n > max_len:
            yield current
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        yield current


PACKERS: dict[str, Callable[[Iterable[int], int, int], Iterator[list[int]]]] = {
    "bfd": pack_bfd,
    "greedy": pack_greedy,
}


def lower_bound(lengths: Sequence[int], max_len: int) -> int:
    """A lower bound on the number of sequences any packing needs.

    The larger of: total cost over capacity (rounded up), and the number of samples too big
    for any two of them to share a sequence.
    """
    if not lengths:
        return 0
    sizes = _bin_sizes(lengths)
    capacity = max_len - 1
    big = sum(1 for s in sizes if 2 * s > capacity)
    return max(math.ceil(sum(sizes) / capacity), big)


def fill(lengths: Sequence[int], bins: Sequence[Sequence[int]], max_len: int) -> float:
    """Mean fill of the sequences: their tokens over sequences × max_len."""
    if not bins:
        return 0.0
    tokens = sum(sequence_length([lengths[i] for i in b]) for b in bins)
    return tokens / (len(bins) * max_len)
