"""The one runner every stage uses: units of work on the process pool or on Ray, results in unit order.

A unit is what a stage resumes and writes atomically (a tar, a group of tars). It is made of
items, what one worker handles under one alarm: pack's items are a tar's records, and the
other stages' units are their own single item. On the pool the items of all units flow
through `map_ordered` and each unit's result is combined here from its items' results; on Ray
one task runs a whole unit, the same item function under the same alarm followed by the same
combine, so both executors write the same bytes. A unit whose Ray task failed (crash, lost
node, deadline, a store fault it returned) is run again here, behind the pool's crash
isolation.

What every process running units must set up (the S3 endpoint, plugin files) travels once, in
the RunContext, and is applied once per pool worker or Ray worker process, not per unit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vdp.io import storage
from vdp.plugins import import_plugin
from vdp.run.pool import WorkFailure, call_with_alarm, forks_workers, map_ordered
from vdp.run.ray import ray_map_units

RAY_GRACE = 60.0  # seconds past a unit's alarms before its Ray task counts as hung


@dataclass(frozen=True)
class RunContext:
    """Where units run, and the settings every process running them applies first."""

    executor: str = "pool"  # "pool": worker processes here; "ray": one task per unit
    workers: int = 1
    ray_address: str | None = None  # None: a local Ray
    s3_endpoint: str | None = None
    plugins: tuple[str, ...] = ()  # files registering the run's own datasets and samplers

    def apply(self) -> None:
        """Configure this process: a Ray worker is a fresh program, and a fork server's child too."""
        storage.configure(self.s3_endpoint)
        for path in self.plugins:
            import_plugin(path)


def _alone(unit: Any) -> Sequence:
    return [unit]


def _only(unit: Any, results: Iterator) -> Any:
    return next(results)


@dataclass(frozen=True)
class Work:
    """A stage's work, sent to every pool worker and Ray task: its functions must pickle."""

    fn: Callable[[Any], Any]  # one item, in a worker, under the alarm; a WorkFailure stands in when it hangs or dies
    timeout: float  # seconds one item may take
    init: Callable[..., None] | None = None  # once per worker process (options, a tokenizer)
    init_args: tuple = ()
    items: Callable[[Any], Sequence] = _alone  # a unit's items, in order
    combine: Callable[[Any, Iterator], Any] = _only  # a unit's result from its items' results, pulled in order

    def deadline(self, unit: Any) -> float:
        """Seconds a Ray task may run: the alarms of its items, then a grace for a hang they cannot end."""
        return len(self.items(unit)) * self.timeout + RAY_GRACE


Progress = Callable[[Any, Any], None]  # (unit, its result), as each unit finishes


def run_units(
    work: Work,
    units: Sequence,
    context: RunContext,
    progress: Progress | None = None,
    feed: Callable[[Iterable], Iterable] | None = None,
) -> Iterator:
    """Yield each unit's result, in unit order, on the pool or Ray as `context` says.

    `feed` transforms the item stream in the pool's parent (pack fetches remote videos ahead).
    """
    if context.executor == "ray":
        yield from _on_ray(work, units, context, progress, feed)
        return
    for unit, result in zip(units, _on_pool(work, units, context, feed)):
        _report(progress, unit, result)
        yield result


def _report(progress: Progress | None, unit: Any, result: Any) -> None:
    if progress is not None:
        progress(unit, result)


def _prepare(context: RunContext | None, init: Callable[..., None] | None, init_args: tuple) -> None:
    """A worker's set-up: the context (None: inherited by fork), then the stage's init."""
    if context is not None:
        context.apply()
    if init is not None:
        init(*init_args)


def _on_pool(work: Work, units: Sequence, context: RunContext, feed: Callable | None = None) -> Iterator:
    """Each unit's result, in order; the items of all units share one pool."""
    items: Iterable = (item for unit in units for item in work.items(unit))
    # A forked worker has the parent's settings already, and applying them again would drop the
    # storage connections it inherited, whose finalizers then close sockets the parent still uses
    # (a parent's S3 upload hung so). A fork server's child starts without them.
    applied = None if forks_workers() else context
    results = map_ordered(work.fn, feed(items) if feed else items, context.workers, work.timeout,
                          _prepare, (applied, work.init, work.init_args))
    try:
        for unit in units:
            yield work.combine(unit, results)
    finally:
        results.close()  # stops the workers now, not when the generator is collected


@dataclass(frozen=True)
class _RayCall:
    """One unit as a Ray task's argument."""

    work: Work
    context: RunContext
    unit: Any


def _deadline(call: _RayCall) -> float:
    return call.work.deadline(call.unit)


_PREPARED: tuple | None = None  # (context, init, init_args) this Ray worker process last applied


def _prepare_once(call: _RayCall) -> None:
    """Apply the context and the stage's init once per Ray worker process (it runs many tasks)."""
    global _PREPARED
    key = (call.context, call.work.init, call.work.init_args)
    if _PREPARED == key:
        return
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:  # a Ray worker is started as a new program, never forked: this is safe here
        cv2.setNumThreads(1)
    _prepare(*key)
    _PREPARED = key


def _ray_unit(call: _RayCall) -> Any:
    """A Ray task: the pool's item function under the same alarm, then the same combine."""
    _prepare_once(call)
    work = call.work
    results = (call_with_alarm(work.fn, item, work.timeout) for item in work.items(call.unit))
    return work.combine(call.unit, results)


def _on_ray(work: Work, units: Sequence, context: RunContext, progress: Progress | None, feed: Callable | None) -> list:
    """Every unit's result in unit order: one Ray task per unit, a failed one run again in the pool."""
    calls = [_RayCall(work, context, unit) for unit in units]
    results: list = [None] * len(units)
    failed: list[int] = []
    for index, result in ray_map_units(_ray_unit, calls, context.workers, context.ray_address, _deadline):
        if isinstance(result, WorkFailure):
            failed.append(index)
            continue
        results[index] = result
        _report(progress, units[index], result)
    failed.sort()
    if failed:  # the pool starts its workers even for no units
        for index, result in zip(failed, _on_pool(work, [units[i] for i in failed], context, feed)):
            results[index] = result
            _report(progress, units[index], result)
    return results
