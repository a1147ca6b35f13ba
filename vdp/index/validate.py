"""Checks of one sample of a stage-1 or stage-2 shard: facts when it is sound, RecordError when not.

Every reason starts with its kind and a colon ("bad jpeg: 000000-000001.3.jpg: ..."), so
`vdp.errors.reason_counts` groups them. Three kinds of sample are told apart by their members:
- sequence (stage 2): `input_ids`/`loss_mask` in the json or as `.npy` members, images `{key}.{i}.jpg`;
- frames (stage 1 un/kf): json with `frames`, `image`, `conversations`, images `{key}.{name}.jpg`;
- video (stage 1 video-only): json plus `{key}.{ext}` holding the video file.

The default checks read headers only (JPEG frame header and end marker); `deep` decodes every
JPEG and opens every video, at the price of a decoder per member.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from vdp.errors import RecordError
from vdp.io.shards import Sample, parse_sample_json
from vdp.io.tarslices import MAX_FRAME_PIXELS, VIDEO_EXTS
from vdp.media.jpeg import jpeg_size

FRAME_FIELDS = ("caption", "video_id", "source", "width", "height", "fps", "duration", "num_frames")
_PLACEHOLDER = re.compile(r"<(I|P|)image>")  # <image> (un), <Iimage>/<Pimage> (kf)


@dataclass(frozen=True)
class ImageTokenIds:
    """Ids of `<im_patch>`, `<im_start>`, `<im_end>`: vocab_size, +1, +2 unless a tokenizer says otherwise."""

    patch: int
    start: int
    end: int

    @classmethod
    def after_vocab(cls, vocab_size: int) -> ImageTokenIds:
        return cls(vocab_size, vocab_size + 1, vocab_size + 2)


@dataclass(frozen=True)
class CheckOptions:
    patches: int = 256
    max_len: int = 8000
    image_ids: ImageTokenIds = ImageTokenIds.after_vocab(32000)
    deep: bool = False  # decode every JPEG, open every video


@dataclass
class SampleFacts:
    """What a sound sample holds; `ids`/`mask`/`doc` stay for callers that look further (check_pair)."""

    key: str
    kind: str  # "sequence", "frames" or "video"
    tokens: int = 0
    images: int = 0
    doc: dict = field(default_factory=dict)
    ids: np.ndarray | None = None
    mask: np.ndarray | None = None
    blocks: np.ndarray | None = None  # position of each image block's <im_start>


def check_sample(sample: Sample, opts: CheckOptions) -> SampleFacts:
    """Every check for one sample; raises RecordError with the first reason found."""
    doc = _parse_json(sample)
    if "input_ids" in doc or "input_ids.npy" in sample.members:
        return check_sequence(sample, doc, opts)
    if "image" in doc or "frames" in doc:
        return check_frames(sample, doc, opts)
    if _video_members(sample):
        return check_video(sample, doc, opts)
    raise RecordError(f"unknown sample: {sample.key}.json has no input_ids, image or frames, and no video member")


# --- shared pieces ------------------------------------------------------------------------------


def _parse_json(sample: Sample) -> dict:
    if "json" not in sample.members:
        exts = ", ".join(sorted(sample.members))
        raise RecordError(f"no json: {sample.key} has only {exts}")
    return parse_sample_json(sample.members["json"], f"{sample.key}.json")


def check_jpeg(data: bytes, member: str, deep: bool) -> None:
    """Header check (start, frame header, end marker); with `deep`, a full decode of the right size."""
    try:
        width, height = jpeg_size(data)
    except RecordError as e:
        raise RecordError(f"bad jpeg: {member}: {e}") from None
    if width * height > MAX_FRAME_PIXELS:  # no frame is this big, and decoding it would allocate it all
        raise RecordError(f"bad jpeg: {member}: too large: {width}x{height} pixels, over {MAX_FRAME_PIXELS}")
    if deep:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise RecordError(f"bad jpeg: {member}: does not decode")
        if img.shape[:2] != (height, width):
            raise RecordError(
                f"bad jpeg: {member}: decodes to {img.shape[1]}x{img.shape[0]}, header says {width}x{height}"
            )


def _check_images(sample: Sample, names: list, ext_of, deep: bool) -> None:
    """Each named image present and a valid JPEG, and no JPEG member that no name lists."""
    wanted = []
    for name in names:
        if not isinstance(name, str):
            raise RecordError(f"bad json: {sample.key}.json: image name {name!r} is not a string")
        ext = ext_of(name)
        if ext not in sample.members:
            raise RecordError(f"missing image: {sample.key}.{ext}")
        check_jpeg(sample.members[ext], f"{sample.key}.{ext}", deep)
        wanted.append(ext)
    extra = sorted(set(e for e in sample.members if e.endswith(".jpg") or e == "jpg") - set(wanted))
    if extra:
        raise RecordError(f"unlisted member: {sample.key}.{extra[0]} is named by no image entry")


# --- stage 2: packed token sequences -----------------------------------------------------------


def _load_npy(sample: Sample, ext: str, kinds: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(sample.members[ext]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RecordError(f"bad ids: {sample.key}.{ext}: {e}") from None
    if arr.ndim != 1 or arr.dtype.kind not in kinds:
        raise RecordError(f"bad ids: {sample.key}.{ext}: {arr.dtype} array of shape {arr.shape}, want 1-d integers")
    return arr


def _json_array(doc: dict, name: str, key: str) -> np.ndarray:
    values = doc.get(name)
    if not isinstance(values, list):
        raise RecordError(f"bad ids: {key}.json: {name} is not a list")
    try:
        arr = np.array(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise RecordError(f"bad ids: {key}.json: {name} holds non-integers") from None
    if arr.ndim != 1:
        raise RecordError(f"bad ids: {key}.json: {name} is not a flat list")
    return arr


def sequence_arrays(sample: Sample, doc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, loss_mask) from the json lists or the `.npy` members (`--ids_format npy`)."""
    if "input_ids.npy" in sample.members:
        if "loss_mask.npy" not in sample.members:
            raise RecordError(f"bad ids: {sample.key}.input_ids.npy without {sample.key}.loss_mask.npy")
        return _load_npy(sample, "input_ids.npy", "iu"), _load_npy(sample, "loss_mask.npy", "iub")
    return _json_array(doc, "input_ids", sample.key), _json_array(doc, "loss_mask", sample.key)


