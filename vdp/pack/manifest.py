"""Manifests of any size: count the records in one streaming pass, then parse only a range.

A manifest is read as rows in one of a few formats (JSON lines, CSV, TSV, parquet, one JSON
object of entries, one JSON array of records); a dataset's loader (loaders.py) turns each
row into records. Nothing holds the whole manifest: the counting pass keeps a checkpoint
(byte offset, line, first record) every ROWS_PER_CHECKPOINT rows, and a machine then seeks
to the checkpoint before its range and parses only from there. For formats where one row is
one record (the loader says so), the counting pass does not even parse: it only finds row
boundaries.

Every row keeps its place in the numbering whatever is wrong with it: a line that is not
UTF-8, not JSON or not an object, a CSV row with the wrong number of fields, each becomes a
`BadRow` naming `file:line` and why.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import functools
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vdp.io import storage

ROWS_PER_CHECKPOINT = 4096
# A CSV row whose quoted field is still open after this many bytes is taken for a stray quote:
# its first line becomes a bad row and reading goes on at the next line.
MAX_CSV_ROW_BYTES = 1 << 20


@dataclass(frozen=True)
class Record:
    """One clip to pack: where its video is, its caption, and the span of the video it covers."""

    video_path: str  # a path ending in ".*" means: the first existing file with a common video extension
    caption: str | None  # None: take it from --captions by video_id
    video_id: str = ""
    start: float | None = None  # clip span in seconds, when the record is part of a video
    end: float | None = None
    clip_path: str = ""  # a pre-cut file of exactly the span; used (without the span) when it exists
    meta: dict | None = field(default=None, compare=True, hash=False)  # extra columns, kept in the json
    where: str = field(default="", compare=False)  # the row it came from, "file:line"
    # Instruction data: the whole conversation, checked (vdp.pack.conversations); its first
    # human turn gets the frames. None: one human prompt of frames and `caption` as the answer.
    conversations: list[dict] | None = field(default=None, compare=True, hash=False)


@dataclass(frozen=True)
class BadRow:
    where: str  # "file:line", "file:line#clipN" or "file:key"
    reason: str


Entry = Record | BadRow


@dataclass(frozen=True)
class Checkpoint:
    offset: int  # byte offset of the row in the file (formats that can seek), else 0
    line: int  # 1-based line of the row's first line (or row number)
    row: int  # rows before it
    record: int  # records before it


@dataclass
class ManifestIndex:
    total: int  # records in the manifest
    checkpoints: list[Checkpoint]

    def before(self, record: int) -> Checkpoint:
        """The last checkpoint at or before the given record number."""
        at = bisect.bisect_right([c.record for c in self.checkpoints], record) - 1
        return self.checkpoints[max(at, 0)]


# --- rows: (checkpoint position, where, value or BadRow) ------------------------------------


@dataclass(frozen=True)
class Row:
    pos: Checkpoint  # the row's own position (its `record` is filled by the caller)
    where: str
    value: object  # dict (or (key, value) for json-object rows), or a BadRow


def _decode(where: str, data: bytes) -> str | BadRow:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRow(where, f"not valid UTF-8 at byte {e.start} of the line")


def _lines(f, offset: int, line: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, line number, bytes) of every physical line from `offset`."""
    f.seek(offset)
    for data in f:
        yield offset, line, data
        offset += len(data)
        line += 1


def line_raw(f, start: Checkpoint) -> Iterator[tuple[int, int, bytes]]:
    """Non-blank lines, each one row (JSON lines, and TSV, whose fields hold no line breaks)."""
    # The hot loop of counting a 100M-row manifest: kept to the bare minimum per line.
    offset, line = start.offset, start.line
    f.seek(offset)
    for data in f:
        if not data.isspace():
            yield offset, line, data
        offset += len(data)
        line += 1


def parse_jsonl(path: str, line: int, data: bytes) -> object:
    where = f"{path}:{line}"
    text = _decode(where, data)
    if isinstance(text, BadRow):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return BadRow(where, f"bad JSON: {e.msg}")
    except RecursionError:
        return BadRow(where, "bad JSON: nested too deeply")
    return obj if isinstance(obj, dict) else BadRow(where, "not a JSON object")


