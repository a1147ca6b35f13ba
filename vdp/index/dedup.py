"""Near-duplicate videos across a whole dataset: frame hashes in, groups out (vdp-dedup).

A sample's signature is the 64-bit perceptual hash of each of its frames (vdp.media.phash), in
its json's `signals.phash` (stage 1 writes it for un/kf, and for video-only with --signals).
A frames sample without it (shards packed before signals, or with --no_signals) is hashed here
from its JPEGs, the way stage 1 hashes (`phash(working_grey(frame))`), on the decoded JPEG
instead of the frame before encoding: a bit or two may differ. A sample with neither (a
video-only sample packed without --signals, a stage-2 sequence) has no signature and is kept.
Frames whose hash has fewer than MIN_BITS bits set are near-flat (a black or single-colour
frame hashes to 0) and are left out: they would join unrelated videos.

Matching rule (MatchRule): a frame of A matches B when one of B's frames is within `radius`
bits; A and B are near-duplicates when enough of A's frames match B *and* enough of B's match
A: at least min(min_frames, frames) and at least min_fraction of each video's frames. Frames
are compared as sets, never position by position, so a trimmed copy (its frames taken at other
times) matches on the frames the two still share. Groups are the connected components of
matching pairs. Per group the sample kept is the one with the most pixels (width × height),
then the longest duration, then the most frames, then the first in dataset order (tars sorted,
samples in tar order); the others are the duplicates.

How pairs are found: candidate pairs of videos come from faiss's multi-index hashing
(IndexBinaryMultiHash: the 64 bits cut into 3 substrings of 21, a frame's candidates are the
frames sharing one substring exactly, `exact` adds every 1..radius//3-bit flip of each so that
no pair within the radius is missed), run over the distinct hashes; every candidate pair is then
checked exactly, all frames of one against all frames of the other. Without `exact`, two frames
within 2 bits are always candidates and farther ones often (about 1 in 2 at 4 bits, 1 in 10 at
8): a copy is missed only if none of the frames it shares with its original is found, which
the bench (bench/dedup.py) measures. A hash shared by so many videos that all their pairs would
exceed FULL_CROSS (a title card, a logo) links them as a star from its first video instead of
all pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from vdp.errors import RecordError
from vdp.index.scan import TarScan
from vdp.index.validate import SampleFacts
from vdp.io import storage
from vdp.io.shards import Sample
from vdp.media.jpeg import decode_jpeg
from vdp.media.phash import phash
from vdp.media.signals import working_grey

MIN_BITS = 16  # a real picture's hash has about 32 of 64 bits set; a flat frame's, almost none
SUBSTRINGS = 3  # multi-index hashing: 3 substrings of 21 bits (the 64th bit is not indexed)
FULL_CROSS = 1024  # video pairs one hash pair may add as all pairs; above, a star
QUERY_CHUNK = 1 << 20  # distinct hashes searched at once (bounds the result arrays)
CHECK_BUDGET = 1 << 23  # frame pairs compared at once in the exact check (about 64 MB of temporaries)
_HEX = frozenset("0123456789abcdefABCDEF")


# --- pass 1: each sample's frame hashes (runs in the scan workers) -------------------------------


def _hex_hash(value, key: str) -> int:
    if not (isinstance(value, str) and len(value) == 16 and set(value) <= _HEX):
        raise RecordError(f"bad signals: {key}.json: phash entry {str(value)[:40]!r} is not 16 hex digits")
    return int(value, 16)


def _signal_hashes(signals, facts: SampleFacts) -> list[int] | None:
    """The json's `signals.phash` as integers; None when the json has none."""
    if signals is None:
        return None
    if not isinstance(signals, dict):
        raise RecordError(f"bad signals: {facts.key}.json: signals is not an object")
    hashes = signals.get("phash")
    if hashes is None:
        return None
    if not isinstance(hashes, list):
        raise RecordError(f"bad signals: {facts.key}.json: phash is not a list")
    if facts.kind == "frames" and len(hashes) != len(facts.doc["image"]):
        raise RecordError(f"bad signals: {facts.key}.json: {len(hashes)} phash entries for {len(facts.doc['image'])} images")
    return [_hex_hash(h, facts.key) for h in hashes]


