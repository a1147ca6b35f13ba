#!/usr/bin/env python
"""A long soak of the worker pool's failure modes under CPU load (issue 10: the EBADF race).

    .venv/bin/python bench/pool_soak.py                 # ~5 min on 2 cores; bench_out/pool_soak.json
    .venv/bin/python bench/pool_soak.py --runs 50 --exits 100 --load 2   # a shorter one

Two parts, with --load processes burning CPU the whole time:

  runs    --runs calls of vdp.run.pool.map_ordered in this process, --items items each (2 workers,
          1 s timeout, 0.5 s grace), every item seeded to answer, answer slowly, SIGKILL itself,
          segfault, sleep past the timeout or hang with SIGALRM blocked (tests/pool_chaos.py).
          Each run must give one result per item in order with the right reason, and leave no
          process, thread or open file behind.
  exits   --exits runs of `tests/pool_chaos.py SEED 8` as processes of their own, --parallel at
          a time: each must exit 0 (no failure) or 1 (some), print its summary, and print
          nothing else (the EBADF of the old pool was printed by the interpreter's exit).

Exit status 0 when every run was right, 1 otherwise; the counts go to bench_out/pool_soak.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = REPO  # not bench/: its tokenize.py would shadow the standard module

from tests.pool_chaos import GRACE, REASONS, TIMEOUT, misbehave, plan, problems  # noqa: E402
from vdp.run.pool import map_ordered  # noqa: E402


def spin() -> None:
    while True:
        pass


def pool_state() -> tuple:
    return set(mp.active_children()), threading.active_count(), set(os.listdir("/proc/self/fd"))


def soak_runs(runs: int, items: int, seed: int) -> dict:
    """In-process runs; the count of each item kind seen and every wrong outcome."""
    rng = random.Random(seed)
    kinds: Counter = Counter()
    wrong = []
    for run in range(runs):
        chosen = plan(rng, items)
        kinds.update(i.kind for i in chosen)
        before = pool_state()
        results = list(map_ordered(misbehave, chosen, workers=2, timeout=TIMEOUT, grace=GRACE))
        wrong += [f"run {run}: {p}" for p in problems(chosen, results)]
        after = pool_state()
        if after[0] - before[0] or after[1] != before[1] or after[2] - before[2]:
            wrong.append(f"run {run}: left processes, threads or open files behind")
    return {"runs": runs, "items": dict(kinds), "wrong": wrong}


def soak_exits(exits: int, parallel: int, seed: int) -> dict:
    """Runs as processes of their own: exit status, summary, and nothing else printed."""
    script = os.path.join(REPO, "tests", "pool_chaos.py")
    seeds = [seed * 100_000 + i for i in range(exits)]
    wrong, statuses = [], Counter()
    for at in range(0, exits, parallel):
        procs = {s: subprocess.Popen([sys.executable, script, str(s), "8"], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for s in seeds[at : at + parallel]}
        for s, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            expected = 1 if any(i.kind in REASONS for i in plan(random.Random(s), 8)) else 0
            statuses[proc.returncode] += 1
            if proc.returncode != expected or "wrong=0" not in out or err:
                wrong.append(f"seed {s}: exit {proc.returncode} (expected {expected}), out {out!r}, err {err!r}")
    return {"exits": exits, "statuses": dict(statuses), "wrong": wrong}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=150, help="in-process runs of map_ordered")
    p.add_argument("--items", type=int, default=10, help="items per in-process run")
    p.add_argument("--exits", type=int, default=300, help="runs as processes of their own")
    p.add_argument("--parallel", type=int, default=2, help="processes at a time")
    p.add_argument("--load", type=int, default=2, help="processes burning CPU meanwhile")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    burners = [mp.get_context("fork").Process(target=spin, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    clock = time.time()
    try:
        runs = soak_runs(args.runs, args.items, args.seed)
        runs_seconds = time.time() - clock
        exits = soak_exits(args.exits, args.parallel, args.seed)
    finally:
        for b in burners:
            b.kill()
            b.join()
    report = {"args": vars(args), "runs": runs, "runs_seconds": round(runs_seconds, 1), "exits": exits,
              "seconds": round(time.time() - clock, 1)}  # fmt: skip
    os.makedirs(os.path.join(REPO, "bench_out"), exist_ok=True)
    with open(os.path.join(REPO, "bench_out", "pool_soak.json"), "w") as f:
        json.dump(report, f, indent=2)
    bad = runs["wrong"] + exits["wrong"]
    print(f"runs: {args.runs} x {args.items} items {runs['items']} in {runs_seconds:.0f}s, {len(runs['wrong'])} wrong")
    print(f"exits: {args.exits} processes, statuses {exits['statuses']}, {len(exits['wrong'])} wrong")
    for line in bad[:20]:
        print("  " + line)
    print("PASS" if not bad else "FAIL")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
