"""Progress bars and the end-of-run summary every stage prints."""

from __future__ import annotations

import sys
import time
from collections import Counter

from tqdm import tqdm

from vdp.run.accounting import ordered, summary_doc, write_summary

# No monitor thread: workers are forked, and a thread alive at fork time is a hazard.
tqdm.monitor_interval = 0


def progress_bar(total: int, unit: str, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr (`enabled=False`, --no_progress: none, calls still accepted)."""
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                disable=not enabled)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def print_summary(title: str, fields: dict, reasons: Counter | None = None, save_to: str | None = None,
                  about: dict | None = None) -> dict:
    """One block on stdout: `title: k=v, k=v` and, when there were errors, one line per reason.

    Returns the summary as printed (floats to the 2 decimals shown): {"stage", "totals",
    "reasons"}, with `about` (the run's argv and flags) after the stage; `save_to` writes it
    there as JSON (summary-{machine_id}.json), so the file always says what the console said.
    """
    totals = {k: round(v, 2) if isinstance(v, float) else v for k, v in fields.items()}
    counts = ordered(reasons or {})
    parts = [f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in totals.items()]
    print(f"{title}: " + ", ".join(parts), flush=True)
    for reason, n in counts.items():
        print(f"  {n:>8}  {reason}", flush=True)
    doc = summary_doc(title, totals, counts, about)
    if save_to is not None:
        write_summary(save_to, doc)
    return doc
