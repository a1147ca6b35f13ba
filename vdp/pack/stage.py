"""Stage 1 core: one record -> one webdataset sample, and planned tars written from the results.

`pack_record` runs in the worker processes and returns the sample's tar members, a reason
(an error) or the filter rule it failed; `write_planned_tars` runs in the parent, pulls results
in record order and writes each tar (plus its sidecar: its errors and filtered records, and its
accounting: vdp.run.accounting) atomically, skipping tars a previous run finished.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2

from vdp.errors import RecordError, error_entry, jsonl_bytes
from vdp.io import storage
from vdp.io.tario import write_bytes_atomically, write_tar_atomically
from vdp.media.clip import cut_clip
from vdp.media.decord_backend import decode_chosen_decord
from vdp.media.signals import WORK_SIDE, compute_signals
from vdp.media.spans import requested_span
from vdp.media.video import decode_chosen, scan_video
from vdp.pack.conversations import with_frames
from vdp.pack.filters import Filter, failed, filtered_entry
from vdp.pack.locate import locate, needs_locating, resolve
from vdp.pack.manifest import BadRow, Record
from vdp.pack.plan import TarPlan, sample_key
from vdp.pack.samplers import SAMPLERS, SamplerOptions, choose_uniform
from vdp.run.accounting import TarTally, write_tar_accounting
from vdp.run.pool import TimeoutAlarm, WorkFailure

STATE_DIR = ".pack"  # per-tar sidecars (errors, filtered) and the flags of the run, inside --save_path
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class PackOptions:
    type: str  # "video-only" or a sampler name
    sampler: SamplerOptions
    max_side: int = 1280
    jpeg_quality: int = 95
    decode_threads: int = 1
    backend: str = "av"  # "decord" only for un
    clip_mode: str = "copy"  # video-only records with a span: "copy" (remux from a key frame) or "exact"
    signals: bool = False  # vdp.media.signals into the json (video-only: on signal_frames frames decoded for them)
    signal_frames: int = 4  # video-only: frames decoded for the signals, evenly spaced
    filters: tuple[Filter, ...] = ()  # a record failing one is filtered, not packed


@dataclass(frozen=True)
class WorkItem:
    index: int
    entry: Record | BadRow
    path: str  # the video path resolved for opening ("" for a bad row)
    root: str = ""  # the folder relative paths resolve against (--video_root, else the manifest's)
    data: bytes | None = None  # the file's bytes when fetched ahead (object storage)


PREFETCH_LIMIT = 64 * 1024 * 1024  # larger objects are streamed by the worker instead


def fetch_ahead(item: WorkItem) -> WorkItem:
    """The item with its video's bytes, for a remote video under PREFETCH_LIMIT.

    Any failure leaves the item as it was: the worker meets it again and reports it.
    """
    if isinstance(item.entry, BadRow) or not (storage.is_remote(item.path) or storage.is_remote(item.root)):
        return item
    try:
        item = located(item)
        found = storage.stat(item.path)
        if found is None or found[0] != "file" or not 0 < found[1] <= PREFETCH_LIMIT:
            return item
        return dataclasses.replace(item, data=storage.read_bytes(item.path))
    except Exception:  # noqa: BLE001 - the worker's own attempt reports the reason
        return item


def located(item: WorkItem) -> WorkItem:
    """The item with its video found: a pre-cut clip, or the extension a `.*` path has on disk."""
    if not needs_locating(item.entry):
        return item
    found = locate(item.entry, item.root)
    return dataclasses.replace(item, entry=found, path=resolve(found.video_path, item.root))


@dataclass(frozen=True)
class Packed:
    members: list[tuple[str, bytes]] | None  # None when the record failed or was filtered
    reason: str = ""
    filtered: dict | None = None  # the filter it failed: {"rule", "value", "threshold"}
    signals: dict | None = None  # the packed sample's json `signals`, for its tar's stats
    seconds: float = 0.0  # the record's time in the worker


_OPTIONS: PackOptions | None = None


def init_worker(options: PackOptions) -> None:
    """Pool initializer (OpenCV's thread count is set by the pool, in the parent)."""
    global _OPTIONS
    _OPTIONS = options


def pack_record(item: WorkItem) -> Packed:
    """Build one sample (see `_pack_record`), timed for its tar's stats."""
    clock = time.perf_counter()
    return dataclasses.replace(_pack_record(item), seconds=time.perf_counter() - clock)


def _pack_record(item: WorkItem) -> Packed:
    """Build one sample; every failure comes back as a reason, never an exception.

    An exception no rule expects (a bug) becomes an "unexpected error" naming its type and
    place: one record must not take the rest of its tar, or the run, down with it.
    """
    if isinstance(item.entry, BadRow):
        return Packed(None, f"bad row: {item.entry.reason}")
    try:
        return _build_sample(located(item), _OPTIONS)
    except RecordError as e:
        return Packed(None, str(e))
    except FileNotFoundError as e:
        return Packed(None, f"missing file: {item.path}{storage.status_note(e)}")
    except IsADirectoryError:
        return Packed(None, f"not a file: {item.path}")
    except PermissionError as e:
        return Packed(None, f"unreadable: permission denied: {item.path}{storage.status_note(e)}")
    except storage.URLReadError as e:  # still failing after the retries: the message names URL and cause
        return Packed(None, f"unreadable: {e}")
    except av.error.FFmpegError as e:
        return Packed(None, f"undecodable: {' '.join(str(e).split())[:200]}")
    except MemoryError:
        return Packed(None, "out of memory while decoding")
    except TimeoutAlarm:
        raise  # call_with_alarm's own: it turns it into the timeout reason
    except Exception as e:  # noqa: BLE001 - a bug met by one record must not stop the run
        return Packed(None, unexpected_reason(e))


def unexpected_reason(e: Exception) -> str:
    """One line naming the exception's type, message and where it was raised (a bug to report)."""
    reason = f"unexpected error: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return reason
    path = frames[-1].filename
    name = os.path.relpath(path, _REPO) if path.startswith(_REPO + os.sep) else os.path.basename(path)
    return f"{reason} (at {name}:{frames[-1].lineno})"


def _check_file(path: str) -> int:
    """The file's size; a missing, folder or empty path raises (one request on object storage)."""
    kind, size = storage.stat(path, missing_ok=False)  # missing: FileNotFoundError (with a URL's status)
    if kind == "directory":
        raise IsADirectoryError(path)
    if size == 0:
        raise RecordError(f"empty file: {path}")
    return size


def _base_json(record: Record, meta, span: tuple[float, float] | None = None) -> dict:
    doc = {
        "caption": record.caption,
        "video_id": record.video_id or os.path.splitext(os.path.basename(record.video_path))[0],
        "source": record.video_path,
        "width": meta.width,
        "height": meta.height,
        "fps": meta.fps,
        "duration": meta.duration,
        "num_frames": meta.num_frames,
    }
    if span is not None:  # the span used: the record's, cut to the video's end
        doc["span"] = [round(span[0], 6), round(span[1], 6)]
    if record.meta:
        doc["meta"] = record.meta
    if record.conversations:  # video-only keeps them as written; frame samples put the frames in
        doc["conversations"] = record.conversations
    return doc


def _encode_json(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _video_source(item: WorkItem, size: int):
    """What PyAV opens: a local path (it reads files itself, fastest), else the bytes fetched
    ahead or a file object on the object (never staged on disk)."""
    if item.data is not None:
        return io.BytesIO(item.data)
    if storage.is_remote(item.path):
        return storage.open_read(item.path, known_size=size)
    return item.path


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower() or "mp4"


def _whole_video(item: WorkItem) -> tuple[dict, str, bytes]:
    """The source file's bytes unchanged, checked (opens, packets read to the end): json, extension, bytes."""
    data = item.data if item.data is not None else storage.read_bytes(item.path)
    return _base_json(item.entry, scan_video(data)), _extension(item.path), data


def _clip(item: WorkItem, span, size: int, mode: str) -> tuple[dict, str, bytes]:
    """The span cut out as a video file of its own; the json describes the clip written."""
    clip = cut_clip(_video_source(item, size), span, _extension(item.path), mode)
    doc = _base_json(item.entry, scan_video(clip.data), clip.span)
    doc["span_written"] = list(clip.written)
    return doc, clip.ext, clip.data


def _video_signals(data: bytes, count: int) -> dict:
    """The signals of a video file from `count` frames at the un positions, decoded small for them
    (only what those frames depend on is decoded), plus the frames' times."""
    opts = SamplerOptions(num_frames=count)
    decoded = decode_chosen(io.BytesIO(data), lambda frames: choose_uniform(frames, opts), max_side=WORK_SIDE,
                            needs_types=False)
    images = [decoded.images[i] for i in decoded.chosen]
    times = [decoded.frames[i].time for i in decoded.chosen]
    return {**compute_signals(images, times), "t": [round(t, 3) for t in times]}


def _unless_filtered(doc: dict, options: PackOptions, members) -> Packed:
    """The sample (`members()` builds it), or the filter its json fails."""
    verdict = failed(doc, options.filters)
    return Packed(None, filtered=verdict) if verdict else Packed(members(), signals=doc.get("signals"))


def _build_sample(item: WorkItem, options: PackOptions) -> Packed:
    record, key = item.entry, sample_key(item.index)
    span = requested_span(record.start, record.end)  # a span bad on its own fails before any read
    size = len(item.data) if item.data is not None else _check_file(item.path)
    if options.type == "video-only":
        doc, ext, data = _whole_video(item) if span is None else _clip(item, span, size, options.clip_mode)
        if options.signals:
            doc["signals"] = _video_signals(data, options.signal_frames)
        return _unless_filtered(doc, options, lambda: [(f"{key}.json", _encode_json(doc)), (f"{key}.{ext}", data)])

    sampler = SAMPLERS[options.type]
    choose = lambda frames: sampler.choose(frames, options.sampler)  # noqa: E731
    if options.backend == "decord":
        decoded = decode_chosen_decord(item.path, choose, span=span, max_side=options.max_side)
    else:
        decoded = decode_chosen(
            _video_source(item, size), choose, span, options.max_side, options.decode_threads,
            needs_types=sampler.needs_types,
        )
    chosen = [decoded.frames[i] for i in decoded.chosen]
    names = [str(n) for n in range(len(chosen))]
    doc = _base_json(record, decoded.meta, decoded.span)
    doc["frames"] = [
        {"name": name, "index": f.index, "t": round(f.time, 3), "type": "I" if f.type == "I" else "P"}
        for name, f in zip(names, chosen)
    ]
    doc["image"] = names
    prompt = sampler.prompt(chosen, decoded.meta.num_frames, options.sampler)
    if record.conversations:  # instruction data: the frames stand where the video placeholder is
        doc["conversations"] = with_frames(record.conversations, prompt)
    else:
        doc["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": record.caption}]
    if options.signals:
        doc["signals"] = compute_signals([decoded.images[f.index] for f in chosen], [f.time for f in chosen])
    return _unless_filtered(doc, options, lambda: _frame_members(key, doc, names, chosen, decoded.images, options))


def _frame_members(key: str, doc: dict, names: list[str], chosen, images, options: PackOptions) -> list:
    """The json and one JPEG per chosen frame."""
    members = [(f"{key}.json", _encode_json(doc))]
    params = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
    encoded: dict[int, bytes] = {}
    for name, f in zip(names, chosen):
        if f.index not in encoded:  # a short video may repeat a frame: encode it once
            ok, buf = cv2.imencode(".jpg", images[f.index], params)
            if not ok:
                raise RecordError(f"jpeg encode failed for frame {f.index}")
            encoded[f.index] = buf.tobytes()
        members.append((f"{key}.{name}.jpg", encoded[f.index]))
    return members


# --- the parent side: tars from ordered results ------------------------------------------------


def sidecar_path(save_path: str, plan: TarPlan) -> str:
    """The tar's records that are not in it, in record order: errors (`reason`) and filtered (`rule`)."""
    return storage.join(save_path, STATE_DIR, plan.name + ".errors.jsonl")


def is_done(save_path: str, plan: TarPlan) -> bool:
    """A tar is finished when it and its errors sidecar both exist (sidecar is written first)."""
    return storage.exists(storage.join(save_path, plan.name)) and storage.exists(sidecar_path(save_path, plan))


@dataclass
class TarResult:
    plan: TarPlan
    packed: int
    errors: list[dict]
    filtered: list[dict] = dataclasses.field(default_factory=list)


def write_planned_tars(
    save_path: str, plans: list[TarPlan], items: list[WorkItem], results: Iterator, status: bool = False
) -> Iterator[TarResult]:
    """Consume `results` (one per item, in order) and write each planned tar when complete.

    `status`: also each tar's per-record status file (--status parquet).
    """
    by_index = {it.index: it for it in items}
    for plan in plans:
        tally = TarTally(plan.name)
        tar_path = storage.join(save_path, plan.name)

        def members(plan=plan, tally=tally, tar_path=tar_path):
            for index in range(plan.start, plan.end):
                item, out = by_index[index], next(results)
                if isinstance(out, WorkFailure):
                    out = Packed(None, out.reason)
                key = sample_key(index)
                source = item.entry.where if isinstance(item.entry, BadRow) else item.entry.video_path
                if out.members is None:
                    row = (filtered_entry(key, source, out.filtered) if out.filtered is not None
                           else error_entry(key, source, out.reason))
                    tally.add_left_out(row, out.seconds)
                else:
                    tally.add_packed(key, source, out.members, out.signals, out.seconds)
                    yield from out.members
            # Still inside the tar's temp file: its accounting, then the sidecar (with the tar, the
            # mark of a finished tar) land before the tar is renamed, so a tar under its final name
            # always has its errors and filtered records and its stats beside it.
            write_tar_accounting(tar_path, tally, status)
            write_bytes_atomically(sidecar_path(save_path, plan), jsonl_bytes(tally.left_out))

        write_tar_atomically(tar_path, members())
        yield TarResult(plan, tally.packed, tally.errors, tally.filtered)


def _sidecar_rows(save_path: str, plan: TarPlan) -> list[dict]:
    data = storage.read_bytes(sidecar_path(save_path, plan)).decode("utf-8")
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def finished_errors(save_path: str, plan: TarPlan) -> list[dict]:
    return [r for r in _sidecar_rows(save_path, plan) if "reason" in r]


def finished_filtered(save_path: str, plan: TarPlan) -> list[dict]:
    return [r for r in _sidecar_rows(save_path, plan) if "rule" in r]


@dataclass(frozen=True)
class TarUnit:
    """One planned tar and its records: the unit the runner resumes, and a Ray task writes whole."""

    plan: TarPlan
    items: list[WorkItem]


def tar_items(unit: TarUnit) -> list[WorkItem]:
    return unit.items


def write_unit(save_path: str, unit: TarUnit, results: Iterator, status: bool = False) -> TarResult:
    """The tar of `unit` from its records' results (pulled in order): in the parent, or in a Ray task."""
    return next(write_planned_tars(save_path, [unit.plan], unit.items, results, status))
