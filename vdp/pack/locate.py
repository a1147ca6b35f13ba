"""Find the file a record names: a pre-cut clip when there is one, else the source video.

Datasets name videos without saying how they were downloaded: yt-dlp writes `.mp4`, `.webm`
or `.mkv` as the site serves it, and some users cut clips beforehand. A record's path ending
in `.*` stands for the first existing file with a common video extension; a record's
`clip_path` is a file holding exactly its span, preferred over seeking in the source.
"""

from __future__ import annotations

import dataclasses
import os

from vdp.errors import RecordError
from vdp.io import storage
from vdp.pack.manifest import Record

# In the order tried: what yt-dlp and cutting scripts write most, first.
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi", "m4v", "flv", "ts")


def resolve(path: str, root: str) -> str:
    """A record's path made openable: absolute paths and URLs as they are, others under `root`."""
    if os.path.isabs(path) or storage.is_remote(path):
        return path
    return storage.join(root, path)


def expand(pattern: str) -> list[str]:
    """The paths a pattern stands for, in the order they are tried."""
    if pattern.endswith(".*"):
        return [pattern[:-1] + ext for ext in VIDEO_EXTS]
    return [pattern]


def first_existing(pattern: str, root: str) -> str | None:
    """The first of the pattern's paths (as written) whose file exists under `root`."""
    for path in expand(pattern):
        found = storage.stat(resolve(path, root))
        if found is not None and found[0] == "file":
            return path
    return None


def needs_locating(record: Record) -> bool:
    return bool(record.clip_path) or record.video_path.endswith(".*")


def locate(record: Record, root: str) -> Record:
    """The record with `video_path` a file that exists (and no span when it is the pre-cut clip).

    Paths stay as the annotation writes them (the json's `source`), with the extension found;
    raises RecordError naming every pattern tried when none exists.
    """
    if record.clip_path:
        clip = first_existing(record.clip_path, root)
        if clip is not None:
            meta = dict(record.meta or {}, span_in_source=[record.start, record.end])
            return dataclasses.replace(record, video_path=clip, start=None, end=None, clip_path="", meta=meta)
    if not record.video_path.endswith(".*"):
        return dataclasses.replace(record, clip_path="")
    video = first_existing(record.video_path, root)
    if video is None:
        tried = " or ".join(resolve(p, root) for p in (record.clip_path, record.video_path) if p)
        exts = ",".join(VIDEO_EXTS)
        raise RecordError(f"missing file: {tried} (.* = {exts})")
    return dataclasses.replace(record, video_path=video, clip_path="")
