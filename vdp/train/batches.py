"""Fields of our samples -> the tensors a trainer feeds its model.

What each team would otherwise re-derive (and where silent training bugs live) is computed here
once and tested: labels that never cross a packed-sample boundary, position ids that restart at
every packed sample, `cu_seqlens` for variable-length attention, each image's place in the ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

IGNORE_INDEX = -100  # labels that are not a target (PyTorch's cross_entropy default ignore_index)
LLAMA2_IMAGE_IDS = (32001, 32000, 32002)  # (<im_start>, <im_patch>, <im_end>) after LLaMA-2's 32000 ids


def _fit(pixels: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 scaled so the longer side is `size`, aspect kept.

    Shrinking halves with area averaging while the scale is below 1/2 (OpenCV's fast integer
    path), then finishes bilinearly: within one halving bilinear does not alias, and OpenCV's
    area resize at a non-integer ratio costs more than decoding the JPEG (bench/energon.py).
    """
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    while scale < 0.5:
        h, w = (h + 1) // 2, (w + 1) // 2
        pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
        scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        pixels = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return pixels


def _place(fitted: np.ndarray, out: np.ndarray) -> None:
    """Centre an H×W×3 image on `out` (3×S×S, already the padding colour)."""
    size = out.shape[-1]
    h, w = fitted.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top : top + h, left : left + w] = fitted.transpose(2, 0, 1)


def resize_with_padding(pixels: np.ndarray, size: int, pad_value: int = 0) -> np.ndarray:
    """H×W×3 uint8 -> 3×size×size uint8: scaled so the longer side is `size`, aspect kept, centred
    on a `pad_value` square (LLaVA's pad-to-square, without its mean-colour fill)."""
    out = np.full((3, size, size), pad_value, dtype=np.uint8)
    _place(_fit(pixels, size), out)
    return out


def square_images(images: Sequence[torch.Tensor | np.ndarray], size: int) -> torch.Tensor:
    """N×3×size×size uint8 from H×W×3 images (see resize_with_padding), written in place into
    one tensor rather than stacked from N copies."""
    out = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    squares = out.numpy()
    for i, img in enumerate(images):
        _place(_fit(np.asarray(img), size), squares[i])
    return out


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
    if not sample_lengths:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(n, dtype=torch.long) for n in sample_lengths])


def image_block_starts(input_ids: torch.Tensor, image_ids: tuple[int, int, int], key: str = "") -> torch.Tensor:
    """Positions of every `<im_start>`, each checked to open `<im_start> <im_patch>… <im_end>`."""
    start, patch, end = image_ids
    starts = torch.nonzero(input_ids == start).flatten()
    ends = torch.nonzero(input_ids == end).flatten()
    if len(starts) != len(ends) or bool((ends <= starts).any()):
        raise ValueError(f"sample {key}: {len(starts)} <im_start> but {len(ends)} <im_end> ids, or out of order")
    for s, e in zip(starts.tolist(), ends.tolist()):
        if not bool((input_ids[s + 1 : e] == patch).all()):
            raise ValueError(f"sample {key}: the image block at {s} holds ids other than <im_patch>")
    return starts


def encode_sequence(
    fields: dict[str, Any], image_size: int, image_ids: tuple[int, int, int], key: str = ""
) -> dict[str, Any]:
    """packed_sequence_fields -> input_ids, labels, position_ids, sample_lengths, images
    (N×3×S×S) and image_positions (index of each image's `<im_start>`)."""
    ids, mask, lengths = fields["input_ids"], fields["loss_mask"], list(fields["sample_lengths"])
    if sum(lengths) != len(ids) or len(mask) != len(ids):
        raise ValueError(f"sample {key}: sample_lengths sum to {sum(lengths)}, ids {len(ids)}, mask {len(mask)}")
    starts = image_block_starts(ids, image_ids, key)
    if len(starts) != len(fields["images"]):
        raise ValueError(f"sample {key}: {len(starts)} image blocks but {len(fields['images'])} images")
    return {
        "input_ids": ids,
        "labels": labels_for(ids, mask, lengths),
        "position_ids": position_ids_for(lengths),
        "sample_lengths": lengths,
        "images": square_images(fields["images"], image_size),
        "image_positions": starts,
    }


