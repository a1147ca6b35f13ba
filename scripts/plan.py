#!/usr/bin/env python
"""Print which records and tars each machine takes, so one machine's share can be rerun alone.

examples:
  python scripts/plan.py --dataset jsonl --manifest clips.jsonl --total_machine 4
  python scripts/plan.py --dataset webvid --manifest results.csv --total_machine 100 --machine_id 17 --tars
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from loaders import LOADERS  # noqa: E402
from vdp.plan import machine_range, plan_tars  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="jsonl", choices=sorted(LOADERS))
    p.add_argument("--manifest", required=True)
    p.add_argument("--total_machine", type=int, default=1)
    p.add_argument("--machine_id", type=int, default=None, help="only this machine")
    p.add_argument("--samples_per_tar", type=int, default=500)
    p.add_argument("--tars", action="store_true", help="list every tar name too")
    a = p.parse_args(argv)
    if a.total_machine < 1 or (a.machine_id is not None and not 0 <= a.machine_id < a.total_machine):
        p.error("--machine_id must be in 0..total_machine-1")
    if not os.path.isfile(a.manifest):
        p.error(f"manifest not found: {a.manifest}")
    count = sum(1 for _ in LOADERS[a.dataset](a.manifest))
    print(f"{count} records, {a.total_machine} machines, {a.samples_per_tar} samples per tar")
    machines = range(a.total_machine) if a.machine_id is None else [a.machine_id]
    for m in machines:
        lo, hi = machine_range(count, m, a.total_machine)
        tars = plan_tars(lo, hi, a.samples_per_tar, m)
        print(f"machine {m}: records [{lo}, {hi}), {len(tars)} tars; rerun alone with"
              f" --machine_id {m} --total_machine {a.total_machine}")
        if a.tars:
            for t in tars:
                print(f"  {t.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
