"""Stage 3: find near-duplicate videos across a whole dataset and index it keeping one of each group.

Examples (from the repo root):
  python index/dedup.py --dataset_path out/un --dataset_name webvid_un_dedup --output idx/ --workers 8
  python index/dedup.py --dataset_path s3://bucket/shards/kf --dataset_name webvid_kf_dedup \\
      --output s3://bucket/index --energon --radius 6 --executor ray --ray_address auto

Every tar under --dataset_path is read and checked as index/main.py checks it, and each sound
sample's frame hashes are taken from its json's signals.phash (stage 1 writes them), or computed
from its JPEGs when the json has none (older shards, --no_signals). Samples whose frames match
(re-encoded, resized or trimmed copies of one video; the rule: --radius, --min_frames,
--min_fraction) form a group. Written to --output: NAME.duplicates.jsonl, one group a line, the
kept sample first (most pixels, then longest, then most frames, then first in dataset order),
then the others with their distance to it; and index/main.py's indexes, keeping one sample per
group: NAME.pkl counts each tar's kept samples (the pickle cannot name a sample: a reader skips
the duplicates file's keys), NAME.wids.json lists only tars with nothing left out, with
--energon the duplicates go under split.yaml's `exclude`. Use another NAME to keep the full
index beside it. Needs faiss-cpu (pip install '.[dedup]'). Exit 0 when every tar and sample is
sound, 1 when something was bad (the rest is still grouped and indexed), 2 on bad usage, 3 when
an output could not be written (fix that and rerun).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

from vdp.cli.common import reports_command_errors
from vdp.cli.index import add_index_flags, final_paths, write_indexes
from vdp.cli.index_flags import context_of, prepare_scan, stage3_parser
from vdp.errors import UsageError
from vdp.index.dedup import (
    FrameHashes,
    MatchRule,
    dataset_signatures,
    dropped_keys,
    duplicate_lines,
    group_rows,
    group_videos,
    without_duplicates,
)
from vdp.index.stage import finish, run_scan, scan_totals
from vdp.io import storage
from vdp.io.debris import remove_stale_partials
from vdp.io.tario import write_stream_atomically
from vdp.run.accounting import run_about, summary_path
from vdp.run.progress import Stopwatch

MAX_RADIUS = 20  # unrelated pictures' hashes are about 32 bits apart; past this they start to match


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage3_parser(__doc__)
    add_index_flags(p, also=", NAME.duplicates.jsonl")
    rule = MatchRule()
    p.add_argument("--radius", type=int, default=rule.radius,
                   help=f"two frame hashes match within this many bits of 64 (default {rule.radius})")
    p.add_argument("--min_frames", type=int, default=rule.min_frames,
                   help=f"frames of each video that must match the other's (default {rule.min_frames}; "
                        "all of them for a shorter video)")
    p.add_argument("--min_fraction", type=float, default=rule.min_fraction,
                   help=f"... and this share of each video's frames (default {rule.min_fraction})")
    p.add_argument("--exact", action="store_true",
                   help="find every frame pair within --radius, not only likely ones (slower: for up to a few "
                        "million frames)")
    return p.parse_args(argv)


def match_rule(args: argparse.Namespace) -> MatchRule:
    if not 0 <= args.radius <= MAX_RADIUS:
        raise UsageError(f"--radius must be within 0..{MAX_RADIUS}")
    if args.min_frames < 1 or not 0 < args.min_fraction <= 1:
        raise UsageError("--min_frames must be positive and --min_fraction within (0, 1]")
    return MatchRule(args.radius, args.min_frames, args.min_fraction, args.exact)


def nearest_neighbour_library(threads: int) -> None:
    """faiss, with its threads set; a UsageError before any work when it is not installed."""
    try:
        import faiss
    except ImportError:
        raise UsageError("faiss is not installed: pip install 'video-data-pipeline[dedup]' (faiss-cpu)") from None
    faiss.omp_set_num_threads(threads)


@reports_command_errors("index/dedup.py")
def main(argv: list[str] | None = None) -> int:
    clock = Stopwatch()
    args = parse_args(argv)
    rule = match_rule(args)
    nearest_neighbour_library(args.workers)
    tars, options = prepare_scan(args, args.output, deep=args.deep)
    base = storage.join(args.output, args.dataset_name)
    summary = summary_path(args.output, f"dedup-{args.dataset_name}")  # OUT/summary-dedup-NAME.json
    remove_stale_partials([*final_paths(args, tars), base + ".duplicates.jsonl", summary])  # what killed runs left
    run = run_scan(tars, replace(options, collector=FrameHashes), context_of(args), args.timeout,
                   progress=not args.no_progress)
    found = dataset_signatures(run.scans)
    grouping = group_videos(found.sig, rule)
    write_stream_atomically(base + ".duplicates.jsonl", partial(write_lines, duplicate_lines(group_rows(found, grouping, rule))))
    write_indexes(args, without_duplicates(run.scans, dropped_keys(found, grouping)), options.check.image_ids,
                  left_out="bad or duplicate samples")
    totals = scan_totals(run)
    removed = len(grouping.dropped())
    totals.update(hashed=len(found.keys), from_jpeg=found.from_jpeg, groups=grouping.groups, duplicates=removed,
                  indexed=totals["indexed"] - removed, seconds=clock.seconds)
    return finish(run, "dedup", base + ".errors.jsonl", totals, summary_path=summary, about=run_about(args, argv))


def write_lines(lines, f) -> None:
    for line in lines:
        f.write(line)
