#!/usr/bin/env python
"""Near-duplicate grouping at scale: vdp-dedup's pass 2 on synthetic frame hashes (issue 13).

    .venv/bin/python bench/dedup.py            # 1,000,000 videos x 10 frames = 10,000,000 frame hashes
    .venv/bin/python bench/dedup.py --quick    # 20,000 videos x 10 frames = 200,000 frame hashes

Videos: --videos signatures of --frames 64-bit frame hashes each (uniform random bits), of which
a share --copies are planted copies, each of a different original: a copy of a trimmed,
re-encoded video, i.e. its frames are the original's from a random frame 0..3 on (the trimmed
start), spread evenly over the rest, in order, each with 0..--radius random bits flipped
(uniformly; real re-encodes mostly move 0-4 bits, tests/test_dedup.py). Timed, in one process
(faiss on --threads threads, default all cores), what vdp-dedup runs after its scan:

  build       Signatures.build (near-flat frames left out, keep ranks)
  candidates  distinct hashes, faiss IndexBinaryMultiHash built and range-searched, video pairs
  check       every candidate pair checked exactly, all frames against all
  groups      union-find over the matching pairs, groups in keep order

Reported: seconds of each and in all, peak RSS (resource.getrusage: the whole process, the
synthetic data included), recall (planted copies that ended in their original's group) and
false joins (groups holding two originals). Targets: 10M frame hashes in under 600 s and 4 GB,
recall >= 0.95, no false join. Figures go to OUT/dedup.json. Exit 0 targets met, 1 missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root, not bench/

import numpy as np  # noqa: E402

from vdp.index.dedup import MatchRule, Signatures, candidate_pairs, components, keep_ranks, matching  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KB on Linux


def flip_bits(hashes: np.ndarray, counts: np.ndarray, rng: np.random.Generator, chunk: int = 1 << 17) -> np.ndarray:
    """Each hash with counts[i] distinct random bits flipped (in chunks: a permutation of 64 bits a row)."""
    out = hashes.copy()
    for lo in range(0, len(hashes), chunk):
        order = np.argsort(rng.random((len(hashes[lo : lo + chunk]), 64), dtype=np.float32), axis=1)
        n = counts[lo : lo + chunk]
        for j in range(int(n.max(initial=0))):
            bit = np.left_shift(np.uint64(1), order[:, j].astype(np.uint64))
            out[lo : lo + chunk] ^= np.where(j < n, bit, np.uint64(0))
    return out


def synthetic(videos: int, frames: int, copies: float, radius: int, seed: int = 0):
    """(hashes V×F, original of each copy or -1)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, (videos, frames), dtype=np.uint64, endpoint=False)
    n_copies = int(videos * copies)
    copy_ids = rng.choice(videos, n_copies, replace=False)
    rest = np.setdiff1d(np.arange(videos), copy_ids)
    originals = rng.choice(rest, n_copies, replace=False)
    source = np.full(videos, -1)
    source[copy_ids] = originals
    start = rng.integers(0, 4, n_copies)  # frames trimmed off the start
    positions = np.rint(start[:, None] + (frames - 1 - start[:, None]) * np.linspace(0, 1, frames)[None, :])
    taken = hashes[originals[:, None], positions.astype(np.int64)].ravel()
    hashes[copy_ids] = flip_bits(taken, rng.integers(0, radius + 1, len(taken)), rng).reshape(n_copies, frames)
    return hashes, source


def run(args: argparse.Namespace) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rule = MatchRule(radius=args.radius, exact=args.exact)
    hashes, source = synthetic(args.videos, args.frames, args.copies, args.radius)
    made = peak_rss_gb()
    clock, times = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = round(now - clock, 1)
        clock = now
        print(f"  {name:<11} {times[name]:7.1f} s   peak RSS {peak_rss_gb():.2f} GB", flush=True)

    counts = np.full(args.videos, args.frames)
    sig = Signatures.build(hashes.ravel(), counts, keep_ranks(np.zeros(args.videos), np.zeros(args.videos), counts))
    del hashes
    lap("build")
    pairs = candidate_pairs(sig, rule)
    lap("candidates")
    matched = pairs[matching(sig, pairs, rule)]
    lap("check")
    label = components(sig.videos, matched)
    lap("groups")
    copies = np.nonzero(source >= 0)[0]
    recall = float(np.mean(label[copies] == label[source[copies]]))
    is_original = source < 0
    originals_per_group = np.bincount(label[is_original], minlength=sig.videos)
    return {
        "frame_hashes": int(len(sig.hashes)), "videos": args.videos, "frames": args.frames,
        "planted_copies": int(len(copies)), "radius": args.radius, "exact": args.exact, "threads": args.threads,
        "seconds": times, "total_seconds": round(sum(times.values()), 1),
        "candidate_pairs": int(len(pairs)), "matched_pairs": int(len(matched)),
        "groups": int(np.sum(np.bincount(label, minlength=sig.videos) > 1)),
        "recall": round(recall, 4), "false_joins": int(np.sum(originals_per_group > 1)),
        "peak_rss_gb": round(peak_rss_gb(), 2), "rss_after_synthesis_gb": round(made, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1_000_000)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--copies", type=float, default=0.1, help="share of the videos that are planted copies")
    p.add_argument("--radius", type=int, default=MatchRule().radius)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--exact", action="store_true", help="vdp-dedup --exact: every frame pair within the radius")
    p.add_argument("--quick", action="store_true", help="20,000 videos (200,000 frame hashes)")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args()
    if args.quick:
        args.videos = 20_000
    print(f"dedup bench: {args.videos:,} videos x {args.frames} frames = {args.videos * args.frames:,} frame hashes, "
          f"{args.copies:.0%} planted copies, radius {args.radius}{' --exact' if args.exact else ''}, "
          f"{args.threads} threads", flush=True)
    result = run(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dedup.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    scale = 10_000_000 / max(result["frame_hashes"], 1)
    ok = (result["total_seconds"] * max(scale, 1) < 600 and result["peak_rss_gb"] < 4 and result["recall"] >= 0.95
          and result["false_joins"] == 0)
    print(f"{'PASS' if ok else 'FAIL'}: {result['total_seconds']} s, {result['peak_rss_gb']} GB peak, "
          f"recall {result['recall']}, {result['false_joins']} false joins"
          + (f" (time target scaled linearly to 10M: x{scale:.0f})" if scale > 1 else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
