"""Index files for the loaders that read our shards: the seed's Megatron pickle, wids, Megatron-Energon.

Which tars each index lists follows from how its loader reads them:
- Megatron pickle (`{"url", "nsamples"}`): a count of the tar's sound samples, as the seed wrote
  it; every tar that reads to its end and has at least one sound sample.
- wids: samples are addressed by position, so `nsamples` must be the tar's true sample count and
  a bad sample cannot be skipped: only tars whose every sample is sound are listed.
- energon: `.tar.idx` holds each sample's byte offset and the tar's end, `shard_counts` the true
  counts, and bad samples are listed in split.yaml's `exclude` as `shard/key`, which energon's
  reader skips; tars that do not read to their end are left out.
Every file is written atomically, so a reader never sees half an index. Any of them may go to
s3:// or oss:// (vdp.io.storage); a remote dataset's tars are listed under their own URLs.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable

import numpy as np
import yaml

from vdp.index.scan import TarScan
from vdp.index.validate import ImageTokenIds
from vdp.io import storage
from vdp.io.tario import write_bytes_atomically

WIDS_KIND = "wids-shard-index-v1"
ENERGON_DIR = ".nv-meta"  # energon's metadata folder inside the dataset folder


def default_url(scan: TarScan) -> str:
    """Where the tar was scanned: its absolute path, or its s3:// / oss:// URL."""
    return storage.absolute(scan.path)


def prefixed_url(prefix: str) -> Callable[[TarScan], str]:
    """URLs under another root, e.g. `s3://bucket/set/` for tars scanned from a local copy."""
    return lambda scan: prefix.rstrip("/") + "/" + scan.name.replace(os.sep, "/")


def megatron_entries(scans: list[TarScan], url_of: Callable[[TarScan], str] = default_url) -> list[dict]:
    return [{"url": url_of(s), "nsamples": s.valid} for s in scans if not s.broken and s.valid]


def write_megatron_pkl(path: str, entries: list[dict]) -> None:
    write_bytes_atomically(path, pickle.dumps(entries, protocol=4))


def wids_index(name: str, scans: list[TarScan], url_of: Callable[[TarScan], str] = default_url) -> dict:
    clean = [s for s in scans if not s.broken and s.samples and s.valid == s.samples]
    shardlist = [{"url": url_of(s), "nsamples": s.samples, "filesize": s.size} for s in clean]
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": name, "shardlist": shardlist}


def write_json(path: str, doc: dict) -> None:
    write_bytes_atomically(path, json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n")


def tar_idx_bytes(offsets: list[int]) -> bytes:
    """energon's `.tar.idx`: each sample's header offset, then the tar's end, as 8-byte little-endian."""
    return np.asarray(offsets, dtype="<u8").tobytes()


def energon_dataset(scans: list[TarScan], image_ids: ImageTokenIds) -> dict:
    """dataset.yaml: stage-2 sequences and stage-1 frames load as vdp.energon's typed samples
    (decoded by its loaders, so energon's own decoder is off); whole videos, or shards of both
    stages mixed, stay a CrudeWebdataset for the user's cooker."""
    sound = [s for s in scans if not s.broken and s.samples]
    if sound and all(s.tokens for s in sound):
        sample_type, loader = "PackedSequenceSample", "packed_sequence_loader"
    elif sound and all(s.images and not s.tokens for s in sound):
        sample_type, loader = "VideoFramesSample", "video_frames_loader"
    else:
        return {"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}
    return {
        "sample_type": {"__module__": "vdp.energon", "__class__": sample_type},
        "sample_loader": {"__module__": "vdp.energon", "__function__": loader},
        "part_filter": {"__module__": "vdp.energon", "__function__": "frame_parts"},
        "decoder": None,
        # the task encoders find <im_start> etc. here; samples carry it as __subflavors__
        "subflavors": {"vdp_image_tokens": {"start": image_ids.start, "patch": image_ids.patch, "end": image_ids.end}},
    }


def energon_files(scans: list[TarScan], image_ids: ImageTokenIds) -> dict[str, bytes]:
    """Path (relative to the dataset folder) -> bytes of every file `energon prepare` would leave."""
    sound = [s for s in scans if not s.broken and s.samples]
    files = {s.name + ".idx": tar_idx_bytes(s.offsets) for s in sound}
    info = {"shard_counts": {s.name: s.samples for s in sound}}
    split = {
        "split_parts": {"train": [s.name for s in sound]},
        "exclude": [f"{s.name}/{key}" for s in sound for key in s.bad_keys],
    }
    dataset = energon_dataset(scans, image_ids)
    files[f"{ENERGON_DIR}/.info.json"] = json.dumps(info, indent=2).encode() + b"\n"
    files[f"{ENERGON_DIR}/split.yaml"] = yaml.safe_dump(split, sort_keys=False).encode()
    files[f"{ENERGON_DIR}/dataset.yaml"] = yaml.safe_dump(dataset, sort_keys=False).encode()
    return files


def write_energon(root: str, scans: list[TarScan], image_ids: ImageTokenIds) -> tuple[int, int]:
    """Write energon's metadata into the dataset folder (or next to the tars in the bucket);
    returns (shards listed, samples the split.yaml being replaced excluded and this one does not:
    e.g. the duplicates a vdp-dedup --energon run excluded)."""
    files = energon_files(scans, image_ids)
    readmitted = len(_excluded(root) - set(yaml.safe_load(files[f"{ENERGON_DIR}/split.yaml"])["exclude"]))
    for rel, data in files.items():
        write_bytes_atomically(storage.join(root, rel), data)
    return sum(1 for rel in files if rel.endswith(".tar.idx")), readmitted


def _excluded(root: str) -> set[str]:
    """The `exclude` of the dataset's current split.yaml; empty when there is none or it is unreadable."""
    path = storage.join(root, ENERGON_DIR, "split.yaml")
    try:
        doc = yaml.safe_load(storage.read_bytes(path)) if storage.exists(path) else None
    except (OSError, yaml.YAMLError):
        return set()
    return set(doc.get("exclude") or []) if isinstance(doc, dict) else set()
