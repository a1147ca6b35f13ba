"""Task encoders: typed samples -> the tensors a trainer feeds its model.

What a team would otherwise re-derive (and where silent training bugs live) is computed here
once and tested: labels that never cross a packed-sample boundary, position ids that restart at
every packed sample, `cu_seqlens` for variable-length attention, and each image's place in the
token sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from megatron.energon import Batch, DefaultTaskEncoder, Sample, stateless
from megatron.energon.edataclass import edataclass

from vdp.energon.samples import IMAGE_TOKENS_KEY, PackedSequenceSample, VideoFramesSample

IGNORE_INDEX = -100  # labels that are not a target (PyTorch's cross_entropy default ignore_index)


def resize_with_padding(pixels: np.ndarray, size: int, pad_value: int = 0) -> np.ndarray:
    """H×W×3 uint8 -> 3×size×size uint8: scaled so the longer side is `size`, aspect kept, centred
    on a `pad_value` square (LLaVA's pad-to-square, without its mean-colour fill)."""
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        # area averaging when shrinking (no aliasing), bilinear when enlarging
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=interpolation)
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = pixels
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def labels_for(input_ids: torch.Tensor, loss_mask: torch.Tensor, sample_lengths: Sequence[int]) -> torch.Tensor:
    """labels[i] = input_ids[i+1] where token i+1 is a response token (loss_mask 1), else -100.

    The last position of every packed sample is -100 too: its next token belongs to the next
    sample, and a label must never cross that boundary.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    target = loss_mask[1:].bool()
    labels[:-1][target] = input_ids[1:][target]
    ends = torch.as_tensor(np.cumsum(sample_lengths) - 1, dtype=torch.long)
    labels[ends] = IGNORE_INDEX
    return labels


def position_ids_for(sample_lengths: Sequence[int]) -> torch.Tensor:
    """0, 1, … restarting at every packed sample."""
    return torch.cat([torch.arange(n, dtype=torch.long) for n in sample_lengths]) if sample_lengths else torch.zeros(0, dtype=torch.long)


def image_token_ids(sample: Sample, given: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """(<im_start>, <im_patch>, <im_end>) ids: as given to the encoder, else as vdp-index recorded them."""
    if given is not None:
        return given
    recorded = (sample.__subflavors__ or {}).get(IMAGE_TOKENS_KEY)
    if not recorded:
        raise ValueError(
            f"sample {sample.__key__}: no image token ids; pass image_token_ids=(start, patch, end) "
            "or index the dataset with vdp-index --energon (it records them in dataset.yaml)"
        )
    return int(recorded["start"]), int(recorded["patch"]), int(recorded["end"])


def image_block_starts(input_ids: torch.Tensor, ids: tuple[int, int, int], key: str) -> torch.Tensor:
    """Positions of every `<im_start>`, each checked to open `<im_start> <im_patch>… <im_end>`."""
    start, patch, end = ids
    starts = torch.nonzero(input_ids == start).flatten()
    ends = torch.nonzero(input_ids == end).flatten()
    if len(starts) != len(ends) or bool((ends <= starts).any()):
        raise ValueError(f"sample {key}: {len(starts)} <im_start> but {len(ends)} <im_end> ids, or out of order")
    for s, e in zip(starts.tolist(), ends.tolist()):
        if not bool((input_ids[s + 1 : e] == patch).all()):
            raise ValueError(f"sample {key}: the image block at {s} holds ids other than <im_patch>")
    return starts


@edataclass
class EncodedSequence(Sample):
    """One packed sequence, ready to batch (see PackedSequenceBatch for the fields)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    sample_lengths: list[int]
    images: torch.Tensor
    image_positions: torch.Tensor


