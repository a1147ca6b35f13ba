"""What this machine allows two workers at the moment: the two-process speed-up of a pure-CPU loop.

2.0 on two free cores, less when something else runs on them (other jobs, a busy host). A
bench prints it beside its own w2/w1 ratio so load can be told from a fault of ours.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time


def _spin(rounds: int) -> None:
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha1(digest).digest()


def spin_seconds(jobs: int, rounds: int = 1_500_000) -> float:
    """Wall seconds for `jobs` processes to each run the same pure-CPU loop at once."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_spin, args=(rounds,)) for _ in range(jobs)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return time.perf_counter() - start


def cpu_ceiling(one: float, two: float) -> float:
    """The speed-up two processes get: `one` and `two` are spin_seconds(1) and spin_seconds(2)."""
    return 2 * one / two