def jpeg_hash(data: bytes, member: str) -> int:
    """A JPEG's frame hash, computed as stage 1 computes `signals.phash`."""
    image = decode_jpeg(data)
    if image is None:
        raise RecordError(f"bad jpeg: {member}: does not decode")
    return int(phash(working_grey(image)), 16)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@dataclass
class TarHashes:
    """The signatures of one tar's sound samples (those that have one), in tar order."""

    keys: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # hashes per sample
    hashes: list[int] = field(default_factory=list)  # every sample's hashes, one after another
    pixels: list[int] = field(default_factory=list)  # width × height, for the keep rule
    duration: list[float] = field(default_factory=list)
    from_jpeg: int = 0  # samples hashed from their JPEGs (no signals.phash)
    unhashed: int = 0  # sound samples without a signature (never grouped, always kept)

    def compact(self) -> TarHashes:
        """Numpy arrays instead of lists: 8 bytes a frame hash, sent back from the worker."""
        return replace(self, frames=np.asarray(self.frames, np.int64), hashes=np.asarray(self.hashes, np.uint64),
                       pixels=np.asarray(self.pixels, np.int64), duration=np.asarray(self.duration, np.float64))


class FrameHashes:
    """The scan's Collector (vdp.index.scan): each sound sample's frame hashes, one tar at a time."""

    def __init__(self) -> None:
        self.found = TarHashes()

    def add(self, sample: Sample, facts: SampleFacts) -> None:
        hashes = _signal_hashes(facts.doc.get("signals"), facts)
        decoded = hashes is None and facts.kind == "frames"
        if decoded:
            hashes = [jpeg_hash(sample.members[f"{name}.jpg"], f"{sample.key}.{name}.jpg") for name in facts.doc["image"]]
        if hashes is None:
            self.found.unhashed += 1
            return
        f = self.found
        f.keys.append(sample.key)
        f.frames.append(len(hashes))
        f.hashes.extend(hashes)
        f.pixels.append(int(_number(facts.doc.get("width")) * _number(facts.doc.get("height"))))
        f.duration.append(_number(facts.doc.get("duration")))
        f.from_jpeg += decoded

    def result(self) -> TarHashes:
        return self.found.compact()


# --- pass 2: groups (one process) --------------------------------------------------------------


@dataclass(frozen=True)
class MatchRule:
    radius: int = 8  # bits (of 64) within which two frame hashes match
    min_frames: int = 2  # matched frames each video needs (fewer when it has fewer frames)
    min_fraction: float = 0.5  # ... and this share of its frames
    exact: bool = False  # candidates: every frame pair within the radius, not only likely ones

    def needed(self, frames: np.ndarray) -> np.ndarray:
        return np.maximum(np.minimum(self.min_frames, frames), np.ceil(self.min_fraction * frames - 1e-9))


@dataclass
class Signatures:
    """Frame hashes of many videos, flat: video v's are hashes[starts[v]:starts[v + 1]]."""

    hashes: np.ndarray  # uint64
    starts: np.ndarray  # int64, one more than the videos
    keep_rank: np.ndarray  # int64 per video: in a group, the lowest rank is kept

    @property
    def videos(self) -> int:
        return len(self.starts) - 1

    @property
    def frames(self) -> np.ndarray:
        return np.diff(self.starts)

    @classmethod
    def build(cls, hashes: np.ndarray, frames: np.ndarray, keep_rank: np.ndarray) -> Signatures:
        """From each video's frame count and hashes; near-flat frames are left out here."""
        video = np.repeat(np.arange(len(frames)), frames)
        sound = np.bitwise_count(hashes) >= MIN_BITS
        kept = np.bincount(video[sound], minlength=len(frames))
        return cls(hashes[sound], np.concatenate([[0], np.cumsum(kept)]).astype(np.int64), keep_rank)


