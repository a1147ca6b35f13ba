"""Run one function over many items in worker processes, yielding results in input order.

A worker that hangs or crashes must not hang or kill the run: each call runs under an alarm
(`timeout` seconds), and the parent's watchdog kills a worker the alarm cannot stop (a native
hang holding the GIL) `grace` seconds later. Every worker has a pipe of its own and holds one
item at a time, so a worker that dies (a segfault, the OOM killer) or is killed costs exactly
the item it held; the others carry on.

Nothing here runs on a thread: the parent's main thread hands out items, reads answers and
starts, kills and reaps workers, so every pipe is closed by the thread that uses it, and
nothing of a pool outlives `map_ordered`. concurrent.futures.ProcessPoolExecutor, used before,
tears its pipes down on a manager thread after its workers are killed; at interpreter exit its
hook wrote to a pipe that thread was closing (CPython 3.11 `_python_exit` calls
`_ThreadWakeup.wakeup()` without the lock), ending a finished run with
`OSError: [Errno 9] Bad file descriptor`, and a worker killed in the middle of sending a result
left that thread blocked forever, hanging the exit.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

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
    try:
        signal.alarm(max(1, math.ceil(timeout)))
        try:
            return fn(item)
        finally:
            signal.alarm(0)
    except _Alarm:  # also an alarm that fired just as fn returned: it must not escape as a bug
        return WorkFailure(f"timeout: no result after {timeout:g}s")


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

    A parent killed outright (SIGKILL, the OOM killer) runs no clean-up, and its workers
    would wait for work forever.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up is all there is
    if os.getppid() == 1:  # the parent died before the request took hold
        os._exit(1)


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


def forks_workers() -> bool:
    """Whether workers started now are forks of this process (and so inherit its state)."""
    return _start_method() == "fork"


# --- the worker side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raised:
    """What `fn` or the initializer raised in a worker: a bug, raised again in the parent."""

    error: BaseException
    trace: str


class RemoteTraceback(Exception):
    """The worker's traceback, chained to the exception the parent raises again."""

    def __str__(self) -> str:
        return self.args[0]


def _raised(e: BaseException) -> _Raised:
    trace = "".join(traceback.format_exception(e))
    try:
        pickle.dumps(e)
    except Exception:  # noqa: BLE001 - an exception that does not pickle still has to reach the parent
        e = RuntimeError(f"{type(e).__name__}: {e}")
    return _Raised(e, trace)


def _initialize(initializer: Callable | None, initargs: tuple) -> _Raised | None:
    try:
        if initializer is not None:
            initializer(*initargs)
    except BaseException as e:  # noqa: BLE001 - answered for every item instead of dying unexplained
        return _raised(e)
    return None


def _answer(fn: Callable, item, timeout: float) -> bytes:
    try:
        answer = call_with_alarm(fn, item, timeout)
    except BaseException as e:  # noqa: BLE001 - a bug in fn: the parent raises it
        answer = _raised(e)
    try:
        return pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - a result that does not pickle is fn's bug too
        return pickle.dumps(_raised(e), pickle.HIGHEST_PROTOCOL)


