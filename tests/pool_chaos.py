"""Items that make a pool worker misbehave on purpose: for the pool's stress test and bench/pool_soak.py.

Each item says what its worker does: answer, answer slowly, SIGKILL itself (as the OOM killer
would), segfault in native code, sleep past the timeout (the alarm ends it), or hang with the
alarm signal blocked (as native code holding the GIL would; only the parent's watchdog ends it).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

# kind -> weight of a random item; the reason a failed one must carry
WEIGHTS = {"ok": 60, "slow": 10, "kill": 10, "segv": 4, "sleep": 10, "native": 6}
REASONS = {"kill": "crash: ", "segv": "crash: ", "sleep": "timeout: no result", "native": "timeout: worker hung"}
TIMEOUT, GRACE = 1.0, 0.5  # seconds: an alarm after 1 s, the watchdog 0.5 s later


@dataclass(frozen=True)
class Chaos:
    index: int
    kind: str


def misbehave(item: Chaos) -> int:
    """The pool's `fn`: do what the item says; an item that survives answers index * 3."""
    if item.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if item.kind == "segv":
        ctypes.string_at(0)  # a read of address 0: SIGSEGV in native code
    if item.kind == "sleep":
        time.sleep(60)
    if item.kind == "native":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    if item.kind == "slow":
        time.sleep(0.05)
    return item.index * 3


def plan(rng: random.Random, count: int) -> list[Chaos]:
    kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=count)
    return [Chaos(i, kind) for i, kind in enumerate(kinds)]


def problems(items: list[Chaos], results: list) -> list[str]:
    """What is wrong with `results` for `items` (in order, one each, the right value or reason)."""
    from vdp.run.pool import WorkFailure

    if len(results) != len(items):
        return [f"{len(results)} results for {len(items)} items"]
    wrong = []
    for item, out in zip(items, results):
        if item.kind in REASONS:
            ok = isinstance(out, WorkFailure) and out.reason.startswith(REASONS[item.kind])
        else:
            ok = out == item.index * 3
        if not ok:
            wrong.append(f"item {item.index} ({item.kind}): {out!r}")
    return wrong


def main(seed: int, count: int) -> int:
    """A command's life in small: run the items, print a summary, exit 1 when some failed.

    `python tests/pool_chaos.py SEED COUNT` from the repo root; the stress test and the soak
    bench run it as a process of its own, to see how each run ends (its exit status, and
    nothing printed by the interpreter's exit).
    """
    from vdp.run.pool import WorkFailure, map_ordered

    items = plan(random.Random(seed), count)
    results = map_ordered(misbehave, items, workers=2, timeout=TIMEOUT, grace=GRACE)
    got = [next(results) for _ in items]  # as the stages do: the generator is left, not exhausted
    wrong = problems(items, got)
    failed = sum(isinstance(r, WorkFailure) for r in got)
    print(f"summary: items={len(items)} failed={failed} wrong={len(wrong)}", flush=True)
    return 2 if wrong else 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