@dataclass
class Grouping:
    members: np.ndarray  # video ids, group after group, each group's kept video first
    starts: np.ndarray  # group g is members[starts[g]:starts[g + 1]]
    candidates: int = 0  # video pairs checked exactly
    matches: int = 0  # ... of which matched

    @property
    def groups(self) -> int:
        return len(self.starts) - 1

    def dropped(self) -> np.ndarray:
        """Every video that is not the first of its group."""
        first = np.zeros(len(self.members), bool)
        first[self.starts[:-1]] = True
        return self.members[~first]


def hash_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as faiss's N×8 uint8 codes (the bytes of the 16 hex digits, most significant
    first), with one zero row of padding after the last: faiss's multi-hash reads a few
    bytes past a code to cut its substrings."""
    codes = np.zeros((len(hashes) + 1, 8), np.uint8)
    codes[:-1] = hashes.astype(">u8").view(np.uint8).reshape(-1, 8)
    return codes


def _hash_index(codes: np.ndarray, count: int, rule: MatchRule):
    import faiss  # the [dedup] extra; vdp-dedup checks for it before any work

    index = faiss.IndexBinaryMultiHash(64, SUBSTRINGS, 64 // SUBSTRINGS)
    index.nflip = rule.radius // SUBSTRINGS if rule.exact else 0
    index.add(codes[:count])
    return index


@dataclass
class _Buckets:
    """The videos of each distinct hash: videos[start[u]:start[u + 1]], sorted, each once."""

    start: np.ndarray
    videos: np.ndarray
    count: int  # all videos, to pack a pair into one int64

    def size(self, u: np.ndarray) -> np.ndarray:
        return self.start[u + 1] - self.start[u]


def _ranges(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, offset) of each of sum(lengths) slots: slot k belongs to owner i at offset 0..lengths[i]-1."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _video_pairs(u1: np.ndarray, u2: np.ndarray, b: _Buckets) -> np.ndarray:
    """Candidate video pairs from hash pairs: min * count + max, sorted, unique, no video with itself."""
    n1, n2 = b.size(u1), b.size(u2)
    full = n1 * n2 <= FULL_CROSS
    e, k = _ranges((n1 * n2)[full])
    f1, f2, m2 = u1[full][e], u2[full][e], n2[full][e]
    left = [b.videos[b.start[f1] + k // m2]]
    right = [b.videos[b.start[f2] + k % m2]]
    for hub, spokes in ((u1[~full], u2[~full]), (u2[~full], u1[~full])):  # a star from the hub's first video
        e, k = _ranges(b.size(spokes))
        left.append(b.videos[b.start[hub[e]]])
        right.append(b.videos[b.start[spokes[e]] + k])
    a, c = np.concatenate(left), np.concatenate(right)
    other = a != c
    return np.unique(np.minimum(a, c)[other] * b.count + np.maximum(a, c)[other])


def candidate_pairs(sig: Signatures, rule: MatchRule) -> np.ndarray:
    """K×2 video pairs (a < b) that may match: they share a frame hash or have two within reach."""
    video = np.repeat(np.arange(sig.videos, dtype=np.int64), sig.frames)
    distinct, which = np.unique(sig.hashes, return_inverse=True)
    pairs = np.unique(which.astype(np.int64) * sig.videos + video)  # (hash, video), each once
    buckets = _Buckets(np.searchsorted(pairs // sig.videos, np.arange(len(distinct) + 1)),
                       pairs % sig.videos, sig.videos)
    shared = np.nonzero(buckets.size(np.arange(len(distinct))) > 1)[0]
    found = [_video_pairs(shared, shared, buckets)]
    codes = hash_codes(distinct)
    index = _hash_index(codes, len(distinct), rule)
    for lo in range(0, len(distinct), QUERY_CHUNK):
        hi = min(lo + QUERY_CHUNK, len(distinct))
        lims, _, near = index.range_search(codes[lo:hi], rule.radius + 1)  # faiss: distance < radius
        source = np.repeat(np.arange(lo, hi), np.diff(lims).astype(np.int64))
        once = source < near  # the search is symmetric: each hash pair once, a hash never with itself
        found.append(_video_pairs(source[once], near[once], buckets))
    packed = np.unique(np.concatenate(found))
    return np.stack([packed // sig.videos, packed % sig.videos], axis=1)


def nearest_distances(sig: Signatures, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs of videos: each frame's distance to the nearest frame of the other video
    (P × max frames of a, P × max frames of b; 255 past a video's frames)."""
    na, nb = sig.frames[a], sig.frames[b]
    fa, fb = int(na.max(initial=1)), int(nb.max(initial=1))
    ma, mb = np.arange(fa) < na[:, None], np.arange(fb) < nb[:, None]
    ha = sig.hashes[np.where(ma, sig.starts[a][:, None] + np.arange(fa), 0)]
    hb = sig.hashes[np.where(mb, sig.starts[b][:, None] + np.arange(fb), 0)]
    d = np.bitwise_count(ha[:, :, None] ^ hb[:, None, :])
    d[~(ma[:, :, None] & mb[:, None, :])] = 255
    return d.min(axis=2), d.min(axis=1)