def _serve(conn: Connection, fn: Callable, timeout: float, initializer: Callable | None, initargs: tuple) -> None:
    """A worker's life: an item in, its answer out, until the parent closes the pipe."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    failed = _initialize(initializer, initargs)
    failed_bytes = pickle.dumps(failed, pickle.HIGHEST_PROTOCOL) if failed else b""
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        conn.send_bytes(failed_bytes or _answer(fn, item, timeout))


# --- the parent side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    fn: Callable
    timeout: float
    initializer: Callable | None
    initargs: tuple


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection  # the parent's end of the worker's own pipe
    index: int = -1  # the item it holds; -1 when idle
    deadline: float = math.inf  # when the watchdog kills it


def _start_worker(task: _Task) -> _Worker:
    _single_threaded_opencv()
    ctx = mp.get_context(_start_method())
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(theirs, task.fn, task.timeout, task.initializer, task.initargs),
                          daemon=True)  # daemonic: stopped by multiprocessing's exit hook if ever left running
    process.start()
    theirs.close()  # only the worker holds its end now: its death reads as the end of the pipe
    return _Worker(process, mine)


def _stop_worker(worker: _Worker) -> None:
    """Kill, reap and close; a worker stuck in the kernel (D state) is left to be reaped later."""
    worker.process.kill()
    worker.process.join(5)
    worker.conn.close()
    if worker.process.exitcode is not None:
        worker.process.close()


def _death(worker: _Worker) -> str:
    """How the worker ended: "killed by SIGKILL", "exit status 1"."""
    worker.process.join(5)
    code = worker.process.exitcode
    if code is None:
        return "its pipe closed"
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


class _Crew:
    """The worker processes of one `map_ordered` call."""

    def __init__(self, count: int, task: _Task, hang: float) -> None:
        self.task, self.hang = task, hang
        self.workers: list[_Worker] = []
        try:
            for _ in range(count):
                self.workers.append(_start_worker(task))
        except BaseException:  # a fork that failed must not leave the ones before it running
            self.close()
            raise

    def idle(self) -> _Worker | None:
        return next((w for w in self.workers if w.index < 0), None)

    def assign(self, worker: _Worker, index: int, item) -> None:
        try:
            worker.conn.send(item)
        except OSError:  # it died while idle (killed from outside): a fresh one takes the item
            worker = self._fresh(worker)
            worker.conn.send(item)
        worker.index, worker.deadline = index, time.monotonic() + self.hang

    def collect(self) -> dict[int, object]:
        """Wait for at least one busy worker to answer, die or overrun; {item index: answer}."""
        busy = [w for w in self.workers if w.index >= 0]
        left = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], left))
        now = time.monotonic()
        due = [w for w in busy if ready & {w.conn, w.process.sentinel} or now >= w.deadline]
        return {w.index: self._outcome(w, ready) for w in due}

    def _outcome(self, worker: _Worker, ready: set):
        """The worker's answer, or a WorkFailure after which it is replaced by a fresh one."""
        if worker.conn in ready:
            try:
                answer = pickle.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):  # it died before or while sending
                return self._replace(worker, f"crash: the worker process died ({_death(worker)})")
            if isinstance(answer, _Raised):
                answer.error.__cause__ = RemoteTraceback(answer.trace)
                raise answer.error
            worker.index, worker.deadline = -1, math.inf
            return answer
        if worker.process.sentinel in ready:  # it exited (it may not be reapable for a moment yet)
            return self._replace(worker, f"crash: the worker process died ({_death(worker)})")
        return self._replace(worker, f"timeout: worker hung for {self.hang:g}s and was killed")

    def _replace(self, worker: _Worker, reason: str) -> WorkFailure:
        self._fresh(worker)
        return WorkFailure(reason)

    def _fresh(self, worker: _Worker) -> _Worker:
        """A new worker in `worker`'s place, which is killed and reaped first."""
        at = self.workers.index(worker)
        _stop_worker(self.workers.pop(at))
        self.workers.insert(at, _start_worker(self.task))
        return self.workers[at]

    def close(self) -> None:
        for worker in self.workers:
            _stop_worker(worker)
        self.workers.clear()


def map_ordered(
    fn: Callable,
    items: Iterable,
    workers: int,
    timeout: float = 600.0,
    initializer: Callable | None = None,
    initargs: tuple = (),
    grace: float = 10.0,
) -> Iterator:
    """Yield fn(item) for each item, in input order; a WorkFailure where the worker hung or died.

    `fn` and the items must pickle; expected per-item failures are `fn`'s own business (it
    returns them), so anything `fn` (or `initializer`) raises is a bug and is raised here.
    Items are pulled lazily, at most 2 x `workers` ahead of the one yielded last. A worker
    still busy `grace` seconds after its item's `timeout` is killed.
    """
    # The workers are forked before the first item is pulled: a prefetching source starts its
    # threads then, and a fork beside running threads can copy a lock one of them holds.
    crew = _Crew(workers, _Task(fn, timeout, initializer, initargs), timeout + grace)
    try:
        yield from _in_order(crew, iter(items), max(2, 2 * workers))
    finally:
        crew.close()


def _in_order(crew: _Crew, source: Iterator, window: int) -> Iterator:
    results: dict[int, object] = {}
    pulled = yielded = 0
    exhausted = False
    while True:
        while not exhausted and pulled - yielded < window and (worker := crew.idle()) is not None:
            item = next(source, _END)
            if item is _END:
                exhausted = True
                break
            crew.assign(worker, pulled, item)
            pulled += 1
        if yielded in results:  # one at a time: idle workers get new items before the consumer runs again
            yield results.pop(yielded)
            yielded += 1
        elif exhausted and yielded == pulled:
            return
        else:
            results.update(crew.collect())
