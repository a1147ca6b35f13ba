"""Stage 3 run shared by vdp-index and vdp-check-pair: the parallel scan and the summary.

The scan is one `scan_tar` per tar, in the worker pool or as Ray tasks, results in sorted tar
order, so the errors file, the indexes and the dump are the same for any number of workers and
either executor. Tars may be local or on s3:// / oss:// (vdp.io.storage).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vdp.errors import UsageError, reason_counts
from vdp.index.scan import ExtraCheck, ScanOptions, TarScan, error_row, scan_tar, shard_name
from vdp.io import storage
from vdp.io.shards import list_tars
from vdp.io.tario import write_errors_file
from vdp.run.pool import WorkFailure, call_with_alarm, map_ordered
from vdp.run.progress import Stopwatch, print_summary, progress_bar
from vdp.run.ray import ray_map_units

MAX_NAMED = 50  # bad tars named on stderr; the errors file has them all


def find_tars(dataset_path: str) -> list[str]:
    """Every tar under the dataset folder or prefix, sorted."""
    if storage.is_remote(dataset_path):
        tars = _list_remote_tars(dataset_path)
    elif not os.path.isdir(dataset_path):
        raise UsageError(f"--dataset_path is not a folder: {dataset_path}")
    else:
        tars = list_tars(dataset_path)
    if not tars:
        raise UsageError(f"no .tar files under {dataset_path}")
    return tars


def _list_remote_tars(prefix: str) -> list[str]:
    try:
        return storage.list_files(prefix, ".tar")
    except Exception as e:  # a bucket, credential or endpoint problem: the user's to fix
        raise UsageError(f"cannot list {prefix}: {type(e).__name__}: {e}") from None


# --- the parallel scan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Executor:
    """Where the tars are scanned: `pool` (worker processes here) or `ray` (tasks, local Ray or a cluster)."""

    kind: str = "pool"
    ray_address: str | None = None
    s3_endpoint: str | None = None  # Ray tasks configure their own storage; pool workers inherit the parent's


@dataclass(frozen=True)
class ScanJob:
    """What each tar's scan needs besides its path; pickles to pool workers and Ray tasks alike."""

    options: ScanOptions
    timeout: float
    make_extra: Callable[..., ExtraCheck] | None = None  # builds check_pair's decoder where the scan runs
    extra_args: tuple = ()


@dataclass(frozen=True)
class ScanUnit:
    """One tar for a Ray task, with everything needed to scan it on any node."""

    path: str
    job: ScanJob
    s3_endpoint: str | None = None


_JOB: ScanJob | None = None
_EXTRAS: dict = {}  # (make_extra, extra_args) -> the extra check, built once per process


def _extra(job: ScanJob) -> ExtraCheck | None:
    """check_pair's extra check, built once per process: a tokenizer does not pickle, and a Ray
    worker process runs many tasks."""
    if job.make_extra is None:
        return None
    key = (job.make_extra, job.extra_args)
    if key not in _EXTRAS:
        _EXTRAS[key] = job.make_extra(*job.extra_args)
    return _EXTRAS[key]


def init_worker(job: ScanJob) -> None:
    """Pool initializer: the job once per worker, and check_pair's decoder built there.

    OpenCV's thread count is deliberately not touched here: in a child forked after the parent
    ran OpenCV, cv2.setNumThreads waits forever on the parent's (absent) thread pool.
    """
    global _JOB
    _JOB = job
    _extra(job)


def _scan_in_worker(path: str) -> TarScan:
    return scan_tar(path, _JOB.options, _extra(_JOB))


def scan_unit(unit: ScanUnit) -> TarScan:
    """A Ray task: the pool worker's code for one tar under the same alarm, so the same TarScan."""
    storage.configure(unit.s3_endpoint)
    job = unit.job
    result = call_with_alarm(lambda path: scan_tar(path, job.options, _extra(job)), unit.path, job.timeout)
    return _as_scan(unit.path, job.options.root, result)


def _size_or_zero(path: str) -> int:
    try:
        return storage.size(path)
    except Exception:  # the size only feeds the MB total of a tar already reported as failed
        return 0


def _as_scan(path: str, root: str, result: TarScan | WorkFailure) -> TarScan:
    """A worker's result, or a broken-tar scan carrying the reason its worker hung or died."""
    if not isinstance(result, WorkFailure):
        return result
    scan = TarScan(path, shard_name(path, root), size=_size_or_zero(path), broken=True)
    scan.errors.append(error_row(path, "", result.reason))
    return scan