def _chunks(side: np.ndarray) -> Iterator[np.ndarray]:
    """Indices of pairs in order of their larger frame count, cut so each chunk's padded
    P × side × side stays within CHECK_BUDGET."""
    side = np.maximum(side, 1)
    order = np.argsort(side, kind="stable")
    lo = 0
    while lo < len(order):
        end = min(lo + max(1, CHECK_BUDGET // int(side[order[lo]]) ** 2), len(order))
        end = min(lo + max(1, CHECK_BUDGET // int(side[order[end - 1]]) ** 2), len(order))
        yield order[lo:end]
        lo = end


def matching(sig: Signatures, pairs: np.ndarray, rule: MatchRule) -> np.ndarray:
    """Which candidate pairs match, checked exactly on all their frames."""
    ok = np.zeros(len(pairs), bool)
    frames = sig.frames
    for idx in _chunks(np.maximum(frames[pairs[:, 0]], frames[pairs[:, 1]])):
        a, b = pairs[idx, 0], pairs[idx, 1]
        da, db = nearest_distances(sig, a, b)
        ok[idx] = ((da <= rule.radius).sum(1) >= rule.needed(frames[a])) & (
            (db <= rule.radius).sum(1) >= rule.needed(frames[b]))
    return ok


def components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Each video's component label: the smallest video id it is connected to (union-find by hooking
    roots onto the smaller root, with full path compression, until every pair shares a root)."""
    parent = np.arange(count)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        while not np.array_equal(parent[parent], parent):
            parent = parent[parent]
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            return parent
        np.minimum.at(parent, np.maximum(ra, rb)[split], np.minimum(ra, rb)[split])


def group_videos(sig: Signatures, rule: MatchRule) -> Grouping:
    """Groups of near-duplicate videos (two or more each), in order of their first video; in each,
    videos in keep order, the kept one first."""
    pairs = candidate_pairs(sig, rule) if len(sig.hashes) else np.zeros((0, 2), np.int64)
    matched = pairs[matching(sig, pairs, rule)]
    label = components(sig.videos, matched)
    size = np.bincount(label, minlength=sig.videos)
    order = np.lexsort((sig.keep_rank, label))
    members = order[size[label[order]] > 1]
    cut = np.nonzero(np.diff(label[members]))[0] + 1
    starts = np.concatenate([[0], cut, [len(members)]]) if len(members) else np.zeros(1, np.int64)
    return Grouping(members, starts.astype(np.int64), len(pairs), len(matched))


def keep_ranks(pixels: np.ndarray, duration: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Rank of each video in the keep order: most pixels, longest, most frames, then dataset order."""
    order = np.lexsort((np.arange(len(pixels)), -frames, -duration, -pixels))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


# --- the dataset: scans in, rows and indexes out -------------------------------------------------


@dataclass
class DatasetSignatures:
    """Every signature of the tars that read to their end, with where each sample lives."""

    sig: Signatures
    tars: list[TarScan]  # the tar of each video, by position in `tar_of`
    tar_of: np.ndarray
    keys: list[str]
    pixels: np.ndarray
    duration: np.ndarray
    frames_listed: np.ndarray  # hashes before near-flat frames were left out
    from_jpeg: int
    unhashed: int


def dataset_signatures(scans: list[TarScan]) -> DatasetSignatures:
    """Signatures of the tars that read to their end (a broken tar is in no index, so none of its
    samples may stand for a group)."""
    parts = [s for s in scans if not s.broken and s.collected is not None]
    found: list[TarHashes] = [s.collected for s in parts]
    frames, pixels = _joined(found, "frames", np.int64), _joined(found, "pixels", np.int64)
    duration, hashes = _joined(found, "duration", np.float64), _joined(found, "hashes", np.uint64)
    tar_of = np.repeat(np.arange(len(parts)), [len(f.keys) for f in found]).astype(np.int64)
    sig = Signatures.build(hashes, frames, keep_ranks(pixels, duration, frames))
    return DatasetSignatures(sig, parts, tar_of, [k for f in found for k in f.keys], pixels, duration, frames,
                             sum(f.from_jpeg for f in found), sum(f.unhashed for f in found))


def _joined(found: list[TarHashes], name: str, dtype) -> np.ndarray:
    return np.concatenate([np.asarray(getattr(f, name), dtype) for f in found] + [np.zeros(0, dtype)])


def group_rows(ds: DatasetSignatures, grouping: Grouping, rule: MatchRule) -> Iterator[dict]:
    """One row per group for NAME.duplicates.jsonl: the kept sample first, then each duplicate with
    `distance` (median over its frames of the bits to the nearest frame of the kept sample) and
    `matched` (share of its frames within the radius of one of the kept sample's)."""
    kept = grouping.members[grouping.starts[:-1]]
    sizes = np.diff(grouping.starts)
    dropped = grouping.dropped()
    base = np.repeat(kept, sizes - 1)
    distance, matched = np.zeros(len(dropped)), np.zeros(len(dropped))
    for idx in _chunks(np.maximum(ds.sig.frames[base], ds.sig.frames[dropped])):
        _, d = nearest_distances(ds.sig, base[idx], dropped[idx])
        valid = d < 255
        distance[idx] = [float(np.median(row[ok])) if ok.any() else 64.0 for row, ok in zip(d, valid)]
        matched[idx] = ((d <= rule.radius) & valid).sum(1) / np.maximum(valid.sum(1), 1)
    done = 0
    for g in range(grouping.groups):
        rows = [_sample_row(ds, int(kept[g]))]
        for j in range(done, done + sizes[g] - 1):
            rows.append({**_sample_row(ds, int(dropped[j])), "distance": float(distance[j]),
                         "matched": round(float(matched[j]), 3)})
        done += sizes[g] - 1
        yield {"group": g, "samples": rows}


def _sample_row(ds: DatasetSignatures, v: int) -> dict:
    return {"tar": ds.tars[ds.tar_of[v]].path, "key": ds.keys[v], "frames": int(ds.sig.frames[v]),
            "pixels": int(ds.pixels[v]), "duration": float(ds.duration[v])}


def dropped_keys(ds: DatasetSignatures, grouping: Grouping) -> dict[str, list[str]]:
    """Tar path -> keys of its samples that are duplicates, in tar order."""
    out: dict[str, list[str]] = {}
    for v in np.sort(grouping.dropped()):
        out.setdefault(ds.tars[ds.tar_of[v]].path, []).append(ds.keys[v])
    return out


def without_duplicates(scans: list[TarScan], dropped: dict[str, list[str]]) -> list[TarScan]:
    """The scans as the index writers should see them: a duplicate counts as a sample left out
    (vdp.index.formats: not in the pickle's count, under energon's `exclude`, and its tar not in
    the wids index, which cannot skip a sample)."""
    out = []
    for s in scans:
        keys = dropped.get(s.path, [])
        out.append(replace(s, valid=s.valid - len(keys), bad_keys=s.bad_keys + keys) if keys else s)
    return out


def duplicate_lines(rows: Iterator[dict]) -> Iterator[bytes]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False).encode() + b"\n"


def read_dropped(path: str) -> set[tuple[str, str]]:
    """(tar, key) of every duplicate in a NAME.duplicates.jsonl (local, s3:// or oss://): all samples
    but the first of each line, the set a reader of the Megatron pickle filters out."""
    with storage.open_text(path) as f:
        return {(s["tar"], s["key"]) for line in f if line.strip() for s in json.loads(line)["samples"][1:]}
