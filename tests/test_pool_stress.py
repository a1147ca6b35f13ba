"""The worker pool's failure modes under CPU load: workers that SIGKILL themselves, segfault, sleep
past the timeout or hang where the alarm cannot reach, at random (seeded). Every run must end,
with one result per item in input order (the culprit's a WorkFailure with the right reason), the
right exit status, and nothing of the pool left: no process, no thread, no open file (a pool
torn down on a thread after its run was how a finished `pack.py` ended in
`OSError: [Errno 9] Bad file descriptor` at exit). bench/pool_soak.py runs the same for longer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from tests.pool_chaos import GRACE, REASONS, TIMEOUT, Chaos, misbehave, plan, problems
from vdp.run.pool import RemoteTraceback, WorkFailure, map_ordered

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spin() -> None:
    while True:
        pass


@pytest.fixture(scope="module")
def busy_cores():
    """Two processes burning CPU for the whole module, as other jobs on a shared machine would."""
    burners = [mp.get_context("fork").Process(target=spin, daemon=True) for _ in range(2)]
    for b in burners:
        b.start()
    yield
    for b in burners:
        b.kill()
        b.join()


def state() -> tuple:
    """The children, threads and open files of this process."""
    return set(mp.active_children()), threading.active_count(), set(os.listdir("/proc/self/fd"))


def leftovers(before: tuple) -> list[str]:
    """What of a pool is still there the moment map_ordered is done: nothing may be left to finish later."""
    children, threads, fds = state()
    found = [f"processes {children - before[0]}"] if children - before[0] else []
    found += [f"threads {threading.enumerate()}"] if threads != before[1] else []
    return found + ([f"open files {sorted(fds - before[2])}"] if fds - before[2] else [])


def test_random_crashes_hangs_and_timeouts_cost_only_their_items(busy_cores):
    rng = random.Random(20261129)
    kinds = set()
    start = time.time()
    for run in range(12):
        items = plan(rng, 10)
        kinds |= {i.kind for i in items}
        before = state()
        results = []
        for out in map_ordered(misbehave, items, workers=2, timeout=TIMEOUT, grace=GRACE):
            results.append(out)
            assert threading.active_count() == before[1], "the pool runs a thread: forks would happen beside it"
        assert problems(items, results) == [], f"run {run}"
        assert leftovers(before) == [], f"run {run} left part of its pool behind"
    assert kinds == {"ok", "slow", "kill", "segv", "sleep", "native"}, "the seed should try every failure"
    assert time.time() - start < 45


def test_every_run_ends_with_its_summary_and_exit_status(busy_cores):
    """As commands: each run its own process, two at a time; the exit is part of the test."""
    script = os.path.join(ROOT, "tests", "pool_chaos.py")
    fails = {s: any(i.kind in REASONS for i in plan(random.Random(s), 8)) for s in range(500)}
    seeds = [s for s in fails if not fails[s]][:3] + [s for s in fails if fails[s]][:9]  # clean runs and failing ones
    expected = {s: 1 if fails[s] else 0 for s in seeds}
    for pair in zip(seeds[::2], seeds[1::2]):
        procs = {s: subprocess.Popen([sys.executable, script, str(s), "8"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for s in pair}  # fmt: skip
        for seed, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == expected[seed], (seed, out, err)
            assert out.startswith("summary: items=8 ") and "wrong=0" in out, (seed, out)
            assert err == "", f"seed {seed} printed on its way out:\n{err}"


def test_a_hung_item_does_not_make_the_pool_pull_everything(busy_cores):
    """Items are pulled at most 2 x workers ahead of the one yielded last, also behind a hang."""
    pulled = []

    def source():
        for i in range(30):
            pulled.append(i)
            yield Chaos(i, "native" if i == 0 else "ok")

    ahead = []
    for i, out in enumerate(map_ordered(misbehave, source(), workers=2, timeout=TIMEOUT, grace=GRACE)):
        ahead.append(len(pulled) - i)
        assert isinstance(out, WorkFailure) if i == 0 else out == 3 * i
    assert max(ahead) <= 4


def fails(x: int) -> int:
    if x == 3:
        raise ValueError("a bug in fn")
    return x


def bad_initializer() -> None:
    raise RuntimeError("cannot start")


def test_a_bug_in_fn_is_raised_with_the_workers_traceback_and_stops_the_pool():
    before = state()
    with pytest.raises(ValueError, match="a bug in fn") as caught:
        list(map_ordered(fails, range(8), workers=2))
    assert isinstance(caught.value.__cause__, RemoteTraceback) and "in fails" in str(caught.value.__cause__)
    assert leftovers(before) == []


def test_a_failing_initializer_is_raised():
    with pytest.raises(RuntimeError, match="cannot start"):
        list(map_ordered(fails, range(4), workers=2, initializer=bad_initializer))


def test_a_generator_left_early_stops_its_workers():
    before = state()
    results = map_ordered(misbehave, [Chaos(i, "slow") for i in range(20)], workers=2)
    assert [next(results) for _ in range(3)] == [0, 3, 6]
    results.close()  # a consumer that stops (an output error, Ctrl-C) while items are in flight
    assert leftovers(before) == []
