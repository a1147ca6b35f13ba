"""Stage 3 core: scan one tar, check every sample, and return what the indexes and the report need.

`scan_tar` runs in the worker processes (one tar per call) and never raises for bad data:
tar-level damage, bad samples and an object store's permanent faults become error rows. The
tar's headers are walked by vdp.io.tarslices (no per-member state, so memory does not grow with
the member count) and members are read in chunks within their size limits; a sample with a
refused member (link, device, unsafe name, duplicate, too large) is a bad sample, never dumped. A tar
on s3:// or oss:// is read once, front to back, through the same stream window and fault type
as stage 2 (vdp.io.tarslices.InputTar, StoreFault), never copied to disk; a fault becomes an
"unreadable tar" row here, where stage 2 leaves the group for a rerun. What comes back is
small: counts, error rows, each sample's byte offset (for energon's `.tar.idx`), and, when a
dump is asked for, the few samples of this tar that rank first by a hash of their name, with
their members, and the report's fixed-bin histograms of the sound samples (vdp.index.histograms).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from vdp.errors import RecordError, error_entry
from vdp.index.histograms import Distributions, merge_all
from vdp.index.validate import CheckOptions, SampleFacts, check_sample
from vdp.io import storage
from vdp.io.shards import Sample
from vdp.io.tario import KeyGroups, TarReadError, split_member_name
from vdp.io.tarslices import Entry, InputTar, StoreFault, iter_tar_index, member_limit, read_member, too_large

BLOCK = 512  # tar block size: every header and every member's padded data is a multiple of it


class Collector(Protocol):
    """Gathers something of each sound sample of one tar (vdp-dedup: its frame hashes)."""

    def add(self, sample: Sample, facts: SampleFacts) -> None: ...  # a RecordError makes the sample bad

    def result(self) -> Any: ...  # what the scan returns in TarScan.collected


@dataclass(frozen=True)
class ScanOptions:
    check: CheckOptions
    root: str  # the dataset folder: tars are named relative to it
    dump: int = 0  # keep this many samples per tar (lowest rank) for the report, and its histograms
    collector: Callable[[], Collector] | None = None  # builds one Collector per tar (must pickle)


@dataclass
class Pick:
    """A sample kept for the dump: its rank decides, whatever the number of workers."""

    rank: bytes
    tar: str  # relative to the dataset folder
    key: str
    members: dict[str, bytes]
    reason: str = ""  # empty when the sample passed every check
    facts: SampleFacts | None = None
    text: list = field(default_factory=list)  # check_pair: decoded windows per packed sample


@dataclass
class TarScan:
    path: str
    name: str  # relative to the dataset folder: energon's shard name
    size: int = 0
    samples: int = 0  # samples found (sound or not); what wids and energon count in the tar
    valid: int = 0
    tokens: int = 0
    images: int = 0
    errors: list[dict] = field(default_factory=list)  # {"tar", "key", "reason"}
    bad_keys: list[str] = field(default_factory=list)
    broken: bool = False  # the tar does not read to its end: no index lists it
    dropped: int = 0  # samples the damage cut short (not in `samples`)
    keys: set[str] = field(default_factory=set, repr=False)  # seen so far, for duplicates
    offsets: list[int] = field(default_factory=list)  # header offset of each sample, then the end
    picks: list[Pick] = field(default_factory=list)
    dists: Distributions | None = None  # the report's histograms (with a dump only)
    seconds: float = 0.0
    collected: Any = None  # the Collector's result, when ScanOptions.collector is set


def error_row(tar: str, key: str, reason: str) -> dict:
    """One line of the errors file: the policy's entry, with the tar named as such."""
    entry = error_entry(key, tar, reason)
    return {"tar": entry["source"], "key": entry["key"], "reason": entry["reason"]}