def csv_raw(f, start: Checkpoint) -> Iterator[tuple[int, int, bytes]]:
    """Logical CSV rows: physical lines joined while a quoted field is open.

    In RFC 4180 a quote inside a quoted field is doubled, so a row is complete when its count
    of quote characters is even. A row still open after MAX_CSV_ROW_BYTES or at the end of the
    file (a stray quote) is given up: its first line alone becomes the row, and reading
    restarts at the next line.
    """
    pending: list[tuple[int, int, bytes]] = []
    replay: list[tuple[int, int, bytes]] = []
    lines = _lines(f, start.offset, start.line)
    while True:
        item = replay.pop(0) if replay else next(lines, None)
        if item is not None:
            if not pending and item[2].count(b'"') % 2 == 0:  # the common case: a whole row on one line
                if item[2].strip():
                    yield item
                continue
            pending.append(item)
        if not pending:
            return
        still_open = sum(p[2].count(b'"') for p in pending) % 2 == 1
        if still_open and item is not None and sum(len(p[2]) for p in pending) <= MAX_CSV_ROW_BYTES:
            continue
        if still_open and len(pending) > 1:  # a stray quote: give up the first line, replay the others
            replay = pending[1:] + replay
            pending = pending[:1]
        data = b"".join(p[2] for p in pending)
        first = pending[0]
        pending = []
        if data.strip():
            yield first[0], first[1], data


def parse_delimited(path: str, line: int, data: bytes, header: list[str], delimiter: str) -> object:
    where = f"{path}:{line}"
    text = _decode(where, data)
    if isinstance(text, BadRow):
        return text
    try:
        fields = next(csv.reader(io.StringIO(text), delimiter=delimiter, strict=True), [])
    except csv.Error as e:
        return BadRow(where, f"bad {'TSV' if delimiter == chr(9) else 'CSV'} row: {e}")
    if len(fields) != len(header):
        return BadRow(where, f"{len(fields)} fields where the header has {len(header)}")
    return dict(zip(header, fields))


def read_header(f, raw, delimiter: str) -> tuple[list[str], Checkpoint]:
    """The column names and the position of the first data row."""
    first = next(raw(f, Checkpoint(0, 1, 0, 0)), None)
    if first is None:
        return [], Checkpoint(0, 1, 0, 0)
    offset, line, data = first
    text = data.decode("utf-8-sig", errors="strict")
    header = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    next_line = line + data.count(b"\n")
    return [h.strip() for h in header], Checkpoint(offset + len(data), next_line, 0, 0)


# --- the formats ----------------------------------------------------------------------------


FORMATS = ("jsonl", "csv", "tsv", "parquet", "json-object", "json-array")


def format_of(path: str) -> str:
    """A table's format from its name (what `--dataset table` and how2link go by)."""
    name = path.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv"),
                     (".parquet", "parquet"), (".txt", "tsv")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"cannot tell the format of {path} from its name (want .csv, .tsv, .jsonl or .parquet)")


def iter_rows(path: str, fmt: str, start: Checkpoint | None = None) -> Iterator[Row]:
    """Every row of the manifest from `start` (a checkpoint of this same format) on, parsed."""
    start = start or Checkpoint(0, 1, 0, 0)
    if fmt == "parquet":
        yield from _parquet_rows(path, start)
        return
    if fmt == "json-object":
        yield from _object_rows(path, start)
        return
    if fmt == "json-array":
        yield from _array_rows(path, start)
        return
    with storage.open_read(path) as f:
        raw, first = _raw_reader(f, fmt)
        if first is None:
            return
        if fmt == "jsonl":
            decode = lambda line, data: parse_jsonl(path, line, data)  # noqa: E731
        else:
            header, delimiter = first.header, "," if fmt == "csv" else "\t"
            decode = lambda line, data: parse_delimited(path, line, data, header, delimiter)  # noqa: E731
        if start.offset < first.offset:
            start = first
        for n, (offset, line, data) in enumerate(raw(f, start), start.row):
            yield Row(Checkpoint(offset, line, n, -1), f"{path}:{line}", decode(line, data))


LINE_FORMATS = ("jsonl", "csv", "tsv")


@dataclass(frozen=True)
class FirstRow(Checkpoint):
    header: tuple[str, ...] = ()


def _raw_reader(f, fmt: str):
    """The row splitter of a line format and where its first data row starts (None: no rows)."""
    if fmt == "jsonl":
        return line_raw, FirstRow(0, 1, 0, 0)
    delimiter, raw = (",", csv_raw) if fmt == "csv" else ("\t", line_raw)
    try:
        header, first = read_header(f, raw, delimiter)
    except UnicodeDecodeError:
        raise ValueError("the header is not valid UTF-8") from None
    return raw, (FirstRow(first.offset, first.line, 0, 0, tuple(header)) if header else None)


