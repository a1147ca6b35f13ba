"""One error policy for every stage.

An expected failure of one input (missing file, broken video, malformed row) raises
`RecordError` with a one-line reason; the stage catches it in one place and writes
`{"key", "source", "reason"}` to its errors file. Anything else is a bug and propagates.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

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



def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reason_counts(rows: Iterable[dict]) -> Counter:
    """Group reasons by their kind: the text before the first colon."""
    return Counter(r["reason"].split(":", 1)[0] for r in rows)
