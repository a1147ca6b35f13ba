"""Machine-readable accounting beside the outputs: per-tar stats, per-run summaries, per-record status.

- `{tar}.stats.json` beside every stage-1 tar and stage-2 shard: what its records came to
  (counts, errors by reason, filtered by rule, bytes, seconds, signal summaries). Written before
  the file that marks the tar done, so a finished tar always has its stats.
- `summary-{machine_id}.json` (stage 3: `summary-{command}-{NAME}.json`) for every run of every
  stage: the totals and reason counts the console summary printed (vdp.run.progress.print_summary
  writes both), the stage and its flags.
- `{tar}.status.parquet` (stage 1, `--status parquet`): one row per input record of the tar:
  key, source, status ("packed", "error", "filtered"), reason.

These carry times, so they are accounting, not outputs: the tars stay byte-identical across runs
and worker counts, these files do not (`is_accounting` tells test trees and tools which is which).
Keys are written in a fixed order, never sorted.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vdp.errors import reason_counts
from vdp.io import storage
from vdp.io.tario import write_bytes_atomically

STATS_SUFFIX = ".stats.json"
STATUS_SUFFIX = ".status.parquet"
_SUMMARY = re.compile(r"summary-.+\.json")


def stats_path(tar_path: str) -> str:
    return tar_path + STATS_SUFFIX


def status_path(tar_path: str) -> str:
    return tar_path + STATUS_SUFFIX


def summary_path(folder: str, machine_id: int | str) -> str:
    return storage.join(folder, f"summary-{machine_id}.json")


def is_accounting(name: str) -> bool:
    """Whether a file name is one of these accounting files (not compared byte for byte)."""
    base = storage.basename(name)
    return base.endswith((STATS_SUFFIX, STATUS_SUFFIX)) or bool(_SUMMARY.fullmatch(base))


def json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


def ordered(counts: Counter | dict) -> dict:
    """Counts by count, then name: the order the console lists reasons in."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --- per-run summaries ----------------------------------------------------------------------------


def run_about(args, argv: list[str] | None) -> dict:
    """The command line of this run and every flag it ran with (after defaults), for its summary."""
    flags = json.loads(json.dumps(vars(args), default=str))
    return {"argv": list(sys.argv[1:] if argv is None else argv), "flags": flags}


def summary_doc(stage: str, totals: dict, reasons: dict, about: dict | None = None) -> dict:
    return {"stage": stage, **(about or {}), "totals": totals, "reasons": reasons}


def write_summary(path: str, doc: dict) -> None:
    write_bytes_atomically(path, json_bytes(doc))


# --- signal summaries -----------------------------------------------------------------------------


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def signal_summary(values: list[float]) -> dict:
    """count, min, max, mean and the 10th/50th/90th percentiles (numpy's linear), 6 decimals."""
    a = np.asarray(values, dtype=np.float64)
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    figures = (a.min(), a.max(), a.mean(), p10, p50, p90)
    return {"count": len(values), **{k: round(float(v), 6) for k, v in zip(("min", "max", "mean", "p10", "p50", "p90"), figures)}}


def signal_summaries(signals: Iterable[dict]) -> dict:
    """Per numeric signal over the samples' `signals` dicts (lists such as phash and t left out)."""
    values: dict[str, list[float]] = {}
    for doc in signals:
        for name, v in doc.items():
            if _number(v):
                values.setdefault(name, []).append(v)
    return {name: signal_summary(vs) for name, vs in sorted(values.items())}


# --- stage 1: one tar's records -------------------------------------------------------------------


