"""Stage 1 core: one record -> one webdataset sample, and planned tars written from the results.

`pack_record` runs in the worker processes and returns either the sample's tar members or a
reason; `write_planned_tars` runs in the parent, pulls results in record order and writes each
tar (plus its errors sidecar) atomically, skipping tars a previous run finished.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2

from loaders import BadRow, Record
from samplers import SAMPLERS, SamplerOptions
from vdp import storage
from vdp.decord_backend import decode_chosen_decord
from vdp.errors import RecordError, error_entry, jsonl_bytes
from vdp.locate import locate, needs_locating
from vdp.plan import TarPlan, sample_key
from vdp.pool import WorkFailure, call_with_alarm
from vdp.tario import write_bytes_atomically, write_tar_atomically
from vdp.video import decode_chosen, scan_video

STATE_DIR = ".pack"  # per-tar errors sidecars and the flags of the run, inside --save_path


@dataclass(frozen=True)
class PackOptions:
    type: str  # "video-only" or a sampler name
    sampler: SamplerOptions
    max_side: int = 1280
    jpeg_quality: int = 95
    decode_threads: int = 1
    backend: str = "av"  # "decord" only for un


@dataclass(frozen=True)
class WorkItem:
    index: int
    entry: Record | BadRow
    path: str  # the video path resolved for opening ("" for a bad row)
    data: bytes | None = None  # the file's bytes when fetched ahead (object storage)


PREFETCH_LIMIT = 64 * 1024 * 1024  # larger objects are streamed by the worker instead


def fetch_ahead(item: WorkItem) -> WorkItem:
    """The item with its video's bytes, for a remote video under PREFETCH_LIMIT.

    Any failure leaves the item as it was: the worker meets it again and reports it.
    """
    if isinstance(item.entry, BadRow) or not storage.is_remote(item.path):
        return item
    try:
        found = storage.stat(item.path)
        if found is None or found[0] != "file" or not 0 < found[1] <= PREFETCH_LIMIT:
            return item
        return dataclasses.replace(item, data=storage.read_bytes(item.path))
    except Exception:  # noqa: BLE001 - the worker's own attempt reports the reason
        return item


@dataclass(frozen=True)
class Packed:
    members: list[tuple[str, bytes]] | None  # None when the record failed
    reason: str = ""


_OPTIONS: PackOptions | None = None


def init_worker(options: PackOptions) -> None:
    """Pool initializer (OpenCV's thread count is set by the pool, in the parent)."""
    global _OPTIONS
    _OPTIONS = options


def pack_record(item: WorkItem) -> Packed:
    """Build one sample; every expected failure comes back as a reason, never an exception."""
    if isinstance(item.entry, BadRow):
        return Packed(None, f"bad row: {item.entry.reason}")
    try:
        if needs_locating(item.entry):
            found = locate(item.entry)
            item = dataclasses.replace(item, entry=found, path=found.video_path)
        return Packed(_build_sample(item, _OPTIONS))
    except RecordError as e:
        return Packed(None, str(e))
    except FileNotFoundError:
        return Packed(None, f"missing file: {item.path}")
    except IsADirectoryError:
        return Packed(None, f"not a file: {item.path}")
    except PermissionError:
        return Packed(None, f"unreadable: permission denied: {item.path}")
    except av.error.FFmpegError as e:
        return Packed(None, f"undecodable: {' '.join(str(e).split())[:200]}")
    except MemoryError:
        return Packed(None, "out of memory while decoding")


def _check_file(path: str) -> int:
    """The file's size; a missing, folder or empty path raises (one request on object storage)."""
    found = storage.stat(path)
    if found is None:
        raise FileNotFoundError(path)
    kind, size = found
    if kind == "directory":
        raise IsADirectoryError(path)
    if size == 0:
        raise RecordError(f"empty file: {path}")
    return size


def _base_json(record: Record, meta) -> dict:
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
    if record.start is not None or record.end is not None:
        doc["span"] = [record.start or 0.0, record.end]
    if record.meta:
        doc["meta"] = record.meta
    return doc


def _encode_json(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _build_sample(item: WorkItem, options: PackOptions) -> list[tuple[str, bytes]]:
    record, key = item.entry, sample_key(item.index)
    size = len(item.data) if item.data is not None else _check_file(item.path)
    if options.type == "video-only":
        data = item.data if item.data is not None else storage.read_bytes(item.path)
        meta = scan_video(data)
        ext = os.path.splitext(item.path)[1].lstrip(".").lower() or "mp4"
        return [(f"{key}.json", _encode_json(_base_json(record, meta))), (f"{key}.{ext}", data)]

    sampler = SAMPLERS[options.type]
    span = (record.start or 0.0, record.end) if (record.start is not None or record.end is not None) else None
    choose = lambda frames: sampler.choose(frames, options.sampler)  # noqa: E731
    if options.backend == "decord":
        decoded = decode_chosen_decord(item.path, choose, span=span, max_side=options.max_side)
    else:
        # PyAV reads local files itself (fastest); objects come as bytes fetched ahead or as
        # file objects, never staged on disk
        if item.data is not None:
            source = io.BytesIO(item.data)
        elif storage.is_remote(item.path):
            source = storage.open_read(item.path, known_size=size)
        else:
            source = item.path
        decoded = decode_chosen(
            source, choose, span, options.max_side, options.decode_threads, needs_types=sampler.needs_types
        )
    chosen = [decoded.frames[i] for i in decoded.chosen]
    names = [str(n) for n in range(len(chosen))]
    doc = _base_json(record, decoded.meta)
    doc["frames"] = [
        {"name": name, "index": f.index, "t": round(f.time, 3), "type": "I" if f.type == "I" else "P"}
        for name, f in zip(names, chosen)
    ]
    doc["image"] = names
    prompt = sampler.prompt(chosen, decoded.meta.num_frames, options.sampler)
    doc["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": record.caption}]
    members = [(f"{key}.json", _encode_json(doc))]
    params = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
    encoded: dict[int, bytes] = {}
    for name, f in zip(names, chosen):
        if f.index not in encoded:  # a short video may repeat a frame: encode it once
            ok, buf = cv2.imencode(".jpg", decoded.images[f.index], params)
            if not ok:
                raise RecordError(f"jpeg encode failed for frame {f.index}")
            encoded[f.index] = buf.tobytes()
        members.append((f"{key}.{name}.jpg", encoded[f.index]))
    return members


# --- the parent side: tars from ordered results ------------------------------------------------


def sidecar_path(save_path: str, plan: TarPlan) -> str:
    return storage.join(save_path, STATE_DIR, plan.name + ".errors.jsonl")


def is_done(save_path: str, plan: TarPlan) -> bool:
    """A tar is finished when it and its errors sidecar both exist (sidecar is written first)."""
    return storage.exists(storage.join(save_path, plan.name)) and storage.exists(sidecar_path(save_path, plan))


@dataclass
class TarResult:
    plan: TarPlan
    packed: int
    errors: list[dict]


def write_planned_tars(
    save_path: str, plans: list[TarPlan], items: list[WorkItem], results: Iterator, on_record=None
) -> Iterator[TarResult]:
    """Consume `results` (one per item, in order) and write each planned tar when complete."""
    by_index = {it.index: it for it in items}
    for plan in plans:
        errors: list[dict] = []
        packed = 0

        def members(plan=plan, errors=errors):
            nonlocal packed
            for index in range(plan.start, plan.end):
                item, out = by_index[index], next(results)
                if isinstance(out, WorkFailure):
                    out = Packed(None, out.reason)
                if out.members is None:
                    source = item.entry.where if isinstance(item.entry, BadRow) else item.entry.video_path
                    errors.append(error_entry(sample_key(index), source, out.reason))
                else:
                    packed += 1
                    yield from out.members
                if on_record:
                    on_record(out.members is not None)
            # Still inside the tar's temp file: the sidecar lands before the tar is renamed,
            # so a tar under its final name always has its errors beside it.
            write_bytes_atomically(sidecar_path(save_path, plan), jsonl_bytes(errors))

        write_tar_atomically(storage.join(save_path, plan.name), members())
        yield TarResult(plan, packed, errors)


def finished_errors(save_path: str, plan: TarPlan) -> list[dict]:
    data = storage.read_bytes(sidecar_path(save_path, plan)).decode("utf-8")
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@dataclass(frozen=True)
class TarUnit:
    """One planned tar with everything needed to write it anywhere (a Ray task)."""

    plan: TarPlan
    items: list[WorkItem]
    options: PackOptions
    save_path: str
    timeout: float
    s3_endpoint: str | None = None


def pack_tar(unit: TarUnit) -> TarResult:
    """Pack one tar start to end in this process: the same records, order and bytes as the pool."""
    cv2.setNumThreads(1)  # a Ray worker is a fresh process, not a fork: this is safe here
    init_worker(unit.options)
    storage.configure(unit.s3_endpoint)
    results = (call_with_alarm(pack_record, item, unit.timeout) for item in unit.items)
    return next(write_planned_tars(unit.save_path, [unit.plan], unit.items, results))
