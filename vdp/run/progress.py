"""Progress bars and the end-of-run summary every stage prints."""

from __future__ import annotations

import sys
import time
from collections import Counter

from tqdm import tqdm

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


def print_summary(title: str, fields: dict, reasons: Counter | None = None) -> None:
    """One block on stdout: `title: k=v, k=v` and, when there were errors, one line per reason."""
    parts = []
    for k, v in fields.items():
        parts.append(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}")
    print(f"{title}: " + ", ".join(parts), flush=True)
    for reason, n in sorted((reasons or {}).items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:>8}  {reason}", flush=True)
