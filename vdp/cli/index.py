"""Stage 3: validate every sample of a folder of shards and index it for Megatron, wids and Megatron-Energon.

Examples (from the repo root):
  python index/main.py --dataset_path out/0-100 --dataset_name llava_kf --output index/ --workers 8
  python index/main.py --dataset_path out/0-100 --dataset_name llava_kf --output index/ --workers 8 \\
      --energon --url_prefix s3://bucket/llava_kf/0-100
  # tars and indexes on object storage, every tar a Ray task on a running cluster
  python index/main.py --dataset_path s3://bucket/llava_kf/0-100 --dataset_name llava_kf \\
      --output s3://bucket/index --energon --executor ray --ray_address auto

Writes OUT/NAME.pkl (the seed's Megatron index), OUT/NAME.wids.json, OUT/NAME.errors.jsonl and,
with --energon, energon's metadata inside the dataset folder (next to the tars in the bucket
for an s3:// or oss:// dataset, whose indexes then list the tars' URLs). Exit 0 when every tar
and sample is sound, 1 when something was bad (the rest is still indexed), 2 on bad usage,
3 when an output could not be written (disk full, read-only folder): fix that and rerun.
"""

from __future__ import annotations

import argparse
import sys

from vdp.cli.common import reports_command_errors
from vdp.cli.index_flags import context_of, prepare_scan, stage3_parser
from vdp.index.formats import (
    default_url,
    energon_files,
    megatron_entries,
    prefixed_url,
    wids_index,
    write_energon,
    write_json,
    write_megatron_pkl,
)
from vdp.index.stage import finish, run_scan
from vdp.index.validate import ImageTokenIds
from vdp.io import storage
from vdp.io.debris import remove_stale_partials
from vdp.run.accounting import run_about, summary_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = stage3_parser(__doc__)
    add_index_flags(p)
    return p.parse_args(argv)


def add_index_flags(p: argparse.ArgumentParser, also: str = "") -> None:
    """The flags of the indexes written (vdp-index, vdp-dedup); `also`: more files in --output."""
    p.add_argument(
        "--output",
        required=True,
        help=f"folder (or s3:// / oss:// prefix) for NAME.pkl, NAME.wids.json, NAME.errors.jsonl{also}",
    )
    p.add_argument(
        "--energon",
        action="store_true",
        help="also write Megatron-Energon's metadata (.nv-meta/, *.tar.idx) into the dataset folder",
    )
    p.add_argument("--deep", action="store_true", help="decode every JPEG and open every video, not only their headers")
    p.add_argument(
        "--url_prefix",
        help="write tar URLs as PREFIX/relative/path.tar (e.g. s3://bucket/set) instead of local absolute paths",
    )


def write_indexes(args: argparse.Namespace, scans, image_ids: ImageTokenIds, left_out: str = "bad samples") -> None:
    """NAME.pkl, NAME.wids.json and with --energon energon's metadata; `left_out` names what a tar
    missing from the wids index lost (vdp-dedup: duplicates too)."""
    url_of = prefixed_url(args.url_prefix) if args.url_prefix else default_url
    base = storage.join(args.output, args.dataset_name)
    write_megatron_pkl(base + ".pkl", megatron_entries(scans, url_of))
    wids = wids_index(args.dataset_name, scans, url_of)
    write_json(base + ".wids.json", wids)
    tars_left_out = sum(1 for s in scans if not s.broken and s.samples and s.valid < s.samples)
    if tars_left_out:
        print(
            f"note: {tars_left_out} tars with {left_out} are left out of {base}.wids.json (wids cannot skip a sample)",
            file=sys.stderr,
        )
    if args.energon:
        listed, readmitted = write_energon(args.dataset_path, scans, image_ids)
        print(f"energon: {listed} shards indexed in {storage.join(args.dataset_path, '.nv-meta')}", file=sys.stderr)
        if readmitted:
            print(f"note: {readmitted} samples the previous split.yaml excluded (a vdp-dedup --energon run?) are "
                  "included again; rerun vdp-dedup --energon to exclude its duplicates", file=sys.stderr)  # fmt: skip


def final_paths(args: argparse.Namespace, tars: list[str]) -> list[str]:
    """Every file this run writes: the indexes and errors file, with --energon its metadata and each tar's .idx."""
    base = storage.join(args.output, args.dataset_name)
    paths = [base + ".pkl", base + ".wids.json", base + ".errors.jsonl"]
    if args.energon:
        paths += [storage.join(args.dataset_path, rel) for rel in energon_files([], ImageTokenIds.after_vocab(32000))] + [t + ".idx" for t in tars]
    return paths


@reports_command_errors("index/main.py")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tars, options = prepare_scan(args, args.output, deep=args.deep)
    summary = summary_path(args.output, f"index-{args.dataset_name}")  # OUT/summary-index-NAME.json
    remove_stale_partials([*final_paths(args, tars), summary])  # what killed runs left
    run = run_scan(tars, options, context_of(args), args.timeout, progress=not args.no_progress)
    write_indexes(args, run.scans, options.check.image_ids)
    errors = storage.join(args.output, f"{args.dataset_name}.errors.jsonl")
    return finish(run, "index", errors, summary_path=summary, about=run_about(args, argv))

