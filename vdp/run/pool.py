"""Run one function over many items in worker processes, yielding results in input order.

A worker that hangs or crashes must not hang or kill the run: each call runs under an alarm
(`timeout` seconds), and a watchdog in the parent catches what the alarm cannot (a native
hang holding the GIL, a segfault). After such an event the items that were in flight are
retried one at a time in a fresh process, so only the culprit fails, with a reason.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

_END = object()


@dataclass(frozen=True)
class WorkFailure:
    """Stands in an item's place when its worker timed out or died."""

    reason: str


class _Alarm(Exception):
    pass


# What `call_with_alarm` raises inside `fn` when time is up: a catch-all in `fn` must let it pass.
TimeoutAlarm = _Alarm


def _on_alarm(signum, frame):
    raise _Alarm()


def call_with_alarm(fn: Callable, item, timeout: float):
    """fn(item), or a WorkFailure when it is still running after `timeout` seconds."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, math.ceil(timeout)))
    try:
        return fn(item)
    except _Alarm:
        return WorkFailure(f"timeout: no result after {timeout:g}s")
    finally:
        signal.alarm(0)


def _single_threaded_opencv() -> None:
    """OpenCV in one thread, set in the parent before forking.

    Each worker is one core's worth of work, so OpenCV's own threads would only oversubscribe.
    It must be set here: a forked child that calls cv2.setNumThreads after the parent ran
    OpenCV waits forever on the parent's thread pool, which did not come along.
    """
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when its parent dies.

    A parent killed outright (SIGKILL, the OOM killer) runs no clean-up, and its workers,
    each holding the others' end of the task pipe, would wait for work forever.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up is all there is
    if os.getppid() == 1:  # the parent died before the request took hold
        os._exit(1)


def _start_worker(initializer, initargs) -> None:
    _die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def _start_method() -> str:
    """fork, unless this process runs Ray: then a fork server's clean process is forked instead.

    fork starts workers in milliseconds with the decoder libraries already imported. But a
    process connected to Ray (the driver redoing a failed task's work here) has Ray's gRPC
    threads; a child forked from it can inherit a lock one of them held and wait on it
    forever (a test run hung so). The fork server was started without them.
    """
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return "forkserver"
    return "fork"


def _new_pool(workers: int, initializer, initargs) -> ProcessPoolExecutor:
    _single_threaded_opencv()
    return ProcessPoolExecutor(
        workers, mp_context=mp.get_context(_start_method()), initializer=_start_worker, initargs=(initializer, initargs)
    )


def _kill(pool: ProcessPoolExecutor) -> None:
    # The executor has no public way to stop a running task; its processes are killed directly.
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _run_alone(fn, item, timeout: float, initializer, initargs):
    pool = _new_pool(1, initializer, initargs)
    try:
        return pool.submit(call_with_alarm, fn, item, timeout).result(timeout=timeout + 10)
    except FutureTimeout:
        return WorkFailure(f"timeout: worker hung for {timeout + 10:g}s and was killed")
    except BrokenProcessPool:
        return WorkFailure("crash: the decoding process died")
    finally:
        _kill(pool)


def map_ordered(
    fn: Callable,
    items: Iterable,
    workers: int,
    timeout: float = 600.0,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> Iterator:
    """Yield fn(item) for each item, in input order; a WorkFailure where the worker hung or died.

    `fn` and the items must pickle; expected per-item failures are `fn`'s own business (it
    returns them), so anything `fn` raises is a bug and is raised here.
    """
    source = iter(items)  # pulled lazily: items may be fetched ahead by a generator upstream
    window = max(2, 2 * workers)
    grace = timeout + 10  # the alarm fires first; this catches what it cannot
    results: dict[int, object] = {}
    held: dict[int, object] = {}  # the items in flight, by index, for a retry after a crash
    inflight: dict = {}
    next_submit = next_yield = 0
    exhausted = False
    pool = _new_pool(workers, initializer, initargs)
    try:
        while True:
            while not exhausted and len(inflight) < window:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                    break
                held[next_submit] = item
                inflight[pool.submit(call_with_alarm, fn, item, timeout)] = next_submit
                next_submit += 1
            while next_yield in results:
                yield results.pop(next_yield)
                next_yield += 1
            if exhausted and next_yield == next_submit:
                return
            if not inflight:
                continue
            done, _ = wait(inflight, timeout=grace, return_when=FIRST_COMPLETED)
            broken = not done
            for fut in done:
                try:
                    index = inflight[fut]
                    results[index] = fut.result()
                    del inflight[fut], held[index]
                except BrokenProcessPool:
                    broken = True
            if broken:
                _kill(pool)
                for index in sorted(inflight.values()):
                    results[index] = _run_alone(fn, held.pop(index), timeout, initializer, initargs)
                inflight.clear()
                pool = _new_pool(workers, initializer, initargs)
    finally:
        _kill(pool)
