"""One error policy for every stage.

An expected failure of one input (missing file, broken video, malformed row) raises
`RecordError` with a one-line reason; the stage catches it in one place and writes
`{"key", "source", "reason"}` to its errors file. Anything else is a bug and propagates.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable

from vdp.storage import OutputError
from vdp.tario import write_bytes_atomically

EXIT_OK = 0
EXIT_SOME_ERRORS = 1
EXIT_USAGE = 2
EXIT_OUTPUT = 3  # an output could not be written (disk full, read-only folder): fix it and rerun


class RecordError(Exception):
    """An input that cannot become a sample; the message is the one-line reason."""


class UsageError(Exception):
    """Bad flags or unusable top-level inputs (exit status 2)."""


def error_entry(key: str, source: str, reason: str) -> dict:
    return {"key": key, "source": source, "reason": " ".join(str(reason).split())}


def jsonl_bytes(rows: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in rows)


def write_errors_file(path: str, rows: list[dict]) -> None:
    write_bytes_atomically(path, jsonl_bytes(rows))


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reason_counts(rows: Iterable[dict]) -> Counter:
    """Group reasons by their kind: the text before the first colon."""
    return Counter(r["reason"].split(":", 1)[0] for r in rows)


def exits_on_output_error(prog: str) -> Callable:
    """Decorate a command's main: an output that cannot be written mid-run (disk full, a folder
    made read-only) ends it with one line naming that output and EXIT_OUTPUT, not a traceback.

    Nothing incomplete is left under a final name (writes are atomic), and what the run left
    behind is removed by the rerun, so freeing space and running the same command again is all
    it takes.
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except OutputError as e:
                print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
                return EXIT_OUTPUT

        return run

    return decorate