def _parquet_rows(path: str, start: Checkpoint) -> Iterator[Row]:
    import pyarrow.parquet as pq

    with storage.open_read(path) as f:
        pf = pq.ParquetFile(f)
        row = 0
        for g in range(pf.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            if row + size <= start.row:
                row += size
                continue
            for record in pf.read_row_group(g).to_pylist():
                if row >= start.row:
                    yield Row(Checkpoint(0, row + 1, row, -1), f"{path}:row{row + 1}", record)
                row += 1


def _object_rows(path: str, start: Checkpoint) -> Iterator[Row]:
    """The entries of one top-level JSON object, streamed (Ego4D's narration.json is ~1 GB)."""
    import ijson

    with storage.open_read(path) as f:
        try:
            for n, (key, value) in enumerate(ijson.kvitems(f, "", use_float=True)):
                if n >= start.row:
                    yield Row(Checkpoint(0, n + 1, n, -1), f"{path}:{key}", (key, value))
        except ijson.JSONError as e:
            yield Row(Checkpoint(0, 0, -1, -1), f"{path}", BadRow(path, f"bad JSON: {' '.join(str(e).split())[:200]}"))


def _array_rows(path: str, start: Checkpoint) -> Iterator[Row]:
    """The items of one top-level JSON array, streamed (LLaVA-style files run to several GB).

    A JSON array cannot be entered in the middle, so a range is reached by parsing (and
    dropping) the items before it: memory stays one item whatever the file's size.
    """
    import ijson

    with storage.open_read(path) as f:
        try:
            for n, item in enumerate(ijson.items(f, "item", use_float=True)):
                if n >= start.row:
                    where = f"{path}:[{n}]"
                    value = item if isinstance(item, dict) else BadRow(where, "not a JSON object")
                    yield Row(Checkpoint(0, n + 1, n, -1), where, value)
        except ijson.JSONError as e:
            yield Row(Checkpoint(0, 0, -1, -1), f"{path}", BadRow(path, f"bad JSON: {' '.join(str(e).split())[:200]}"))


def json_format(path: str) -> str:
    """"json-array" when the file's first non-blank byte opens an array, else "jsonl"."""
    with storage.open_read(path) as f:
        while True:
            block = f.read(65536)
            head = block.lstrip(b" \t\r\n")
            if head or not block:
                return "json-array" if head.startswith(b"[") else "jsonl"


def row_count(path: str, fmt: str) -> int | None:
    """The number of rows when the file's own metadata says it (parquet), else None."""
    if fmt != "parquet":
        return None
    import pyarrow.parquet as pq

    with storage.open_read(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


# --- counting and ranges --------------------------------------------------------------------


RowToEntries = Callable[[object, str], Iterable[Entry]]


def index_manifest(path: str, fmt: str, entries_of: RowToEntries | None) -> ManifestIndex:
    """Count the records in one streaming pass, keeping a checkpoint every ROWS_PER_CHECKPOINT rows.

    `entries_of(value, where)` gives a row's records; None means one record per row, and then
    the rows are only found, not parsed.
    """
    if entries_of is None:
        known = row_count(path, fmt)
        if known is not None:
            return ManifestIndex(known, [Checkpoint(0, 1, 0, 0)])
        if fmt in LINE_FORMATS:
            return _index_lines(path, fmt)
    checkpoints = [Checkpoint(0, 1, 0, 0)]
    total = 0
    for row in iter_rows(path, fmt):
        if row.pos.row % ROWS_PER_CHECKPOINT == 0 and row.pos.row:
            checkpoints.append(Checkpoint(row.pos.offset, row.pos.line, row.pos.row, total))
        one = entries_of is None or isinstance(row.value, BadRow)
        total += 1 if one else _count(entries_of(row.value, row.where))
    return ManifestIndex(total, checkpoints)


COUNT_BLOCK = 1 << 20
# A blank line is whitespace only (what line_raw skips). Found as "a newline followed by one":
# the regex engine then jumps from newline to newline instead of trying every byte.
_BLANK_AFTER_NEWLINE = re.compile(rb"\n(?=[ \t\r\x0b\x0c]*\n)")
_BLANK_AT_START = re.compile(rb"[ \t\r\x0b\x0c]*\n")


def _blank_lines(whole: bytes) -> int:
    """Blank lines in a run of whole lines."""
    return len(_BLANK_AFTER_NEWLINE.findall(whole)) + (1 if _BLANK_AT_START.match(whole) else 0)


def _index_lines(path: str, fmt: str) -> ManifestIndex:
    """One record per non-blank line: count them block by block (C speed), never line by line.

    Checkpoints fall on block ends, so a range is reached by skipping at most one block of
    lines. A line is blank exactly when the row splitter skips it (whitespace only). A CSV
    block with a line of odd quote count (a quoted field running across lines, or a stray
    quote) is where the rows stop being lines: from there on, rows are found one by one.
    """
    with storage.open_read(path) as f:
        raw, first = _raw_reader(f, fmt)
        if first is None:
            return ManifestIndex(0, [Checkpoint(0, 1, 0, 0)])
        checkpoints = [Checkpoint(first.offset, first.line, 0, 0)]
        offset, line, rows = first.offset, first.line, 0
        f.seek(offset)
        carry = b""
        while True:
            block = f.read(COUNT_BLOCK)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            whole, carry = data[:cut], data[cut:]
            if fmt == "csv" and _has_open_quote(whole):
                return _index_rows(f, raw, Checkpoint(offset, line, rows, rows), checkpoints)
            lines = whole.count(b"\n")
            rows += lines - _blank_lines(whole)
            if not block and whole and not whole.endswith(b"\n"):  # a last line without its newline
                lines += 1
                rows += 0 if whole[whole.rfind(b"\n") + 1:].isspace() else 1
            offset, line = offset + len(whole), line + lines
            if not block:
                break
            if rows - checkpoints[-1].row >= ROWS_PER_CHECKPOINT:
                checkpoints.append(Checkpoint(offset, line, rows, rows))
    return ManifestIndex(rows, checkpoints)


def _has_open_quote(whole: bytes) -> bool:
    """Whether some line of these whole lines has an odd number of quote characters."""
    if b'"' not in whole:
        return False
    data = np.frombuffer(whole, np.uint8)
    quotes = np.flatnonzero(data == 34)
    ends = np.append(np.flatnonzero(data == 10), len(data))  # the last piece may lack its newline
    per_line = np.diff(np.searchsorted(quotes, ends, side="right"), prepend=0)
    return bool((per_line % 2).any())


def _index_rows(f, raw, start: Checkpoint, checkpoints: list[Checkpoint]) -> ManifestIndex:
    """Rows found one by one from `start` (a row boundary), checkpoints as they pass."""
    rows = start.row
    for offset, line, _ in raw(f, start):
        if rows - checkpoints[-1].row >= ROWS_PER_CHECKPOINT:
            checkpoints.append(Checkpoint(offset, line, rows, rows))
        rows += 1
    return ManifestIndex(rows, checkpoints)


def _count(items: Iterable) -> int:
    return sum(1 for _ in items)


def entries_in_range(
    path: str, fmt: str, index: ManifestIndex, lo: int, hi: int, entries_of: RowToEntries
) -> Iterator[tuple[int, Entry]]:
    """(global record number, entry) for records lo..hi-1, parsing from the checkpoint before lo."""
    if lo >= hi:
        return
    start = index.before(lo)
    number = start.record
    for row in iter_rows(path, fmt, start):
        items = [row.value] if isinstance(row.value, BadRow) else list(entries_of(row.value, row.where))
        for entry in items:
            if number >= hi:
                return
            if number >= lo:
                yield number, entry
            number += 1


# --- loaders: the registry the top-level loaders.py fills ----------------------------------


@dataclass(frozen=True)
class LoaderOptions:
    """The flags a loader may read (pack.py fills them; every field has a default)."""

    source: str = "path"  # "url": take the loader's URL column instead of the local layout
    ego4d_pass: str = "1"  # "1", "2" or "both"
    ego4d_window: float = 4.0
    video_col: str = ""
    caption_col: str = ""
    id_col: str = ""
    start_col: str = ""
    end_col: str = ""


LoaderFn = Callable[[object, str, LoaderOptions], "Entry | Iterable[Entry]"]


@dataclass(frozen=True)
class Loader:
    fn: LoaderFn  # (row, where, options) -> an entry, or (many=True) an iterable of entries
    rows: str  # a format of FORMATS; "table": by the manifest's file name; "json": a JSON array or JSON lines
    many: bool  # a row holds several records (a video and its clips)
    urls: bool  # the dataset publishes video URLs: `--source url` is allowed
    doc: str = ""


LOADERS: dict[str, Loader] = {}


def loader(name: str, rows: str = "jsonl", many: bool = False, urls: bool = False):
    """Register a dataset: `fn(row, where, options)`; see loaders.py for examples."""

    def register(fn):
        LOADERS[name] = Loader(fn, rows, many, urls, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


@dataclass
class Manifest:
    """One manifest read by one loader: count it, then take a range of its records."""

    path: str
    loader: Loader
    options: LoaderOptions = field(default_factory=LoaderOptions)

    @functools.cached_property
    def format(self) -> str:
        # cached: telling a JSON array from JSON lines opens the file (a remote one too)
        if self.loader.rows == "json":  # the same records ship as one array or as lines
            return json_format(self.path)
        return format_of(self.path) if self.loader.rows == "table" else self.loader.rows

    def entries_of(self, value: object, where: str) -> list[Entry]:
        out = self.loader.fn(value, where, self.options)
        return list(out) if self.loader.many else [out]

    def index(self) -> ManifestIndex:
        return index_manifest(self.path, self.format, self.entries_of if self.loader.many else None)

    def entries(self, index: ManifestIndex, lo: int, hi: int) -> Iterator[tuple[int, Entry]]:
        return entries_in_range(self.path, self.format, index, lo, hi, self.entries_of)


# --- what loaders share: times, spans, records ---------------------------------------------


def parse_time(value) -> float:
    """Seconds from a number or an "HH:MM:SS.mmm" / "H:MM:SS" / "MM:SS" string; ValueError if not finite."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = 0.0
        for part in str(value).strip().split(":"):
            seconds = seconds * 60 + float(part)
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {value!r}")
    return seconds


def parse_span(start, end) -> tuple[float | None, float | None, str]:
    """A clip span in seconds; the third item is the reason when it is unusable.

    Only what the row alone shows is checked here (unparsable, negative, empty, inverted); a
    span past the video's end is found when the video is opened.
    """
    if start is None and end is None:
        return None, None, ""
    try:
        s = parse_time(start) if start not in (None, "") else 0.0
        e = parse_time(end) if end not in (None, "") else None
    except (ValueError, TypeError):
        return None, None, f"bad clip span {start!r}..{end!r}"
    if s < 0:
        return None, None, f"negative clip span start {s}"
    if e is not None and e <= s:
        return None, None, f"empty clip span {s}..{e} (end at or before start)"
    return s, e, ""


def make_record(where: str, path, caption, video_id="", start=None, end=None, clip_path: str = "",
                meta: dict | None = None, caption_optional: bool = False,
                conversations: list[dict] | None = None) -> Entry:
    """A Record, or a BadRow saying which field is unusable."""
    if not path or not isinstance(path, str):
        return BadRow(where, "missing video path")
    if caption is not None and not isinstance(caption, str):
        return BadRow(where, "caption is not text")
    if caption is None and not caption_optional:
        return BadRow(where, "missing caption")
    s, e, reason = parse_span(start, end)
    if reason:
        return BadRow(where, reason)
    return Record(path, caption, str(video_id or ""), s, e, clip_path, meta or None, where, conversations)


def fill_captions(entries: list[tuple[int, Entry]], captions_path: str | None) -> list[tuple[int, Entry]]:
    """Give records without a caption theirs from `--captions` (keyed by video_id).

    The captions file (jsonl, csv or tsv with an id column `clip_id`, `video_id`, `id` or `key`
    and a `caption` or `text` column) is streamed once and only the ids of these records are
    kept, so memory follows the range, not the file.
    """
    wanted = {e.video_id for _, e in entries if isinstance(e, Record) and e.caption is None}
    found: dict[str, str] = {}
    if wanted and captions_path:
        for row in iter_rows(captions_path, format_of(captions_path)):
            if not isinstance(row.value, dict):
                continue
            key = next((str(row.value[k]) for k in ("clip_id", "video_id", "id", "key") if row.value.get(k)), "")
            text = next((row.value[k] for k in ("caption", "text") if isinstance(row.value.get(k), str)), None)
            if key in wanted and text is not None:
                found[key] = text
    out = []
    for n, e in entries:
        if isinstance(e, Record) and e.caption is None:
            if e.video_id in found:
                e = dataclasses.replace(e, caption=found[e.video_id])
            else:
                where = "in --captions" if captions_path else "(no --captions file given)"
                e = BadRow(e.where, f"no caption for {e.video_id} {where}")
        out.append((n, e))
    return out
