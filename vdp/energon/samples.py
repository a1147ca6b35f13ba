"""Typed Megatron-Energon samples for our shards, and the loaders dataset.yaml names.

`vdp-index --energon` writes a dataset.yaml whose `sample_type` is one of these classes and whose
`sample_loader`/`part_filter` are the functions below, so `get_train_dataset(path, …)` yields
typed samples with no code of the user's. The loaders get a shard member's raw bytes (the
dataset.yaml sets `decoder: null`): JPEGs are decoded here with OpenCV, once, in the loader
worker, instead of by energon's generic decoder and again by the task encoder.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
import torch
from megatron.energon import Sample
from megatron.energon.edataclass import edataclass

# subflavors key under which vdp-index records the image token ids stage 2 used
IMAGE_TOKENS_KEY = "vdp_image_tokens"


@edataclass
class VideoFramesSample(Sample):
    """One stage-1 `un`/`kf` sample: the frames it kept, in order, and what they show."""

    #: T×H×W×3 uint8 RGB, the sample's JPEGs in their `image` order
    frames: torch.Tensor
    #: presentation time of each frame, in seconds from the start of the video
    timestamps: list[float]
    #: "I" / "P" / "B" (picture type the decoder reported) of each frame
    frame_types: list[str]
    caption: str
    #: [{"from": "human"|"gpt", "value": …}, …] with one `<image>`-style placeholder per frame
    conversations: list[dict]
    video_id: str
    #: everything else the sample json holds (source, size, fps, span, meta, …)
    info: dict


@edataclass
class PackedSequenceSample(Sample):
    """One stage-2 sequence: several samples packed into one run of token ids, with their images."""

    #: L int64 token ids
    input_ids: torch.Tensor
    #: L uint8, 1 where the token is part of a response (a training target)
    loss_mask: torch.Tensor
    #: lengths of the packed samples, in order; they sum to L
    sample_lengths: list[int]
    #: the images in the order their `<im_start>` blocks appear, each H×W×3 uint8 RGB
    images: list[torch.Tensor]
    #: the stage-1 keys of the packed samples
    sources: list[str]


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """H×W×3 uint8 RGB; ValueError naming the problem when the bytes are not a JPEG."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _image_bytes(raw: dict, names: list[str]) -> list[bytes]:
    missing = [n for n in names if f"{n}.jpg" not in raw]
    if missing:
        raise ValueError(f"sample {raw['__key__']}: no member for image(s) {missing[:3]}")
    return [raw[f"{n}.jpg"] for n in names]


def load_video_frames(raw: dict[str, Any]) -> dict[str, Any]:
    """energon sample_loader for stage-1 frame shards: raw members -> VideoFramesSample fields."""
    doc = json.loads(raw["json"])
    frames = doc.get("frames") or []
    names = [str(n) for n in doc.get("image") or [f["name"] for f in frames]]
    by_name = {str(f["name"]): f for f in frames}
    pixels = [decode_jpeg_rgb(b) for b in _image_bytes(raw, names)]
    stacked = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros((0, 0, 0, 3), dtype=torch.uint8)
    known = {"frames", "image", "caption", "conversations", "video_id"}
    return {
        "frames": stacked,
        "timestamps": [float(by_name.get(n, {}).get("t", float("nan"))) for n in names],
        "frame_types": [str(by_name.get(n, {}).get("type", "")) for n in names],
        "caption": doc.get("caption", ""),
        "conversations": doc.get("conversations") or [],
        "video_id": str(doc.get("video_id", "")),
        "info": {k: v for k, v in doc.items() if k not in known},
    }


def _array(raw: dict, doc: dict, name: str, dtype) -> torch.Tensor:
    """Ids and masks are inline in the json (--ids_format json) or .npy members (npy)."""
    if name in doc:
        return torch.from_numpy(np.asarray(doc[name], dtype=dtype))
    return torch.from_numpy(np.load(io.BytesIO(raw[f"{name}.npy"])).astype(dtype, copy=False))


def load_packed_sequence(raw: dict[str, Any]) -> dict[str, Any]:
    """energon sample_loader for stage-2 shards: raw members -> PackedSequenceSample fields."""
    doc = json.loads(raw["json"])
    names = [str(n) for n in doc.get("image") or []]
    return {
        "input_ids": _array(raw, doc, "input_ids", np.int64),
        "loss_mask": _array(raw, doc, "loss_mask", np.uint8),
        "sample_lengths": [int(n) for n in doc["sample_lengths"]],
        "images": [torch.from_numpy(decode_jpeg_rgb(b)) for b in _image_bytes(raw, names)],
        "sources": [str(s) for s in doc.get("sources") or []],
    }


def frame_part(part: str) -> bool:
    """energon part_filter: the members our loaders read (json, npy arrays, JPEGs)."""
    return part == "json" or part.endswith(".jpg") or part.endswith(".npy")


# dataset.yaml names a function by `__function__`, and energon's config reader calls it with the
# yaml's arguments (none here): these return the loader and the part filter themselves.
def video_frames_loader():
    return load_video_frames


def packed_sequence_loader():
    return load_packed_sequence


def frame_parts():
    return frame_part
