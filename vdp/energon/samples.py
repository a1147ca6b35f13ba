"""Typed Megatron-Energon samples for our shards, and the loaders dataset.yaml names.

`vdp-index --energon` writes a dataset.yaml whose `sample_type` is one of these classes and whose
`sample_loader`/`part_filter` are the functions below, so `get_train_dataset(path, …)` yields
typed samples with no code of the user's. The loaders get a shard member's raw bytes (the
dataset.yaml sets `decoder: null`): JPEGs are decoded once, by vdp.train.members with OpenCV, in
the loader worker, instead of by energon's generic decoder and again by the task encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.energon import Sample
from megatron.energon.edataclass import edataclass

from vdp.train.members import is_read_member, packed_sequence_fields, video_frames_fields

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


def load_video_frames(raw: dict[str, Any]) -> dict[str, Any]:
    """energon sample_loader for stage-1 frame shards: raw members -> VideoFramesSample fields."""
    return video_frames_fields(raw)


def load_packed_sequence(raw: dict[str, Any]) -> dict[str, Any]:
    """energon sample_loader for stage-2 shards: raw members -> PackedSequenceSample fields."""
    return packed_sequence_fields(raw)


def frame_part(part: str) -> bool:
    """energon part_filter: the members our loaders read (json, npy arrays, JPEGs)."""
    return is_read_member(part)


# dataset.yaml names a function by `__function__`, and energon's config reader calls it with the
# yaml's arguments (none here): these return the loader and the part filter themselves.
def video_frames_loader():
    return load_video_frames


def packed_sequence_loader():
    return load_packed_sequence


def frame_parts():
    return frame_part
