"""A shard sample's raw members -> its fields, the same for webdataset, wids and energon readers.

Stage-2 ids are inline in the json (`--ids_format json`) or `.npy` members (`npy`); images are
the JPEGs the json's `image` list names, in that order.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
import torch

from vdp.media.jpeg import decode_jpeg


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """H×W×3 uint8 RGB; ValueError when the bytes are not a JPEG."""
    image = decode_jpeg(data)
    if image is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _member(raw: dict, name: str) -> bytes:
    # webdataset and energon name members "0.jpg" and give bytes; wids keeps the leading dot
    # (".0.jpg") and, without transformations, gives a stream
    for key in (name, "." + name):
        if key in raw:
            value = raw[key]
            return value.getvalue() if hasattr(value, "getvalue") else value
    raise ValueError(f"sample {raw.get('__key__')}: no member {name!r}")


def _json(raw: dict) -> dict:
    doc = _member(raw, "json")
    return doc if isinstance(doc, dict) else json.loads(doc)


def _images(raw: dict, names: list[str]) -> list[np.ndarray]:
    return [decode_jpeg_rgb(_member(raw, f"{n}.jpg")) for n in names]


def video_frames_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Stage-1 `un`/`kf` sample -> frames (T×H×W×3 uint8), timestamps, frame_types, caption,
    conversations, video_id and `info` (every other json field)."""
    doc = _json(raw)
    frames = doc.get("frames") or []
    names = [str(n) for n in doc.get("image") or [f["name"] for f in frames]]
    by_name = {str(f["name"]): f for f in frames}
    pixels = _images(raw, names)
    known = {"frames", "image", "caption", "conversations", "video_id"}
    return {
        "frames": torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros((0, 0, 0, 3), dtype=torch.uint8),
        "timestamps": [float(by_name.get(n, {}).get("t", float("nan"))) for n in names],
        "frame_types": [str(by_name.get(n, {}).get("type", "")) for n in names],
        "caption": doc.get("caption", ""),
        "conversations": doc.get("conversations") or [],
        "video_id": str(doc.get("video_id", "")),
        "info": {k: v for k, v in doc.items() if k not in known},
    }


def _array(raw: dict, doc: dict, name: str, dtype) -> torch.Tensor:
    if name in doc:
        return torch.from_numpy(np.asarray(doc[name], dtype=dtype))
    return torch.from_numpy(np.load(io.BytesIO(_member(raw, f"{name}.npy"))).astype(dtype, copy=False))


def packed_sequence_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Stage-2 sequence -> input_ids (L int64), loss_mask (L uint8, 1 on response tokens),
    sample_lengths, images (H×W×3 uint8 each, in block order) and sources."""
    doc = _json(raw)
    names = [str(n) for n in doc.get("image") or []]
    return {
        "input_ids": _array(raw, doc, "input_ids", np.int64),
        "loss_mask": _array(raw, doc, "loss_mask", np.uint8),
        "sample_lengths": [int(n) for n in doc["sample_lengths"]],
        "images": [torch.from_numpy(p) for p in _images(raw, names)],
        "sources": [str(s) for s in doc.get("sources") or []],
    }


def is_read_member(part: str) -> bool:
    """The members these functions read; a reader can skip the rest."""
    return part == "json" or part.endswith(".jpg") or part.endswith(".npy")
