"""Your own datasets: register a loader here and `python pack.py --dataset NAME` reads it.

The built-in ones (webvid, internvid, hd-vila, how2link, ego4d, table, jsonl, llava) live in
vdp/pack/datasets.py; read them for worked examples. A loader gets one manifest row at a time
(a dict for JSON lines, CSV, TSV and parquet rows) and returns a `Record`, or a `BadRow`
saying why the row is unusable; with `many=True` it yields any number (the clips of one
video). Rows that are not UTF-8, not JSON or have the wrong number of fields never reach it.
`make_record` checks the path, the caption and the span for you. A path ending in `.*` is the
first file found with a common video extension; `clip_path` a pre-cut file of the span.

Adding a dataset is a ~15-line job:

    @loader("mycsv", rows="csv")
    def load_mycsv(row, where, options):
        # My CSV: file, text, start, end
        return make_record(where, row.get("file"), row.get("text"), video_id=row.get("file"),
                           start=row.get("start") or None, end=row.get("end") or None)

The same file works with the installed command: `vdp-pack --plugin loaders.py ...`.
For any CSV/TSV/jsonl/parquet no code is needed: `--dataset table --video_col ... --caption_col ...`.
"""

from __future__ import annotations

from vdp.pack.manifest import BadRow, LoaderOptions, Record, loader, make_record, parse_span, parse_time  # noqa: F401

# Your loaders below.
