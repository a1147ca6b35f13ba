"""Stage-1 shards written directly, for stage-2 tests and the tokenize bench.

The tars follow the stage-1 contract without decoding any video: a sample is `{key}.json`
(caption, video_id, source, width, height, fps, duration, num_frames, frames, image,
conversations) and `{key}.{name}.jpg` per frame; tars are named
`shard-{machine_id}-{start}-{end}-{tar_id}.tar`. Frames are synthetic pictures of a few sizes
encoded once with cv2 and reused, so a corpus of thousands of frames costs milliseconds.

The legacy layout (the seed's stage 1), as read by `vdp.tokenize.frame_samples`:
- `{key}.json` = {"image_name_list": ["{key}-0", "{key}-1", ...], "prompt": human text with one
  placeholder per frame, "txt": the caption} -- for multi-turn samples prompt and txt are lists,
  one entry per turn;
- then each frame as a sample of its own: `{key}-{i}.jpg`, in image_name_list order.
Keys restart at 000000000 in every legacy tar, as the seed's per-tar file index did.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import cv2
import numpy as np

from tests.synth_tokenizer import EXTRA, WORDS, caption, train_llama_like_tokenizer  # noqa: F401 (re-exported)
from vdp.io.tario import Member, write_tar_atomically

SMALL_SIZES = [(64, 48), (48, 64), (80, 45), (56, 56)]
BENCH_SIZES = [(640, 360), (480, 270), (360, 640), (512, 512)]


def make_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A synthetic picture (gradients and blocks, a little noise) as a JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + y + seed * 37) % 256)], -1)
    img = img.astype(np.int16) + rng.integers(-12, 12, img.shape)
    block = max(4, min(width, height) // 4)
    img[::block, :, :] = 0
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


class JpegPool:
    """A few distinct JPEGs per size, reused across frames (encoding is the slow part)."""

    def __init__(self, sizes: list[tuple[int, int]], per_size: int = 3) -> None:
        self.images = [
            (w, h, make_jpeg(w, h, seed=i * 7 + j)) for i, (w, h) in enumerate(sizes) for j in range(per_size)
        ]

    def pick(self, rng: random.Random) -> tuple[int, int, bytes]:
        return rng.choice(self.images)


def kf_prompt(types: list[str], indices: list[int], num_frames: int, time_scale: int = 100) -> str:
    span = max(num_frames - 1, 1)
    return "".join(f"<{t}image>#{int(i / span * time_scale)}" for t, i in zip(types, indices))


@dataclass
class SampleSpec:
    """One stage-1 sample to write; conversations None means the standard two turns."""

    key: str
    frames: list[tuple[int, int, bytes]]
    caption: str
    sample_type: str = "un"
    conversations: list[dict] | None = None
    extra_json: dict = field(default_factory=dict)


def _frame_plan(n: int, num_frames: int, rng: random.Random) -> tuple[list[int], list[str]]:
    indices = sorted(rng.sample(range(num_frames), n))
    types = ["I" if (i == 0 or rng.random() < 0.25) else "P" for i in indices]
    return indices, types


def sample_members(spec: SampleSpec, rng: random.Random) -> list[Member]:
    """The members of one current-layout stage-1 sample."""
    n = len(spec.frames)
    num_frames = n * 10 + rng.randint(0, 9)
    indices, types = _frame_plan(n, num_frames, rng)
    names = [str(i) for i in range(n)]
    if spec.conversations is not None:
        turns = spec.conversations
    else:
        prompt = kf_prompt(types, indices, num_frames) if spec.sample_type == "kf" else "<image>" * n
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": spec.caption}]
    w, h = spec.frames[0][0], spec.frames[0][1]
    doc = {
        "caption": spec.caption,
        "video_id": f"vid{spec.key}",
        "source": f"videos/vid{spec.key}.mp4",
        "width": w,
        "height": h,
        "fps": 25.0,
        "duration": round(num_frames / 25.0, 3),
        "num_frames": num_frames,
        "frames": [
            {"name": nm, "index": i, "t": round(i / 25.0, 3), "type": t} for nm, i, t in zip(names, indices, types)
        ],
        "image": names,
        "conversations": turns,
        **spec.extra_json,
    }
    members = [(f"{spec.key}.json", json.dumps(doc, ensure_ascii=False).encode())]
    members += [(f"{spec.key}.{nm}.jpg", data) for nm, (_, _, data) in zip(names, spec.frames)]
    return members


def legacy_members(spec: SampleSpec, rng: random.Random) -> list[Member]:
    """The members of one legacy-layout sample: json first, then one sample per frame."""
    n = len(spec.frames)
    names = [f"{spec.key}-{i}" for i in range(n)]
    if spec.conversations is not None:
        prompt = [t["value"] for t in spec.conversations if t["from"] == "human"]
        txt = [t["value"] for t in spec.conversations if t["from"] == "gpt"]
    else:
        if spec.sample_type == "kf":
            num_frames = n * 10
            indices, types = _frame_plan(n, num_frames, rng)
            prompt = kf_prompt(types, indices, num_frames)
        else:
            prompt = "<image>" * n
        txt = spec.caption
    doc = {"image_name_list": names, "prompt": prompt, "txt": txt}
    members = [(f"{spec.key}.json", json.dumps(doc, ensure_ascii=False).encode())]
    members += [(f"{nm}.jpg", data) for nm, (_, _, data) in zip(names, spec.frames)]
    return members


def conv_turns(rng: random.Random, n_images: int) -> list[dict]:
    """A multi-turn conversation with n_images `<image>` placeholders spread over human turns."""
    n_turns = rng.randint(1, 4)
    counts = [0] * n_turns
    for _ in range(n_images):
        counts[rng.randrange(n_turns)] += 1
    turns = []
    for c in counts:
        bits = [caption(rng, 0, 12)] + ["<image>"] * c
        rng.shuffle(bits)
        turns.append({"from": "human", "value": rng.choice(["", " ", "\n"]).join(bits)})
        turns.append({"from": "gpt", "value": caption(rng, 0, 40)})
    return turns


def random_specs(
    rng: random.Random,
    count: int,
    first_key: int,
    sample_type: str,
    pool: JpegPool,
    frames: tuple[int, int] = (16, 24),
    words: tuple[int, int] = (3, 120),
) -> list[SampleSpec]:
    specs = []
    for k in range(count):
        n = rng.randint(*frames)
        imgs = [pool.pick(rng) for _ in range(n)]
        turns = conv_turns(rng, n) if sample_type == "conv" else None
        specs.append(SampleSpec(f"{first_key + k:09d}", imgs, caption(rng, *words), sample_type, turns))
    return specs


def write_stage1_tar(path: str, specs: list[SampleSpec], seed: int = 0, legacy: bool = False) -> str:
    rng = random.Random(seed)
    build = legacy_members if legacy else sample_members
    write_tar_atomically(path, [m for s in specs for m in build(s, rng)])
    return path


def write_stage1_corpus(
    folder: str,
    tars: int,
    samples_per_tar: int,
    sample_type: str = "un",
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
    frames: tuple[int, int] = (16, 24),
    words: tuple[int, int] = (3, 120),
    machine_id: int = 0,
) -> list[str]:
    """`tars` stage-1 tars of `samples_per_tar` samples each, keys global across the corpus."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    pool = JpegPool(sizes or SMALL_SIZES)
    paths = []
    for tar_id in range(tars):
        start = tar_id * samples_per_tar
        specs = random_specs(rng, samples_per_tar, start, sample_type, pool, frames, words)
        name = f"shard-{machine_id}-{start}-{start + samples_per_tar}-{tar_id}.tar"
        paths.append(write_stage1_tar(os.path.join(folder, name), specs, seed=seed * 1000 + tar_id))
    return paths
