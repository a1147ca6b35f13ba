"""Optional decord decoder for `un` (`--backend decord`).

decord seeks per requested index and trusts the container's frame count, so PyAV stays the
default; this backend exists for teams that compare against it or rely on its output. It runs
only inside the pool's worker processes, whose alarm and watchdog bound its known hangs, and
the pool isolates a crashed call to its own video. decord 0.6 applies the display-matrix
rotation in MP4/MOV but not in Matroska (seen in the tests), so the rotation is read with
PyAV and applied here where decord did not.
"""

from __future__ import annotations

import cv2
import numpy as np

from vdp.errors import RecordError
from vdp.media.spans import Span, clamp_span, no_frame_in
from vdp.media.video import Chooser, DecodedFrames, FrameInfo, VideoMeta, first_frame_rotation, open_video


def decode_chosen_decord(path: str, choose: Chooser, span: Span | None = None, max_side: int = 1280) -> DecodedFrames:
    try:
        from decord import VideoReader, cpu
        from decord._ffi.base import DECORDError
    except ImportError as e:  # the wheel is missing on this platform
        raise RecordError(f"decord unavailable: {e}") from None
    try:
        vr = VideoReader(path, ctx=cpu(0), num_threads=1)
        count = len(vr)
        if count == 0:
            raise RecordError("empty: no video frames")
        stamps = vr.get_frame_timestamp(range(count))
        starts = stamps[:, 0]
        if span is not None:
            span = clamp_span(span, float(stamps[-1, 1]))
        t0, t1 = span if span is not None else (0.0, float("inf"))
        positions = [i for i in range(count) if t0 - 1e-6 <= starts[i] < t1]
        frames = [FrameInfo(n, round(float(starts[i]), 6), "?") for n, i in enumerate(positions)]
        if not frames:
            raise no_frame_in(span) if span is not None else RecordError("empty: no video frames")
        chosen = list(choose(frames))
        wanted = sorted(set(chosen))
        batch = vr.get_batch([positions[i] for i in wanted]).asnumpy()
        fps = float(vr.get_avg_fps() or 25.0)
    except DECORDError as e:
        raise RecordError(f"undecodable: decord: {' '.join(str(e).split())[:200]}") from None
    rotation = _rotation_left_to_apply(path)
    k = rotation // 90
    upright = {i: np.ascontiguousarray(np.rot90(rgb[..., ::-1], k)) for i, rgb in zip(wanted, batch)}
    height, width = next(iter(upright.values())).shape[:2]
    images = {i: _fit(bgr, max_side) for i, bgr in upright.items()}
    duration = frames[-1].time - frames[0].time + 1.0 / fps
    meta = VideoMeta(width, height, round(fps, 6), round(duration, 6), len(frames), "decord", 0)
    return DecodedFrames(meta, frames, chosen, images, span=span)


def _rotation_left_to_apply(path: str) -> int:
    container, stream = open_video(path)
    try:
        if "mp4" in container.format.name or "mov" in container.format.name:
            return 0  # decord rotated these itself
        return first_frame_rotation(stream, container.demux(stream))
    finally:
        container.close()


def _fit(bgr, max_side: int):
    h, w = bgr.shape[:2]
    scale = min(1.0, max_side / max(w, h))
    if scale >= 1.0:
        return bgr.copy()
    return cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
