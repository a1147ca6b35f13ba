"""Stage 3 run shared by vdp-index and vdp-check-pair: the parallel scan and the summary.

The scan is one `scan_tar` per tar, in the worker pool or as Ray tasks (vdp.run.runner), results
in sorted tar order, so the errors file, the indexes and the dump are the same for any number of workers and
either executor. Tars may be local or on s3:// / oss:// (vdp.io.storage).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from vdp.errors import UsageError, reason_counts
from vdp.index.scan import ExtraCheck, ScanOptions, TarScan, error_row, scan_tar, shard_name
from vdp.io import storage
from vdp.io.shards import list_tars
from vdp.io.tario import write_errors_file
from vdp.run.accounting import source_totals
from vdp.run.pool import WorkFailure
from vdp.run.progress import Stopwatch, print_summary, progress_bar
from vdp.run.runner import RunContext, Work, run_units

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
class ScanJob:
    """What each tar's scan needs besides its path; pickles to pool workers and Ray tasks alike."""

    options: ScanOptions
    make_extra: Callable[..., ExtraCheck] | None = None  # builds check_pair's decoder where the scan runs
    extra_args: tuple = ()


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
    """Worker initializer: the job once per worker, and check_pair's decoder built there.

    OpenCV's thread count is deliberately not touched here: in a child forked after the parent
    ran OpenCV, cv2.setNumThreads waits forever on the parent's (absent) thread pool.
    """
    global _JOB
    _JOB = job
    _extra(job)


def _scan_in_worker(path: str) -> TarScan:
    return scan_tar(path, _JOB.options, _extra(_JOB))


def _size_or_zero(path: str) -> int:
    try:
        return storage.size(path)
    except Exception:  # the size only feeds the MB total of a tar already reported as failed
        return 0


def _as_scan(root: str, path: str, results: Iterator[TarScan | WorkFailure]) -> TarScan:
    """A worker's result, or a broken-tar scan carrying the reason its worker hung or died."""
    result = next(results)
    if not isinstance(result, WorkFailure):
        return result
    scan = TarScan(path, shard_name(path, root), size=_size_or_zero(path), broken=True)
    scan.errors.append(error_row(path, "", result.reason))
    return scan


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
    context: RunContext,
    timeout: float,
    make_extra: Callable[..., ExtraCheck] | None = None,
    extra_args: tuple = (),
    progress: bool = True,
) -> ScanRun:
    """Scan every tar; the scans come back in the order of `tars`, whatever the executor."""
    clock = Stopwatch()
    job = ScanJob(options, make_extra, extra_args)
    work = Work(_scan_in_worker, timeout, init_worker, (job,), combine=partial(_as_scan, options.root))
    bar = _Progress(len(tars), clock, progress)
    scans = list(run_units(work, tars, context, lambda path, scan: bar.done(scan)))
    bar.close()
    return ScanRun(scans, clock.seconds)


def scan_totals(run: ScanRun) -> dict:
    """The scan's totals; stage-1 tars with stats beside them add source_records, source_errors
    and source_filtered: records that never reached a tar are known only there."""
    return {**run.totals(), **source_totals([s.path for s in run.scans])}


def finish(
    run: ScanRun,
    title: str,
    errors_path: str,
    totals: dict | None = None,
    summary_path: str | None = None,
    about: dict | None = None,
) -> int:
    """Errors file, summary on stdout (`totals`, default scan_totals(run)) and in `summary_path`,
    bad tars on stderr; the exit status (0 clean, 1 anything bad)."""
    write_errors_file(errors_path, run.errors)
    totals = scan_totals(run) if totals is None else totals
    print_summary(title, totals, run.reasons(), save_to=summary_path, about=about)
    bad = run.bad_tars
    if not bad:
        return 0
    names = [f"{s.path} ({'unreadable to its end' if s.broken else f'{len(s.errors)} bad samples'})" for s in bad]
    more = f"\n  ... and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    print(
        f"bad tars ({len(bad)}), reasons in {errors_path}:\n  " + "\n  ".join(names[:MAX_NAMED]) + more, file=sys.stderr
    )
    return 1
