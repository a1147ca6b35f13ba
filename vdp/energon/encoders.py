"""Task encoders: typed samples -> batches, built from vdp.train.batches (which a plain
webdataset or wids pipeline can use as well)."""

from __future__ import annotations

import torch
from megatron.energon import Batch, DefaultTaskEncoder, Sample, stateless
from megatron.energon.edataclass import edataclass

from vdp.energon.samples import IMAGE_TOKENS_KEY, PackedSequenceSample, VideoFramesSample
from vdp.train.batches import collate_frames, collate_sequences, encode_sequence


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
    """B packed sequences padded to one length L; the fields are documented in
    vdp.train.batches.collate_sequences (labels -100 off targets and at packed boundaries,
    loss_mask aligned with labels, position_ids restarting per packed sample, cu_seqlens over the
    flattened batch with padding as its own segment, images N×3×S×S uint8, image_positions N×2)."""

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
    `pad_to`: pad every batch to this length (a longer sequence is an error); default the longest
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
        fields = {"input_ids": sample.input_ids, "loss_mask": sample.loss_mask,
                  "sample_lengths": sample.sample_lengths, "images": sample.images}  # fmt: skip
        ids = image_token_ids(sample, self.image_token_ids)
        return EncodedSequence.derive_from(sample, **encode_sequence(fields, self.image_size, ids, sample.__key__))

    @stateless
    def batch(self, samples: list[EncodedSequence]) -> PackedSequenceBatch:
        encoded = [{f: getattr(s, f) for f in ("input_ids", "labels", "position_ids", "sample_lengths", "images",
                                               "image_positions")} for s in samples]  # fmt: skip
        return PackedSequenceBatch.from_samples(samples, **collate_sequences(encoded, self.pad_to, self.pad_id))


@edataclass
class VideoFramesBatch(Batch):
    """B stage-1 samples (see vdp.train.batches.collate_frames): frames B×T×3×S×S uint8 padded at
    the end, frame_mask B×T, timestamps B×T seconds, and per sample frame_types, captions,
    conversations, video_ids."""

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
    def batch(self, samples: list[VideoFramesSample]) -> VideoFramesBatch:
        fields = [{f: getattr(s, f) for f in ("frames", "timestamps", "frame_types", "caption", "conversations",
                                              "video_id")} for s in samples]  # fmt: skip
        return VideoFramesBatch.from_samples(samples, **collate_frames(fields, self.image_size))