def _check_image_tokens(ids: np.ndarray, images: int, opts: CheckOptions) -> np.ndarray:
    """Start/end counts, patch count, and each block exactly `<im_start>` + patches×`<im_patch>` + `<im_end>`."""
    tok = opts.image_ids
    starts, ends = np.flatnonzero(ids == tok.start), np.flatnonzero(ids == tok.end)
    is_patch = ids == tok.patch
    if len(starts) != len(ends):
        raise RecordError(f"image tokens: {len(starts)} <im_start> but {len(ends)} <im_end>")
    patches = int(is_patch.sum())
    if patches != images * opts.patches:
        raise RecordError(f"patch count: {patches} <im_patch> for {images} images x {opts.patches} patches")
    if len(starts) != images:
        raise RecordError(f"image blocks: {len(starts)} blocks for {images} images")
    if images == 0:
        return starts
    # Patches strictly inside each block, by prefix sums: exact, and one pass over the ids.
    before = np.concatenate(([0], np.cumsum(is_patch)))
    inside = before[ends] - before[starts + 1]
    if np.any(ends - starts != opts.patches + 1) or np.any(inside != opts.patches):
        bad = int(np.flatnonzero((ends - starts != opts.patches + 1) | (inside != opts.patches))[0])
        raise RecordError(
            f"image blocks: block {bad} at token {int(starts[bad])} is not <im_start> + {opts.patches} <im_patch> + <im_end>"
        )
    return starts


def _check_packing(doc: dict, ids: np.ndarray, key: str, opts: CheckOptions) -> list[int]:
    """sample_lengths sum to the length, one source and source tar per packed sample, no block across a boundary."""
    lengths, sources, tars = doc.get("sample_lengths"), doc.get("sources"), doc.get("source_tars")
    if not isinstance(lengths, list) or not lengths or not all(isinstance(n, int) and n > 0 for n in lengths):
        raise RecordError(f"sample lengths: {key}.json: sample_lengths is not a list of positive integers")
    if sum(lengths) != len(ids):
        raise RecordError(f"sample lengths: sum {sum(lengths)} != {len(ids)} tokens")
    if not isinstance(sources, list) or len(sources) != len(lengths):
        n = len(sources) if isinstance(sources, list) else "no"
        raise RecordError(f"sources: {n} sources for {len(lengths)} packed samples")
    if not isinstance(tars, list) or len(tars) != len(lengths):
        n = len(tars) if isinstance(tars, list) else "no"
        raise RecordError(f"sources: {n} source_tars for {len(lengths)} packed samples")
    bounds = np.cumsum(lengths)
    starts, ends = np.flatnonzero(ids == opts.image_ids.start), np.flatnonzero(ids == opts.image_ids.end)
    if np.any(np.searchsorted(bounds, starts, "right") != np.searchsorted(bounds, ends, "right")):
        raise RecordError("image blocks: an image block crosses a packed-sample boundary")
    return lengths