def collate_sequences(encoded: Sequence[dict[str, Any]], pad_to: int | None = None, pad_id: int = 0) -> dict[str, Any]:
    """B encoded sequences -> one batch padded to `pad_to` (default: the longest).

    - `input_ids` B×L int64, padded with `pad_id`.
    - `labels` B×L int64: the next token where it is a response token, else -100 (also at every
      packed sample's last position and on padding).
    - `loss_mask` B×L float32: 1 exactly where `labels` is not -100 (Megatron's convention: it
      weighs the loss of each label position).
    - `position_ids` B×L int64: 0, 1, … restarting at every packed sample; each row's padding is
      numbered as a sample of its own.
    - `cu_seqlens` int32: boundaries of every packed sample in the flattened B·L tokens, each row's
      padding counted as one more segment, so cu_seqlens[-1] == B·L; `max_seqlen` the longest.
    - `sample_lengths` per row.
    - `images` N×3×S×S uint8, every image of the batch in order (row by row, then by position).
    - `image_positions` N×2 int64: (row, index in input_ids) of the image's `<im_start>`.
    """
    longest = max(len(s["input_ids"]) for s in encoded)
    length = pad_to or longest
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens is longer than pad_to={length}")
    rows = len(encoded)
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((rows, length), dtype=torch.long)
    bounds, positions = [0], []
    for row, s in enumerate(encoded):
        n = len(s["input_ids"])
        input_ids[row, :n], labels[row, :n], position_ids[row, :n] = s["input_ids"], s["labels"], s["position_ids"]
        position_ids[row, n:] = torch.arange(length - n)
        segments = list(s["sample_lengths"]) + ([length - n] if length > n else [])
        bounds += (row * length + np.cumsum(segments)).tolist()
        positions += [(row, p) for p in s["image_positions"].tolist()]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "loss_mask": (labels != IGNORE_INDEX).float(),
        "position_ids": position_ids,
        "cu_seqlens": torch.tensor(bounds, dtype=torch.int32),
        "max_seqlen": int(np.diff(bounds).max()),
        "sample_lengths": [list(s["sample_lengths"]) for s in encoded],
        # one row: its images already are the batch's (no copy)
        "images": encoded[0]["images"] if rows == 1 else torch.cat([s["images"] for s in encoded]),
        "image_positions": torch.tensor(positions, dtype=torch.long).reshape(-1, 2),
    }


def collate_frames(samples: Sequence[dict[str, Any]], image_size: int) -> dict[str, Any]:
    """B video_frames_fields -> frames B×T×3×S×S uint8 (T the most frames; each frame scaled to fit
    S×S, aspect kept), frame_mask B×T bool, timestamps B×T float64 (0 where masked), and per
    sample frame_types, captions, conversations, video_ids."""
    squared = [square_images(list(s["frames"].numpy()), image_size) for s in samples]
    most = max(len(f) for f in squared)
    frames = torch.zeros((len(samples), most, 3, image_size, image_size), dtype=torch.uint8)
    mask = torch.zeros((len(samples), most), dtype=torch.bool)
    times = torch.zeros((len(samples), most), dtype=torch.float64)
    for row, (s, f) in enumerate(zip(samples, squared)):
        n = len(f)
        frames[row, :n], mask[row, :n] = f, True
        times[row, :n] = torch.tensor(s["timestamps"], dtype=torch.float64)
    return {
        "frames": frames,
        "frame_mask": mask,
        "timestamps": times,
        "frame_types": [list(s["frame_types"]) for s in samples],
        "captions": [s["caption"] for s in samples],
        "conversations": [s["conversations"] for s in samples],
        "video_ids": [s["video_id"] for s in samples],
    }
