"""Shared helpers for the stage-1 tests: encoded test videos, manifests, reading shards back."""

from __future__ import annotations

import glob
import io
import json
import os

import av
import cv2
import numpy as np
import webdataset as wds

from tests.synth import VideoSpec, make_video, read_frame_number
from vdp.media.video import upright_bgr
from vdp.run.accounting import is_accounting

# name -> spec: each one a trap from shared/notes/video-decoding.md
VIDEO_SPECS = {
    "h264_bframes.mp4": VideoSpec(num_frames=60, bframes=3, gop=15),
    "hevc.mp4": VideoSpec(num_frames=50, codec="libx265", bframes=2, gop=10),
    "vp9.webm": VideoSpec(num_frames=45, codec="libvpx-vp9", gop=10),
    "rot90.mp4": VideoSpec(num_frames=40, rotation=90),
    "rot270.mkv": VideoSpec(num_frames=40, rotation=270),
    "vfr_audio.mp4": VideoSpec(num_frames=50, vfr=True, audio=True),
    "mpeg4.avi": VideoSpec(num_frames=40, codec="mpeg4", gop=8),
    "iframe_no_key_flag.mp4": VideoSpec(num_frames=48, gop=48, scene_cuts=(12, 24, 36)),
    "tiny.mp4": VideoSpec(num_frames=5, gop=5),
}


def make_videos(folder: str) -> dict[str, str]:
    return {name: make_video(os.path.join(folder, name), spec) for name, spec in VIDEO_SPECS.items()}


def write_manifest(path: str, rows: list) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_samples(folder: str) -> dict[str, dict]:
    """Every sample of every tar in `folder`, read with stock webdataset, by key."""
    urls = sorted(glob.glob(os.path.join(folder, "*.tar")))
    out = {}
    for url in urls:
        for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in out, "duplicate key"
            out[sample["__key__"]] = sample
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return img


def frame_numbers(sample: dict) -> list[int | None]:
    """The frame numbers painted into a sample's JPEGs, in the order of its `image` list."""
    meta = json.loads(sample["json"])
    return [read_frame_number(decode_jpeg(sample[f"{name}.jpg"])) for name in meta["image"]]


def tree_bytes(folder: str) -> dict[str, bytes]:
    """The outputs in `folder` (accounting files, which carry times, left out: tests/test_accounting.py)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if os.path.isfile(path) and not is_accounting(path):
            with open(path, "rb") as f:
                out[os.path.basename(path)] = f.read()
    return out


def video_frames(data: bytes) -> list[tuple[float, int | None]]:
    """(time from the first frame, painted number) of every frame of a video file's bytes,
    in presentation order, each read upright."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        origin = stream.start_time or 0
        frames = [
            (float((f.pts - origin) * stream.time_base), read_frame_number(upright_bgr(f, int(round(f.rotation or 0)), 0)))
            for f in c.decode(stream)
        ]
    return sorted(frames)


def noise_video(path: str, frames: int) -> str:
    """A video of random pixels, which no encoder can shrink: about 90 KB a frame (MPEG-4 in mp4),
    for tests that need outputs of a given size (a full disk, uploads in parts)."""
    rng = np.random.default_rng(frames)
    with av.open(path, "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 320, 240, "yuv420p", 40_000_000
        for _ in range(frames):
            image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
