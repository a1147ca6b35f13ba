#!/usr/bin/env python
"""Print which records (stage 1) or tars (stage 2) each machine takes, so one machine's share can be rerun alone.

examples:
  # stage 1, pack.py: records and tars per machine
  python scripts/plan.py --dataset jsonl --manifest clips.jsonl --total_machine 4
  python scripts/plan.py --dataset webvid --manifest results.csv --total_machine 100 --machine_id 17 --tars

  # stage 2, tokenize/main.py: the input tars of every output shard, per machine
  python scripts/plan.py --dataset_path /data/un --shard_size 10 --end 800 --total_machine 8 --tars
  python scripts/plan.py --dataset_path s3://bucket/un --shard_size 10 --machine_id 3 --total_machine 8 --tars
"""

from __future__ import annotations

import argparse
import os
import sys

import vdp.pack.datasets  # noqa: F401 (registers the datasets)
from vdp.io import storage
from vdp.pack.manifest import LOADERS, Manifest
from vdp.pack.plan import machine_range, plan_tars
from vdp.tokenize.stage import list_input_tars, plan_groups, tar_range


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="stage 1: pack.py's annotation file")
    src.add_argument("--dataset_path", help="stage 2: tokenize/main.py's folder (or s3:// / oss:// prefix) of tars")
    p.add_argument("--dataset", default="jsonl", choices=sorted(LOADERS), help="stage 1: annotation format")
    p.add_argument("--total_machine", type=int, default=1)
    p.add_argument("--machine_id", type=int, default=None, help="only this machine")
    p.add_argument("--samples_per_tar", type=int, default=500, help="stage 1")
    p.add_argument("--shard_size", type=int, default=50, help="stage 2: input tars per output shard")
    p.add_argument("--start", type=int, default=0, help="stage 2: first tar of the sorted list")
    p.add_argument("--end", type=int, default=None, help="stage 2: tar to stop before (default: all)")
    p.add_argument("--s3_endpoint", default=None, help="stage 2: S3-compatible endpoint URL")
    p.add_argument("--tars", action="store_true", help="list every tar too (stage 2: each shard's input tars)")
    return p


def print_stage1(a: argparse.Namespace, machines: list[int]) -> None:
    count = Manifest(a.manifest, LOADERS[a.dataset]).index().total
    print(f"{count} records, {a.total_machine} machines, {a.samples_per_tar} samples per tar")
    for m in machines:
        lo, hi = machine_range(count, m, a.total_machine)
        tars = plan_tars(lo, hi, a.samples_per_tar, m)
        print(
            f"machine {m}: records [{lo}, {hi}), {len(tars)} tars; rerun alone with"
            f" --machine_id {m} --total_machine {a.total_machine}"
        )
        if a.tars:
            for t in tars:
                print(f"  {t.name}")


def print_stage2(a: argparse.Namespace, machines: list[int]) -> None:
    tars = list_input_tars(a.dataset_path)
    lo, hi = tar_range(len(tars), a.start, a.end, a.shard_size)
    print(f"{len(tars)} tars, [{lo}, {hi}) taken, {a.shard_size} tars per output shard, {a.total_machine} machines")
    for m in machines:
        start, end = tar_range(len(tars), a.start, a.end, a.shard_size, m, a.total_machine)
        jobs = plan_groups(tars, a.dataset_path, start, end, a.shard_size, f"{start}-{end}")
        print(
            f"machine {m}: tars [{start}, {end}) -> SAVE_PATH/{start}-{end}/, {len(jobs)} shards; rerun alone with"
            f" --machine_id {m} --total_machine {a.total_machine}"
        )
        if a.tars:
            for job in jobs:
                span = f"[{job.first_tar}, {job.first_tar + len(job.tars)})"
                print(f"  shard_{job.index}.tar <- tars {span}: {' '.join(job.names)}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.total_machine < 1 or (a.machine_id is not None and not 0 <= a.machine_id < a.total_machine):
        p.error("--machine_id must be in 0..total_machine-1")
    machines = list(range(a.total_machine)) if a.machine_id is None else [a.machine_id]
    if a.manifest is not None:
        if not os.path.isfile(a.manifest):
            p.error(f"manifest not found: {a.manifest}")
        print_stage1(a, machines)
        return 0
    if a.shard_size < 1 or a.start < 0:
        p.error("--shard_size must be at least 1 and --start at least 0")
    storage.configure(a.s3_endpoint)
    if not storage.is_remote(a.dataset_path) and not os.path.isdir(a.dataset_path):
        p.error(f"--dataset_path is not a folder: {a.dataset_path}")
    print_stage2(a, machines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