@edataclass
class PackedSequenceBatch(Batch):
    """B packed sequences, padded to one length L.

    - `input_ids` B×L int64, padded with `pad_id`.
    - `labels` B×L int64: the next token where it is a response token, else -100 (also at every
      packed sample's last position and on padding).
    - `loss_mask` B×L float32: 1 exactly where `labels` is not -100 (Megatron's convention: it
      weighs the loss of each label position).
    - `position_ids` B×L int64: 0, 1, … restarting at every packed sample; each row's padding is
      numbered as a sample of its own.
    - `cu_seqlens` int32: boundaries of every packed sample in the flattened B·L tokens, each row's
      padding counted as one more segment, so cu_seqlens[-1] == B·L; `max_seqlen` the longest.
    - `sample_lengths` per row, the lengths stage 2 packed.
    - `images` N×3×S×S uint8, every image of the batch in order (row by row, then by position).
    - `image_positions` N×2 int64: (row, index in input_ids) of the image's `<im_start>`.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    sample_lengths: list[list[int]]
    images: torch.Tensor
    image_positions: torch.Tensor


class PackedSequenceEncoder(
    DefaultTaskEncoder[PackedSequenceSample, EncodedSequence, PackedSequenceBatch, PackedSequenceBatch]
):
    """Stage-2 sequences -> PackedSequenceBatch.

    `image_size` S: every image scaled to fit S×S, aspect kept, centred on padding.
    `pad_to`: pad every batch to this length (a sequence longer is an error); default the longest
    in the batch. `image_token_ids` (<im_start>, <im_patch>, <im_end>): default what vdp-index
    recorded in dataset.yaml.
    """

    def __init__(
        self,
        image_size: int = 336,
        pad_to: int | None = None,
        pad_id: int = 0,
        image_token_ids: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.image_size, self.pad_to, self.pad_id = image_size, pad_to, pad_id
        self.image_token_ids = image_token_ids

    @stateless
    def encode_sample(self, sample: PackedSequenceSample) -> EncodedSequence:
        ids, mask, lengths = sample.input_ids, sample.loss_mask, list(sample.sample_lengths)
        if sum(lengths) != len(ids) or len(mask) != len(ids):
            raise ValueError(f"sample {sample.__key__}: sample_lengths sum to {sum(lengths)}, ids {len(ids)}, mask {len(mask)}")
        starts = image_block_starts(ids, image_token_ids(sample, self.image_token_ids), sample.__key__)
        if len(starts) != len(sample.images):
            raise ValueError(f"sample {sample.__key__}: {len(starts)} image blocks but {len(sample.images)} images")
        images = [torch.from_numpy(resize_with_padding(img.numpy(), self.image_size)) for img in sample.images]
        return EncodedSequence.derive_from(
            sample,
            input_ids=ids,
            labels=labels_for(ids, mask, lengths),
            position_ids=position_ids_for(lengths),
            sample_lengths=lengths,
            images=torch.stack(images) if images else torch.zeros((0, 3, self.image_size, self.image_size), dtype=torch.uint8),
            image_positions=starts,
        )

    @stateless
    def batch(self, samples: list[EncodedSequence]) -> PackedSequenceBatch:
        longest = max(len(s.input_ids) for s in samples)
        length = self.pad_to or longest
        if longest > length:
            key = next(s.__key__ for s in samples if len(s.input_ids) > length)
            raise ValueError(f"sample {key}: {longest} tokens, longer than pad_to={length}")
        rows = len(samples)
        input_ids = torch.full((rows, length), self.pad_id, dtype=torch.long)
        labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((rows, length), dtype=torch.long)
        bounds, positions = [0], []
        for row, s in enumerate(samples):
            n = len(s.input_ids)
            input_ids[row, :n], labels[row, :n], position_ids[row, :n] = s.input_ids, s.labels, s.position_ids
            position_ids[row, n:] = torch.arange(length - n)
            segments = list(s.sample_lengths) + ([length - n] if length > n else [])
            bounds += (row * length + np.cumsum(segments)).tolist()
            positions += [(row, p) for p in s.image_positions.tolist()]
        seg = np.diff(bounds)
        return PackedSequenceBatch.from_samples(
            samples,
            input_ids=input_ids,
            labels=labels,
            loss_mask=(labels != IGNORE_INDEX).float(),
            position_ids=position_ids,
            cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
            max_seqlen=int(seg.max()) if len(seg) else 0,
            sample_lengths=[list(s.sample_lengths) for s in samples],
            images=torch.cat([s.images for s in samples]),
            image_positions=torch.tensor(positions, dtype=torch.long).reshape(-1, 2),
        )


@edataclass
class VideoFramesBatch(Batch):
    """B stage-1 samples; videos with fewer frames are padded at the end.

    - `frames` B×T×3×S×S uint8 (T the most frames in the batch), each frame scaled to fit S×S,
      aspect kept, centred on padding; `frame_mask` B×T bool, True for real frames.
    - `timestamps` B×T float64 seconds (0 where masked); `frame_types` per sample.
    - `captions`, `conversations`, `video_ids` per sample.
    """

    frames: torch.Tensor
    frame_mask: torch.Tensor
    timestamps: torch.Tensor
    frame_types: list[list[str]]
    captions: list[str]
    conversations: list[list[dict]]
    video_ids: list[str]


class VideoFramesEncoder(DefaultTaskEncoder[VideoFramesSample, VideoFramesSample, VideoFramesBatch, VideoFramesBatch]):
    """Stage-1 `un`/`kf` samples -> VideoFramesBatch (`image_size` S, as PackedSequenceEncoder)."""

    def __init__(self, image_size: int = 336):
        super().__init__()
        self.image_size = image_size

    @stateless
    def encode_sample(self, sample: VideoFramesSample) -> VideoFramesSample:
        size = self.image_size
        frames = [torch.from_numpy(resize_with_padding(f, size)) for f in sample.frames.numpy()]
        stacked = torch.stack(frames) if frames else torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return dataclasses.replace(sample, frames=stacked)

    @stateless
    def batch(self, samples: list[VideoFramesSample]) -> VideoFramesBatch:
        size, most = self.image_size, max(len(s.frames) for s in samples)
        frames = torch.zeros((len(samples), most, 3, size, size), dtype=torch.uint8)
        mask = torch.zeros((len(samples), most), dtype=torch.bool)
        times = torch.zeros((len(samples), most), dtype=torch.float64)
        for row, s in enumerate(samples):
            n = len(s.frames)
            frames[row, :n], mask[row, :n] = s.frames, True
            times[row, :n] = torch.tensor(s.timestamps, dtype=torch.float64)
        return VideoFramesBatch.from_samples(
            samples,
            frames=frames,
            frame_mask=mask,
            timestamps=times,
            frame_types=[list(s.frame_types) for s in samples],
            captions=[s.caption for s in samples],
            conversations=[s.conversations for s in samples],
            video_ids=[s.video_id for s in samples],
        )