def check_sequence(sample: Sample, doc: dict, opts: CheckOptions) -> SampleFacts:
    ids, mask = sequence_arrays(sample, doc)
    if len(ids) != len(mask):
        raise RecordError(f"length mismatch: {len(ids)} input_ids but {len(mask)} loss_mask")
    if len(ids) == 0:
        raise RecordError("length mismatch: empty input_ids")
    if len(ids) > opts.max_len:
        raise RecordError(f"too long: {len(ids)} tokens > max_len {opts.max_len}")
    if np.any((mask != 0) & (mask != 1)):
        raise RecordError("bad mask: loss_mask holds values other than 0 and 1")
    top = max(opts.image_ids.patch, opts.image_ids.start, opts.image_ids.end)
    if ids.min() < 0 or ids.max() > top:
        raise RecordError(f"token range: id {int(ids.min() if ids.min() < 0 else ids.max())} outside 0..{top}")
    names = doc.get("image")
    if not isinstance(names, list):
        raise RecordError(f"bad json: {sample.key}.json: image is not a list")
    blocks = _check_image_tokens(ids, len(names), opts)
    image_tok = (ids == opts.image_ids.patch) | (ids == opts.image_ids.start) | (ids == opts.image_ids.end)
    if np.any(mask[image_tok] != 0):
        raise RecordError("bad mask: image tokens carry loss")
    _check_packing(doc, ids, sample.key, opts)
    _check_images(sample, names, lambda name: f"{name}.jpg", opts.deep)
    return SampleFacts(sample.key, "sequence", len(ids), len(names), doc, ids, mask, blocks)


# --- stage 1: frames and video-only -------------------------------------------------------------


def _check_fields(doc: dict, key: str) -> None:
    missing = [f for f in FRAME_FIELDS if f not in doc]
    if missing:
        raise RecordError(f"missing field: {key}.json has no {', '.join(missing)}")
    if not isinstance(doc["caption"], str):
        raise RecordError(f"bad json: {key}.json: caption is not a string")
    if type(doc["num_frames"]) is not int:  # frame indices are compared with it (bool is no count)
        raise RecordError(f"bad json: {key}.json: num_frames is not an integer")


def _frame_list(doc: dict, key: str) -> list[dict]:
    frames, names = doc.get("frames"), doc.get("image")
    if not isinstance(frames, list) or not isinstance(names, list):
        raise RecordError(f"frame list: {key}.json needs both frames and image lists")
    for f in frames:
        if not (isinstance(f, dict) and {"name", "index", "t", "type"} <= f.keys()):
            raise RecordError(f"frame list: {key}.json: a frame lacks name, index, t or type")
    if [f["name"] for f in frames] != names:
        raise RecordError(f"frame list: {key}.json: frame names differ from image")
    indices = [f["index"] for f in frames]
    if any(not isinstance(i, int) or not 0 <= i < doc["num_frames"] for i in indices):
        raise RecordError(f"frame list: a frame index is outside 0..{doc['num_frames'] - 1}")
    if indices != sorted(indices):
        raise RecordError("frame list: frames are not in presentation order")
    return frames


def _check_prompt(doc: dict, frames: list[dict], key: str) -> None:
    """One placeholder per frame; for kf, `<Iimage>`/`<Pimage>` matching each frame's type."""
    turns = doc.get("conversations")
    if not (
        isinstance(turns, list)
        and turns
        and all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns)
    ):
        raise RecordError(f"bad json: {key}.json: conversations is not a list of turns")
    human = "".join(t["value"] for t in turns if t.get("from") == "human")
    found = _PLACEHOLDER.findall(human)
    if len(found) != len(frames):
        raise RecordError(f"placeholder count: {len(found)} placeholders for {len(frames)} frames")
    if any(found):  # kf prompt: the letter must be the frame's true type
        for i, (letter, frame) in enumerate(zip(found, frames)):
            if letter != frame["type"]:
                raise RecordError(
                    f"frame type: placeholder {i} says {letter or '-'} but frame {frame['name']} is {frame['type']}"
                )


def check_frames(sample: Sample, doc: dict, opts: CheckOptions) -> SampleFacts:
    _check_fields(doc, sample.key)
    frames = _frame_list(doc, sample.key)
    _check_prompt(doc, frames, sample.key)
    _check_images(sample, doc["image"], lambda name: f"{name}.jpg", opts.deep)
    return SampleFacts(sample.key, "frames", 0, len(frames), doc)


def _video_members(sample: Sample) -> list[str]:
    return [ext for ext in sample.members if ext.lower() in VIDEO_EXTS]


def check_video(sample: Sample, doc: dict, opts: CheckOptions) -> SampleFacts:
    _check_fields(doc, sample.key)
    exts = _video_members(sample)
    if len(exts) != 1:
        raise RecordError(f"missing video: {sample.key} has {len(exts)} video members")
    data = sample.members[exts[0]]
    if not data:
        raise RecordError(f"bad video: {sample.key}.{exts[0]} is empty")
    if opts.deep:
        open_video(data, f"{sample.key}.{exts[0]}")
    return SampleFacts(sample.key, "video", 0, 0, doc)


def open_video(data: bytes, member: str) -> None:
    """The bytes open as a video whose packets read to the end (stage 1's own check, no decode)."""
    import av  # only deep checks pay for importing the decoder

    from vdp.media.video import scan_video

    try:
        scan_video(data)
    except RecordError as e:
        raise RecordError(f"bad video: {member}: {e}") from None
    except (av.error.FFmpegError, ValueError) as e:
        raise RecordError(f"bad video: {member}: {' '.join(str(e).split())[:200]}") from None