def _in_pool(tars: list[str], job: ScanJob, workers: int) -> Iterator[TarScan | WorkFailure]:
    return map_ordered(_scan_in_worker, tars, workers, job.timeout, initializer=init_worker, initargs=(job,))


def _on_ray(tars: list[str], job: ScanJob, workers: int, executor: Executor, done: Callable) -> list[TarScan]:
    """One Ray task per tar; a tar whose task failed (crash, lost node, deadline) is scanned again here."""
    units = [ScanUnit(path, job, executor.s3_endpoint) for path in tars]
    scans: list = [None] * len(tars)
    failed: list[int] = []
    # The task's own alarm ends a slow scan at the timeout; the deadline catches a hang the alarm cannot.
    tasks = ray_map_units(scan_unit, units, workers, executor.ray_address, deadline=lambda u: u.job.timeout + 60)
    for index, result in tasks:
        if isinstance(result, WorkFailure):
            failed.append(index)
        else:
            scans[index] = done(result)
    if failed:
        failed.sort()
        again = _in_pool([tars[i] for i in failed], job, workers)
        for index, result in zip(failed, again):
            scans[index] = done(_as_scan(tars[index], job.options.root, result))
    return scans


class _Progress:
    """The progress bar, with the scan's MB/s so far."""

    def __init__(self, total: int, clock: Stopwatch, enabled: bool = True):
        self._bar = progress_bar(total, "tar", "scan", enabled)
        self._clock = clock
        self._bytes = 0

    def done(self, scan: TarScan) -> TarScan:
        self._bytes += scan.size
        self._bar.set_postfix_str(f"{self._bytes / 1e6 / max(self._clock.seconds, 1e-9):.0f} MB/s", refresh=False)
        self._bar.update(1)
        return scan

    def close(self) -> None:
        self._bar.close()


@dataclass
class ScanRun:
    scans: list[TarScan]
    seconds: float

    @property
    def errors(self) -> list[dict]:
        return [row for s in self.scans for row in s.errors]

    @property
    def bad_tars(self) -> list[TarScan]:
        return [s for s in self.scans if s.errors]

    def totals(self) -> dict:
        size = sum(s.size for s in self.scans)
        samples = sum(s.samples for s in self.scans)
        valid = sum(s.valid for s in self.scans)
        return {
            "tars": len(self.scans),
            "bad_tars": len(self.bad_tars),
            "samples": samples,
            "valid": valid,
            "indexed": sum(s.valid for s in self.scans if not s.broken),  # valid samples of tars that read to their end
            "bad_samples": samples - valid + sum(s.dropped for s in self.scans),
            "tokens": sum(s.tokens for s in self.scans),
            "images": sum(s.images for s in self.scans),
            "MB": size / 1e6,
            "seconds": self.seconds,
            "MB/s": size / 1e6 / max(self.seconds, 1e-9),
        }

    def reasons(self) -> Counter:
        return reason_counts(self.errors)


def run_scan(
    tars: list[str],
    options: ScanOptions,
    workers: int,
    timeout: float,
    make_extra: Callable[..., ExtraCheck] | None = None,
    extra_args: tuple = (),
    executor: Executor = Executor(),
    progress: bool = True,
) -> ScanRun:
    """Scan every tar; the scans come back in the order of `tars`, whatever the executor."""
    clock = Stopwatch()
    job = ScanJob(options, timeout, make_extra, extra_args)
    bar = _Progress(len(tars), clock, progress)
    if executor.kind == "ray":
        scans = _on_ray(tars, job, workers, executor, bar.done)
    else:
        results = _in_pool(tars, job, workers)
        scans = [bar.done(_as_scan(path, options.root, r)) for path, r in zip(tars, results)]
    bar.close()
    return ScanRun(scans, clock.seconds)


def finish(run: ScanRun, title: str, errors_path: str) -> int:
    """Errors file, summary on stdout, bad tars on stderr; the exit status (0 clean, 1 anything bad)."""
    write_errors_file(errors_path, run.errors)
    print_summary(title, run.totals(), run.reasons())
    bad = run.bad_tars
    if not bad:
        return 0
    names = [f"{s.path} ({'unreadable to its end' if s.broken else f'{len(s.errors)} bad samples'})" for s in bad]
    more = f"\n  ... and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    print(
        f"bad tars ({len(bad)}), reasons in {errors_path}:\n  " + "\n  ".join(names[:MAX_NAMED]) + more, file=sys.stderr
    )
    return 1
