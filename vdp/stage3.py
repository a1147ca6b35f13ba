"""Stage 3 run shared by index/main.py and index/check_pair.py: flags, the parallel scan, the summary.

The scan is one `scan_tar` per tar in the worker pool, results in sorted tar order, so the
errors file, the indexes and the dump are the same for any number of workers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass

from vdp.errors import UsageError, reason_counts, write_errors_file
from vdp.pool import WorkFailure, map_ordered
from vdp.progress import Stopwatch, print_summary, progress_bar
from vdp.scan import ScanOptions, TarScan, error_row, scan_tar
from vdp.shards import list_tars
from vdp.validate import CheckOptions, ImageTokenIds

MAX_NAMED = 50  # bad tars named on stderr; the errors file has them all


def add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset_path",
        required=True,
        help="folder of tars (stage-2 sequences or stage-1 shards), searched recursively",
    )
    p.add_argument("--dataset_name", required=True, help="NAME: names the output files")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one tar at a time each (default 1)")
    p.add_argument("--patches", type=int, default=256, help="<im_patch> tokens per image (default 256)")
    p.add_argument("--max_len", type=int, default=8000, help="longest allowed sequence (default 8000)")
    p.add_argument(
        "--vocab_size", type=int, default=32000, help="image token ids are vocab_size, +1, +2 (default 32000: LLaMA-2)"
    )
    p.add_argument("--tokenizer", help="SentencePiece .model or Hugging Face folder: takes the image token ids from it")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one tar may take before it counts as failed")


def image_ids(args: argparse.Namespace) -> ImageTokenIds:
    """From --tokenizer when given (the ids stage 2 used), else vocab_size, +1, +2."""
    if not args.tokenizer:
        return ImageTokenIds.after_vocab(args.vocab_size)
    from vdp.tokens import IMAGE_END, IMAGE_PATCH, IMAGE_START, TokenizerLoadError, load_tokenizer

    try:
        sp = load_tokenizer(args.tokenizer).specials
    except TokenizerLoadError as e:
        raise UsageError(str(e)) from None
    return ImageTokenIds(sp[IMAGE_PATCH], sp[IMAGE_START], sp[IMAGE_END])


def find_tars(dataset_path: str) -> list[str]:
    if not os.path.isdir(dataset_path):
        raise UsageError(f"--dataset_path is not a folder: {dataset_path}")
    tars = list_tars(dataset_path)
    if not tars:
        raise UsageError(f"no .tar files under {dataset_path}")
    return tars


def check_options(args: argparse.Namespace, deep: bool) -> CheckOptions:
    if args.patches < 1 or args.max_len < 1 or args.workers < 1:
        raise UsageError("--patches, --max_len and --workers must be positive")
    return CheckOptions(patches=args.patches, max_len=args.max_len, image_ids=image_ids(args), deep=deep)


# --- the parallel scan --------------------------------------------------------------------------

_OPTIONS: ScanOptions | None = None
_EXTRA = None


def init_worker(options: ScanOptions, make_extra=None, extra_args: tuple = ()) -> None:
    """Pool initializer: options once per worker, and check_pair's decoder built there (it does not pickle).

    OpenCV's thread count is deliberately not touched here: in a child forked after the parent
    ran OpenCV, cv2.setNumThreads waits forever on the parent's (absent) thread pool.
    """
    global _OPTIONS, _EXTRA
    _OPTIONS = options
    _EXTRA = make_extra(*extra_args) if make_extra else None


def _scan_in_worker(path: str) -> TarScan:
    return scan_tar(path, _OPTIONS, _EXTRA)


def _failed(path: str, root: str, failure: WorkFailure) -> TarScan:
    scan = TarScan(path, os.path.relpath(path, root), size=os.path.getsize(path), broken=True)
    scan.errors.append(error_row(path, "", failure.reason))
    return scan


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
    tars: list[str], options: ScanOptions, workers: int, timeout: float, make_extra=None, extra_args: tuple = ()
) -> ScanRun:
    clock = Stopwatch()
    scans: list[TarScan] = []
    bar = progress_bar(len(tars), "tar", "scan")
    results = map_ordered(
        _scan_in_worker, tars, workers, timeout, initializer=init_worker, initargs=(options, make_extra, extra_args)
    )
    done_bytes = 0
    for path, result in zip(tars, results):
        scan = _failed(path, options.root, result) if isinstance(result, WorkFailure) else result
        scans.append(scan)
        done_bytes += scan.size
        bar.set_postfix_str(f"{done_bytes / 1e6 / max(clock.seconds, 1e-9):.0f} MB/s", refresh=False)
        bar.update(1)
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
