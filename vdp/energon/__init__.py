"""Megatron-Energon sample types and task encoders for our shards (install with the [energon] extra).

`vdp-index --energon` writes a dataset.yaml naming these types, so `get_train_dataset` yields
`PackedSequenceSample` (stage-2 shards) or `VideoFramesSample` (stage-1 `un`/`kf` shards) with no
user code; pass `PackedSequenceEncoder` / `VideoFramesEncoder` as the task encoder for batches.
"""

from vdp.energon.encoders import (
    PackedSequenceBatch,
    PackedSequenceEncoder,
    VideoFramesBatch,
    VideoFramesEncoder,
)
from vdp.energon.samples import (
    PackedSequenceSample,
    VideoFramesSample,
    frame_part,
    frame_parts,
    load_packed_sequence,
    load_video_frames,
    packed_sequence_loader,
    video_frames_loader,
)
from vdp.train.batches import IGNORE_INDEX, labels_for, position_ids_for, resize_with_padding
from vdp.train.members import decode_jpeg_rgb

__all__ = [
    "IGNORE_INDEX",
    "PackedSequenceBatch",
    "PackedSequenceEncoder",
    "PackedSequenceSample",
    "VideoFramesBatch",
    "VideoFramesEncoder",
    "VideoFramesSample",
    "decode_jpeg_rgb",
    "frame_part",
    "frame_parts",
    "labels_for",
    "load_packed_sequence",
    "load_video_frames",
    "packed_sequence_loader",
    "position_ids_for",
    "resize_with_padding",
    "video_frames_loader",
]
