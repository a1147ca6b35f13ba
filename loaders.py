"""Dataset loaders: turn an annotation file into records, one per clip, in file order.

A loader is a generator function registered under a `--dataset` name. It yields, for every
row of the annotation, either a `Record` or a `BadRow` (the row's place and why it is
unusable): bad rows are kept in the numbering and reported, never dropped or fatal.
Paths in records are as written in the annotation; pack.py resolves relative ones against
`--video_root` (else the annotation's folder). Annotations are opened through vdp.storage, so
they may live on s3:// or oss:// too.

Adding a dataset (a ~15-line job):

    @loader("mycsv")
    def load_mycsv(path):
        for where, row in csv_rows(path):
            if not row.get("file"):
                yield BadRow(where, "missing file column")
                continue
            yield Record(video_path=row["file"], caption=row.get("text", ""), video_id=row["file"])
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vdp import storage


@dataclass(frozen=True)
class Record:
    video_path: str
    caption: str
    video_id: str = ""
    start: float | None = None  # clip span in seconds, when the record is part of a video
    end: float | None = None


@dataclass(frozen=True)
class BadRow:
    where: str  # "file:line" or "file:key"
    reason: str


LOADERS: dict[str, Callable[[str], Iterator[Record | BadRow]]] = {}


def loader(name: str):
    def register(fn):
        LOADERS[name] = fn
        return fn

    return register


# --- readers shared by the loaders -----------------------------------------------------------


def jsonl_rows(path: str) -> Iterator[tuple[str, dict | None, str]]:
    """(where, object or None, reason) for every non-blank line of a JSON-lines file."""
    with storage.open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, None, f"bad JSON: {e.msg}"
                continue
            if not isinstance(obj, dict):
                yield where, None, "not a JSON object"
                continue
            yield where, obj, ""


def csv_rows(path: str) -> Iterator[tuple[str, dict]]:
    with storage.open_text(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
            yield f"{path}:{n}", row


def parse_time(value) -> float:
    """Seconds from a number or an "HH:MM:SS.mmm" / "MM:SS" string."""
    if isinstance(value, (int, float)):
        return float(value)
    seconds = 0.0
    for part in str(value).strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _span(where: str, start, end) -> tuple[float | None, float | None, str]:
    """Parse a clip span; the third item is a reason when it is unusable."""
    if start is None and end is None:
        return None, None, ""
    try:
        s = parse_time(start) if start is not None else 0.0
        e = parse_time(end) if end is not None else None
    except ValueError:
        return None, None, f"bad clip span {start!r}..{end!r}"
    if s < 0 or (e is not None and e <= s):
        return None, None, f"empty clip span {s}..{e}"
    return s, e, ""


def _record(where: str, path, caption, video_id="", start=None, end=None) -> Record | BadRow:
    if not path or not isinstance(path, str):
        return BadRow(where, "missing video path")
    if caption is None or not isinstance(caption, str):
        return BadRow(where, "missing caption")
    s, e, reason = _span(where, start, end)
    if reason:
        return BadRow(where, reason)
    return Record(path, caption, str(video_id or ""), s, e)


# --- the datasets --------------------------------------------------------------------------


@loader("jsonl")
def load_jsonl(path: str) -> Iterator[Record | BadRow]:
    """One object a line: video_path, value (or caption), optional video_id, start, end."""
    for where, obj, reason in jsonl_rows(path):
        if obj is None:
            yield BadRow(where, reason)
            continue
        caption = obj.get("value", obj.get("caption"))
        yield _record(where, obj.get("video_path"), caption, obj.get("video_id"), obj.get("start"), obj.get("end"))


@loader("webvid")
def load_webvid(path: str) -> Iterator[Record | BadRow]:
    """WebVid CSV (videoid, name, page_dir): videos at {page_dir}/{videoid}.mp4."""
    for where, row in csv_rows(path):
        vid, page = (row.get("videoid") or "").strip(), (row.get("page_dir") or "").strip()
        if not vid or not page:
            yield BadRow(where, "missing videoid or page_dir")
            continue
        yield _record(where, f"{page}/{vid}.mp4", row.get("name"), vid)


@loader("internvid")
def load_internvid(path: str) -> Iterator[Record | BadRow]:
    """InternVid jsonl: YoutubeID, Start_timestamp, End_timestamp, Caption.

    With a `clip_path` (or `video_path`) the row names a pre-cut clip file; otherwise the clip
    is the span of the long video {YoutubeID}.mp4.
    """
    for where, obj, reason in jsonl_rows(path):
        if obj is None:
            yield BadRow(where, reason)
            continue
        vid = obj.get("YoutubeID")
        clip = obj.get("clip_path") or obj.get("video_path")
        if clip:
            yield _record(where, clip, obj.get("Caption"), vid or clip)
        elif not vid:
            yield BadRow(where, "missing YoutubeID")
        else:
            start, end = obj.get("Start_timestamp"), obj.get("End_timestamp")
            yield _record(where, f"{vid}.mp4", obj.get("Caption"), vid, start, end)


@loader("hd-vila")
def load_hdvila(path: str) -> Iterator[Record | BadRow]:
    """HD-VILA clip jsonl: video_id, clip_id, span [start, end], caption (or text).

    The clip file is {clip_id} when it exists as a path, else the span of {video_id}.mp4.
    """
    for where, obj, reason in jsonl_rows(path):
        if obj is None:
            yield BadRow(where, reason)
            continue
        vid, span = obj.get("video_id"), obj.get("span")
        caption = obj.get("caption", obj.get("text"))
        if obj.get("clip_path"):
            yield _record(where, obj["clip_path"], caption, obj.get("clip_id") or vid)
        elif not vid or not isinstance(span, list) or len(span) != 2:
            yield BadRow(where, "missing video_id or span [start, end]")
        else:
            yield _record(where, f"{vid}.mp4", caption, obj.get("clip_id") or vid, span[0], span[1])


@loader("how2link")
def load_how2link(path: str) -> Iterator[Record | BadRow]:
    """How2link jsonl: each line a video with `clips`, each clip {clip_path, caption}."""
    for where, obj, reason in jsonl_rows(path):
        if obj is None:
            yield BadRow(where, reason)
            continue
        clips = obj.get("clips")
        if not isinstance(clips, list) or not clips:
            yield BadRow(where, "missing clips list")
            continue
        for i, clip in enumerate(clips):
            here = f"{where}#clip{i}"
            if not isinstance(clip, dict):
                yield BadRow(here, "clip is not an object")
                continue
            vid = clip.get("clip_id") or obj.get("video_id") or clip.get("clip_path")
            yield _record(here, clip.get("clip_path"), clip.get("caption"), vid)


EGO4D_WINDOW = 4.0  # seconds of video around each narration timestamp


@loader("ego4d")
def load_ego4d(path: str) -> Iterator[Record | BadRow]:
    """Ego4D narration.json: {video_uid: {narration_pass_1: {narrations: [...]}}}.

    Each narration becomes the clip of EGO4D_WINDOW seconds centred on its timestamp in
    {video_uid}.mp4; the caption is the narration text without its "#C " tag.
    """
    try:
        with storage.open_text(path) as f:
            videos = json.load(f)
    except json.JSONDecodeError as e:
        yield BadRow(f"{path}:{e.lineno}", f"bad JSON: {e.msg}")
        return
    if not isinstance(videos, dict):
        yield BadRow(path, "not a JSON object of videos")
        return
    for uid, entry in videos.items():
        passes = [v for k, v in sorted(entry.items()) if k.startswith("narration_pass")] if isinstance(entry, dict) else []
        narrations = [n for p in passes if isinstance(p, dict) for n in p.get("narrations") or []]
        if not narrations:
            yield BadRow(f"{path}:{uid}", "no narrations")
            continue
        for i, n in enumerate(narrations):
            where = f"{path}:{uid}#{i}"
            if not isinstance(n, dict) or not isinstance(n.get("timestamp_sec"), (int, float)):
                yield BadRow(where, "narration without timestamp_sec")
                continue
            text = str(n.get("narration_text") or "").replace("#C ", "").replace("#c ", "").strip()
            t = float(n["timestamp_sec"])
            start = max(0.0, t - EGO4D_WINDOW / 2)
            yield _record(where, f"{uid}.mp4", text or None, uid, start, start + EGO4D_WINDOW)