def shard_name(path: str, root: str) -> str:
    """A tar's path relative to the dataset folder (local or remote): energon's shard name."""
    if storage.is_remote(path):
        return path[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(path, root)


def rank_of(tar_name: str, key: str) -> bytes:
    """A fixed pseudo-random rank: the dump takes the lowest, so it is the same on every run."""
    return hashlib.blake2b(f"{tar_name}/{key}".encode(), digest_size=8).digest()


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass
class Placed:
    """A sample and where it lies: `start` is its first header, `end` where the next header begins."""

    sample: Sample
    start: int
    end: int
    problems: list[str] = field(default_factory=list)  # members that were refused: the sample is bad

    def add(self, ext: str, entry: Entry, data: bytes | None) -> None:
        if data is None:
            self.problems.append(entry.problem)
        elif ext in self.sample.members:
            self.problems.append(f"duplicate member: {entry.name} appears twice in the sample")
        else:
            self.sample.members[ext] = data


@dataclass
class TarDamage:
    reason: str
    dropped: str  # key of the sample the damage cut short ("" if none)


def iter_members(f) -> Iterator[tuple[Entry, bytes | None]]:
    """Each member of a tar with its bytes; None and the entry's `problem` set when it is refused.

    The headers are walked by vdp.io.tarslices (nothing kept per member, so memory does not grow
    with the tar); a member is read in chunks only once its size is within its limit, and a
    refused one is not read at all. TarReadError when the tar breaks.
    """
    count = 0
    for entry in iter_tar_index(f):
        count += 1
        refused = entry.problem or too_large(entry.name, entry.size)
        if refused:
            yield Entry(entry.name, entry.offset, entry.size, refused), None
        else:
            yield entry, read_member(f, entry, count)


def iter_placed(f, damage: list[TarDamage]) -> Iterator[Placed]:
    """Samples of a tar stream with their byte range; damage stops the stream and is appended to `damage`.

    A member's header chain starts where the previous member's padded data ends, so the ranges
    come from data offsets and sizes alone, long-name headers included. A sample the damage
    cut short is not yielded (it may lack members).
    """
    groups = KeyGroups(iter_members(f), lambda member: member[0].name)
    end = 0
    try:
        for key, members in groups:
            placed = Placed(Sample(key), end, end)
            for entry, data in members:
                placed.add(split_member_name(entry.name)[1], entry, data)
            end = placed.end = entry.offset + _padded(entry.size)
            yield placed
    except TarReadError as e:
        damage.append(TarDamage(f"{e.reason} (after {e.members_read} readable members)", groups.key))
    except StoreFault as e:
        damage.append(TarDamage(f"unreadable tar: {e}", groups.key))


# A hook check_pair adds to the per-sample checks (decoding token windows); None for main.py.
ExtraCheck = Callable[[SampleFacts], list]


def scan_tar(path: str, opts: ScanOptions, extra: ExtraCheck | None = None) -> TarScan:
    """Check every sample of one tar; everything wrong becomes an error row, nothing raises."""
    clock = time.perf_counter()
    scan = TarScan(path, shard_name(path, opts.root))
    scan.dists = Distributions(opts.check.max_len) if opts.dump else None
    damage: list[TarDamage] = []
    heap: list[tuple[bytes, int, Pick]] = []  # the picks kept, highest rank on top
    collector = opts.collector() if opts.collector else None
    end = 0
    try:
        with InputTar(path, member_limit) as tar:
            scan.size = tar.size
            for placed in iter_placed(tar.file, damage):
                scan.offsets.append(placed.start)
                end = placed.end
                _record(scan, placed, opts, extra, heap, collector)
    except (OSError, StoreFault) as e:
        damage.append(TarDamage(f"unreadable tar: {getattr(e, 'strerror', None) or e}", ""))
    scan.offsets.append(end)  # energon's index ends with the end of the last sample
    for d in damage:
        scan.broken = True
        reason = d.reason if d.reason.startswith("unreadable") else f"bad tar: {d.reason}"
        scan.errors.append(error_row(path, d.dropped, reason))
        scan.dropped += 1 if d.dropped else 0
    scan.picks = sorted((p for _, _, p in heap), key=lambda p: p.rank)
    scan.keys = set()  # not worth sending back to the parent
    scan.collected = collector.result() if collector else None
    scan.seconds = time.perf_counter() - clock
    return scan


def _record(
    scan: TarScan, placed: Placed, opts: ScanOptions, extra: ExtraCheck | None, heap: list, collector: Collector | None
) -> None:
    sample = placed.sample
    reason, facts, text = _check_one(placed, opts, scan, extra, collector)
    scan.samples += 1
    if reason:
        scan.errors.append(error_row(scan.path, sample.key, reason))
        scan.bad_keys.append(sample.key)
    else:
        scan.valid += 1
        scan.tokens += facts.tokens
        scan.images += facts.images
        if scan.dists is not None:
            scan.dists.add(facts)
    if opts.dump and not placed.problems:  # a refused member is never written anywhere, not even to the dump
        _keep(
            heap,
            opts.dump,
            Pick(rank_of(scan.name, sample.key), scan.name, sample.key, sample.members, reason, facts, text),
        )


def _check_one(placed: Placed, opts: ScanOptions, scan: TarScan, extra: ExtraCheck | None, collector: Collector | None):
    """(reason or "", facts, extra's output) for one sample; a sound one is given to the collector."""
    sample = placed.sample
    if sample.key in scan.keys:
        return f"duplicate key: {sample.key} appears twice in the tar", None, []
    scan.keys.add(sample.key)
    if placed.problems:
        return placed.problems[0], None, []
    try:
        facts = check_sample(sample, opts.check)
        text = extra(facts) if extra else []
        if collector is not None:
            collector.add(sample, facts)
    except RecordError as e:
        return str(e), None, []
    return "", facts, text


def _keep(heap: list, n: int, pick: Pick) -> None:
    """Keep the n lowest-ranked picks; members of the others are dropped at once."""
    entry = (bytes(255 - b for b in pick.rank), id(pick), pick)  # inverted rank: heap[0] is the highest kept
    if len(heap) < n:
        heapq.heappush(heap, entry)
    elif entry[0] > heap[0][0]:
        heapq.heapreplace(heap, entry)


def merge_distributions(scans: list[TarScan], max_len: int) -> Distributions:
    """The whole scan's histograms: counts added, so the same for any number of workers."""
    return merge_all((s.dists for s in scans), max_len)


def merge_picks(scans: list[TarScan], n: int) -> list[Pick]:
    """The n lowest-ranked picks of the whole scan."""
    return heapq.nsmallest(n, (p for s in scans for p in s.picks), key=lambda p: p.rank)