def tar_size(member_sizes: Iterable[int]) -> int:
    """The bytes of the USTAR tar vdp.io.tario writes for members of these sizes: a header block
    and whole data blocks each, two zero blocks, padded to tarfile's record size."""
    blocks = sum(1 + -(-size // tarfile.BLOCKSIZE) for size in member_sizes) + 2
    return -(-blocks * tarfile.BLOCKSIZE // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class TarTally:
    """What one stage-1 tar's records came to, in record order, as the tar is written."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.left_out: list[dict] = []  # errors ("reason") and filtered ("rule") rows: the sidecar
        self.status: list[dict] = []  # one row per record
        self.signals: list[dict] = []
        self.sizes: list[int] = []  # of the members written
        self.packed = 0
        self.seconds = 0.0  # the records' times in the workers

    def add_packed(self, key: str, source: str, members: list[tuple[str, bytes]], signals: dict | None,
                   seconds: float) -> None:
        self.packed += 1
        self.sizes += [len(data) for _, data in members]
        if signals:
            self.signals.append(signals)
        self._add(key, source, "packed", None, seconds)

    def add_left_out(self, row: dict, seconds: float) -> None:
        """An errors row (`reason`) or a filtered row (`rule`, `value`)."""
        self.left_out.append(row)
        if "rule" in row:
            self._add(row["key"], row["source"], "filtered", f"{row['rule']}={row['value']}", seconds)
        else:
            self._add(row["key"], row["source"], "error", row["reason"], seconds)

    def _add(self, key: str, source: str, status: str, reason: str | None, seconds: float) -> None:
        self.status.append({"key": key, "source": source, "status": status, "reason": reason})
        self.seconds += seconds

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.left_out if "reason" in r]

    @property
    def filtered(self) -> list[dict]:
        return [r for r in self.left_out if "rule" in r]

    def stats(self) -> dict:
        errors, filtered = self.errors, self.filtered
        return {
            "tar": self.name,
            "records": len(self.status),
            "packed": self.packed,
            "errors": len(errors),
            "errors_by_reason": ordered(reason_counts(errors)),
            "filtered": len(filtered),
            "filtered_by_rule": ordered(Counter(r["rule"] for r in filtered)),
            "bytes": tar_size(self.sizes),
            "seconds": round(self.seconds, 3),
            "signals": signal_summaries(self.signals),
        }


def status_bytes(rows: list[dict]) -> bytes:
    """The rows as a parquet file: key, source, status, reason (null for a packed record)."""
    import pyarrow as pa  # only with --status parquet
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("source", pa.string()), ("status", pa.string()), ("reason", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_tar_accounting(tar_path: str, tally: TarTally, status: bool) -> None:
    """The tar's stats and, with `status`, its status rows (both before the tar's rename)."""
    write_bytes_atomically(stats_path(tar_path), json_bytes(tally.stats()))
    if status:
        write_bytes_atomically(status_path(tar_path), status_bytes(tally.status))


# --- stage 2: one output shard ----------------------------------------------------------------------


def shard_stats(name: str, result, max_len: int, size: int) -> dict:
    """A stage-2 shard's stats from its group's counts (vdp.tokenize.stage.GroupResult), not recounted."""
    return {
        "tar": name,
        "sequences": result.sequences,
        "samples": result.samples,
        "errors": len(result.errors),
        "errors_by_reason": ordered(reason_counts(result.errors)),
        "tokens": result.tokens,
        "images": result.images,
        "fill": round(result.tokens / (result.sequences * max_len), 6) if result.sequences else 0.0,
        "bytes": size,
        "seconds": result.seconds,
    }


# --- reading them back (stage 3, the report) --------------------------------------------------------

SUMMED = ("records", "packed", "errors", "filtered", "sequences", "samples", "tokens", "images", "bytes", "seconds")
MERGED = ("errors_by_reason", "filtered_by_rule")


def _read_stats(tar: str) -> dict | None:
    try:
        doc = json.loads(storage.read_bytes(stats_path(tar)))
    except Exception:  # noqa: BLE001 - absent, unreadable or not JSON: accounting never fails a run
        return None
    return doc if isinstance(doc, dict) else None


def read_tar_stats(tars: list[str]) -> dict:
    """The stats files beside `tars` (those that have one), summed.

    {"tars_with_stats": n, the SUMMED counts found in them (stage 1: records, packed, errors,
    filtered, bytes, seconds; stage 2: sequences, samples, errors, tokens, images, bytes,
    seconds), the MERGED reason and rule counts, "by_tar": {tar path: its stats}}.
    """
    with ThreadPoolExecutor(16 if any(storage.is_remote(t) for t in tars) else 1) as pool:
        found = {t: doc for t, doc in zip(tars, pool.map(_read_stats, tars)) if doc is not None}
    out: dict = {"tars_with_stats": len(found)}
    for key in SUMMED:
        values = [doc[key] for doc in found.values() if _number(doc.get(key))]
        if values:
            out[key] = round(sum(values), 3) if key == "seconds" else sum(values)
    for key in MERGED:
        counts: Counter = Counter()
        for doc in found.values():
            counts.update(doc.get(key) or {})
        if any(key in doc for doc in found.values()):
            out[key] = ordered(counts)
    out["by_tar"] = found
    return out


def source_totals(tars: list[str]) -> dict:
    """For stage 3's summary: records, errors and filtered of the stage-1 runs that wrote `tars`,
    from their stats (records that never reached a tar are only there); {} when there are none."""
    docs = [doc for doc in read_tar_stats(tars)["by_tar"].values() if _number(doc.get("records"))]
    if not docs:
        return {}
    return {f"source_{key}": sum(doc.get(key, 0) for doc in docs) for key in ("records", "errors", "filtered")}
