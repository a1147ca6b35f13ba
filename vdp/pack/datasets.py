"""The built-in dataset loaders: each public annotation format, read exactly as its publisher ships it.

A loader is a function registered under a `--dataset` name. The package reads the manifest
(streaming, any size) and hands the loader one row at a time: a dict for JSON lines, CSV,
TSV and parquet rows and the items of one big JSON array, a (key, value) pair for the
entries of one big JSON object. The loader returns a `Record`, or a `BadRow` saying why the
row is unusable (with `many=True`: any number of them, e.g. the clips of one video). Rows
that are not UTF-8, not JSON or have the wrong number of fields never reach the loader: they
are bad rows already. Bad rows keep their number and go to the errors file; nothing is
dropped.

Paths are as written in the annotation; pack.py resolves relative ones against `--video_root`
(else the manifest's folder). A path ending in `.*` is the first existing file with a common
video extension; `clip_path` is a pre-cut file of the span, used when it exists.

Your own datasets go in the repo's loaders.py (or any file given to --plugin).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from vdp.errors import RecordError
from vdp.pack.conversations import conversation_turns, first_answer
from vdp.pack.manifest import (  # noqa: F401 (re-exported for loaders users write)
    LOADERS,
    BadRow,
    LoaderOptions,
    Record,
    loader,
    make_record,
    parse_span,
    parse_time,
)

# --- the datasets --------------------------------------------------------------------------


@loader("jsonl")
def load_jsonl(obj: dict, where: str, options: LoaderOptions):
    """Our own jsonl: video_path, value (or caption), optional video_id, start, end."""
    caption = obj.get("value", obj.get("caption"))
    return make_record(where, obj.get("video_path"), caption, obj.get("video_id"), obj.get("start"), obj.get("end"))


@loader("table", rows="table")
def load_table(row: dict, where: str, options: LoaderOptions):
    """Any CSV, TSV, jsonl or parquet file, columns named by --video_col, --caption_col, ..."""
    def col(name: str):
        return row.get(name) if name else None

    video = col(options.video_col)
    start, end = col(options.start_col), col(options.end_col)
    return make_record(where, str(video) if video not in (None, "") else None, col(options.caption_col),
                       col(options.id_col) or "", start if start != "" else None, end if end != "" else None)


@loader("webvid", rows="csv", urls=True)
def load_webvid(row: dict, where: str, options: LoaderOptions):
    """WebVid results_*.csv (2M or 10M column order): videos at {page_dir}/{videoid}.mp4."""
    vid, page = (row.get("videoid") or "").strip(), (row.get("page_dir") or "").strip()
    if options.source == "url":
        if not vid or not row.get("contentUrl"):
            return BadRow(where, "missing videoid or contentUrl")
        return make_record(where, row["contentUrl"].strip(), row.get("name"), vid)
    if not vid or not page:
        return BadRow(where, "missing videoid or page_dir")
    return make_record(where, f"{page}/{vid}.mp4", row.get("name"), vid)


INTERNVID_FIELDS = ("YoutubeID", "Start_timestamp", "End_timestamp", "Caption")


@loader("internvid")
def load_internvid(obj: dict, where: str, options: LoaderOptions):
    """InternVid jsonl: YoutubeID, Start_timestamp, End_timestamp, Caption, scores.

    The video is the pre-cut clip {YoutubeID}_{Start}_{End}.* when it exists, else the span
    of the whole download {YoutubeID}.*; the scores go to the json's `meta`.
    """
    vid, start, end = obj.get("YoutubeID"), obj.get("Start_timestamp"), obj.get("End_timestamp")
    if not vid or not isinstance(vid, str):
        return BadRow(where, "missing YoutubeID")
    if start is None or end is None:
        return BadRow(where, "missing Start_timestamp or End_timestamp")
    meta = {k: v for k, v in obj.items() if k not in INTERNVID_FIELDS}
    return make_record(where, f"{vid}.*", obj.get("Caption"), vid, start, end,
                       clip_path=f"{vid}_{start}_{end}.*", meta=meta)


@loader("hd-vila", many=True)
def load_hdvila(obj: dict, where: str, options: LoaderOptions) -> Iterator:
    """HD-VILA-100M hdvila_part*.jsonl: a video with its clips [{clip_id, span}], one record a clip.

    The clip file is {video_id}/{clip_id} (what the release's cutting script writes) when it
    exists, else the span of the whole video {video_id}.*. The release has no captions: a
    clip's `caption`/`text` when present, else --captions by clip_id.
    """
    vid, clips = obj.get("video_id"), obj.get("clip")
    if not vid or not isinstance(vid, str):
        yield BadRow(where, "missing video_id")
        return
    if not isinstance(clips, list) or not clips:
        yield BadRow(where, "missing clip list")
        return
    for i, clip in enumerate(clips):
        here = f"{where}#clip{i}"
        if not isinstance(clip, dict) or not clip.get("clip_id"):
            yield BadRow(here, "clip without clip_id")
            continue
        span = clip.get("span")
        if not isinstance(span, list) or len(span) != 2:
            yield BadRow(here, "clip without span [start, end]")
            continue
        caption = clip.get("caption", clip.get("text"))
        yield make_record(here, f"{vid}.*", caption, clip["clip_id"], span[0], span[1],
                          clip_path=f"{vid}/{clip['clip_id']}", caption_optional=True)


HOW2LINK_SPAN = re.compile(r"^\s*(\d+(?::\d+){0,2}(?:\.\d+)?)\s*-\s*(\d+(?::\d+){0,2}(?:\.\d+)?)\s*$")


@loader("how2link", rows="table", many=True)
def load_how2link(row: dict, where: str, options: LoaderOptions) -> Iterator:
    """Howto-Interlink7M TSV (path, clips = JSON [{clip: "H:MM:SS - H:MM:SS", caption}]), one record a clip.

    Also our earlier jsonl form: {video_id, clips: [{clip_path, caption}]}.
    """
    clips = row.get("clips")
    if isinstance(clips, str):
        try:
            clips = json.loads(clips)
        except json.JSONDecodeError as e:
            yield BadRow(where, f"clips is not JSON: {e.msg}")
            return
    if not isinstance(clips, list) or not clips:
        yield BadRow(where, "missing clips list")
        return
    video = row.get("path")
    for i, clip in enumerate(clips):
        here = f"{where}#clip{i}"
        if not isinstance(clip, dict):
            yield BadRow(here, "clip is not an object")
        elif clip.get("clip_path") or not video:  # the jsonl form: one file a clip
            vid = clip.get("clip_id") or row.get("video_id") or clip.get("clip_path")
            yield make_record(here, clip.get("clip_path"), clip.get("caption"), vid)
        else:
            span = HOW2LINK_SPAN.match(str(clip.get("clip", "")))
            if not span:
                yield BadRow(here, f"bad clip span {clip.get('clip')!r} (want 'H:MM:SS - H:MM:SS')")
                continue
            path = video if "." in video.rsplit("/", 1)[-1] else f"{video}.*"
            yield make_record(here, path, clip.get("caption"), video.rsplit("/", 1)[-1].split(".")[0],
                              span.group(1), span.group(2))


EGO4D_TAG = re.compile(r"(?<!\S)#[A-Za-z_]+(?!\S) ?")


def clean_ego4d_text(text: str) -> str:
    """Ego4D narration text without its tags (#C, #O, #unsure, #summary ...), else unchanged."""
    return EGO4D_TAG.sub("", text).strip()


@loader("ego4d", rows="json-object", many=True)
def load_ego4d(entry: tuple, where: str, options: LoaderOptions) -> Iterator:
    """Ego4D narration.json (v1, v2), streamed: a clip of --ego4d_window seconds around each narration."""
    uid, video = entry
    if not isinstance(video, dict):
        yield BadRow(where, "video entry is not an object")
        return
    passes = ["narration_pass_1", "narration_pass_2"]
    passes = passes if options.ego4d_pass == "both" else [f"narration_pass_{options.ego4d_pass}"]
    narrations = [n for p in passes if isinstance(video.get(p), dict) for n in video[p].get("narrations") or []]
    if not narrations:
        status = video.get("status")
        yield BadRow(where, f"no narrations in {' or '.join(passes)}" + (f" (status {status})" if status else ""))
        return
    half = options.ego4d_window / 2
    for i, n in enumerate(narrations):
        here = f"{where}#{i}"
        t = n.get("timestamp_sec") if isinstance(n, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            yield BadRow(here, "narration without a valid timestamp_sec")
            continue
        text = clean_ego4d_text(str(n.get("narration_text") or ""))
        start = max(0.0, float(t) - half)  # the window keeps its length at the video's start
        yield make_record(here, f"{uid}.mp4", text or None, uid, start, start + options.ego4d_window)


LLAVA_FIELDS = ("video", "conversations")


@loader("llava", rows="json")
def load_llava(obj: dict, where: str, options: LoaderOptions):
    """LLaVA-style instruction data (LLaVA-Video-178K ...): {id, video, conversations, ...}, a JSON array or jsonl.

    The frames go where the first human turn's <image>/<video> placeholder is (see
    vdp/pack/conversations.py); the other keys (id, data_source, ...) go to the json's `meta`.
    """
    rid = obj.get("id")
    here = f"{where}#{rid}" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else where
    video = obj.get("video")
    if isinstance(video, list):
        return BadRow(here, f"video is a list of {len(video)} (one video per record)")
    if not video or not isinstance(video, str):
        return BadRow(here, "missing video" if video in (None, "") else "video is not a path")
    try:
        turns = conversation_turns(obj.get("conversations"))
    except RecordError as e:
        return BadRow(here, str(e))
    meta = {k: v for k, v in obj.items() if k not in LLAVA_FIELDS}
    return make_record(here, video, first_answer(turns), meta=meta, conversations=turns)
