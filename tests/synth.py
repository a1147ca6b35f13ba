"""Make small real videos whose frames carry their own number, for the demo, tests and benches.

Each frame shows a band of 12 cells across its top: white, 10 bits of the frame number
(most significant first), black. `read_frame_number` reads the band back from a decoded,
upright image, so a test can check that the frame a sampler says it took is the frame it took.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

BITS = 10
CELLS = BITS + 2


def paint_frame(number: int, width: int, height: int, scene: int = 0) -> np.ndarray:
    """An upright RGB image carrying `number` in its top band, with moving texture below.

    Each `scene` has its own texture, so a change of scene is a cut an encoder notices.
    """
    img = np.empty((height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    a, b = 3 + 5 * scene, 2 + 7 * scene
    img[..., 0] = (xx * a + number * 7 + scene * 90) % 256
    img[..., 1] = (yy * b + number * 5 + scene * 50) % 256
    img[..., 2] = ((xx * (scene + 1) + yy) // 4 + number * 3 + scene * 170) % 256
    band = max(8, height // 6)
    cell = width / CELLS
    bits = [1] + [(number >> (BITS - 1 - i)) & 1 for i in range(BITS)] + [0]
    for i, bit in enumerate(bits):
        img[:band, int(i * cell) : int((i + 1) * cell)] = 255 if bit else 0
    return img


def read_frame_number(bgr: np.ndarray) -> int | None:
    """The number painted by `paint_frame`, or None when the band is not there (e.g. rotated)."""
    height, width = bgr.shape[:2]
    band = max(8, height // 6) if height >= 48 else max(2, height // 6)
    cell = width / CELLS
    gray = bgr.mean(axis=2)
    y0, y1 = band // 4, max(band // 4 + 1, band * 3 // 4)
    values = []
    for i in range(CELLS):
        x0, x1 = int(i * cell + cell / 4), int((i + 1) * cell - cell / 4)
        values.append(gray[y0:y1, x0:max(x1, x0 + 1)].mean())
    bits = [1 if v > 128 else 0 for v in values]
    if bits[0] != 1 or bits[-1] != 0 or min(abs(v - 128) for v in values) < 40:
        return None
    return int("".join(map(str, bits[1:-1])), 2)


@dataclass
class VideoSpec:
    num_frames: int = 48
    width: int = 160
    height: int = 96
    codec: str = "libx264"  # libx264, libx265, libvpx-vp9, mpeg4
    fps: int = 25
    bframes: int = 2
    gop: int = 12
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise
    vfr: bool = False  # irregular frame durations
    audio: bool = False
    scene_cuts: tuple[int, ...] = ()  # frames where the picture changes completely


def make_video(path: str, spec: VideoSpec | None = None) -> str:
    """Encode `spec` to `path` (container from the extension) and return the path."""
    spec = spec or VideoSpec()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    k = (spec.rotation // 90) % 4
    stored_w, stored_h = (spec.height, spec.width) if k % 2 else (spec.width, spec.height)
    with av.open(path, "w") as out:
        stream = out.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        options = {"g": str(spec.gop)}
        if spec.codec in ("libx264", "libx265"):
            options["bf"] = str(spec.bframes)
        if spec.codec == "libx264" and spec.scene_cuts:
            # min-keyint = keyint: a cut inside the GOP becomes an I frame that is not IDR,
            # so its packet carries no key flag (the open-GOP trap).
            options["x264-params"] = f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=40"
        if spec.codec == "libx265":
            options["x265-params"] = f"log-level=error:keyint={spec.gop}:bframes={spec.bframes}"
        if spec.codec == "libvpx-vp9":
            options.update({"deadline": "realtime", "cpu-used": "8"})
        stream.options = options
        codec_tb = Fraction(1, 1000) if spec.vfr else Fraction(1, spec.fps)
        stream.codec_context.time_base = codec_tb
        if k:
            stream.set_display_rotation(spec.rotation)
        audio = out.add_stream("aac", rate=16000) if spec.audio else None
        pts = 0
        audio_pts = 0
        for n in range(spec.num_frames):
            scene = sum(1 for cut in spec.scene_cuts if n >= cut)
            upright = paint_frame(n, spec.width, spec.height, scene)
            stored = np.ascontiguousarray(np.rot90(upright, -k)) if k else upright
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts, frame.time_base = pts, codec_tb
            pts += (20 + 40 * ((n * 7) % 3)) if spec.vfr else 1
            for p in stream.encode(frame):
                out.mux(p)
            if audio is not None:
                while audio_pts < (n + 1) * 16000 // spec.fps:
                    samples = np.zeros((1, 1024), np.float32)
                    af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                    af.sample_rate, af.pts = 16000, audio_pts
                    audio_pts += 1024
                    for p in audio.encode(af):
                        out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
        if audio is not None:
            for p in audio.encode(None):
                out.mux(p)
    return path

