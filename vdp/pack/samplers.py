"""The built-in frame samplers (un, kf, fps): which frames of a video become images, and the prompt that names them.

A sampler is two plain functions registered under a `--type` name:
  choose(frames, opts) -> list of frame indices (presentation order, may repeat)
  prompt(chosen, num_frames, opts) -> the human turn's text, one placeholder per chosen frame
`frames` is the true decoded frame list (`FrameInfo(index, time, type)`); the decoder
calls `choose` before and after decoding, so it must be a pure function of its inputs.

Your own samplers go in the repo's samplers.py (or any file given to --plugin).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from vdp.media.video import FrameInfo


@dataclass(frozen=True)
class SamplerOptions:
    num_frames: int = 16  # un
    kf_iframes: int = 8  # kf: at most this many I frames (the last frame counts among them)
    kf_total: int = 24  # kf: I + non-I frames in all
    time_scale: int = 100  # kf: frame positions are given in 0..time_scale
    fps: float = 1.0  # fps: frames per second of video
    max_frames: int = 64  # fps: at most this many, spread evenly over a longer video (0: no limit)


@dataclass(frozen=True)
class Sampler:
    choose: Callable[[list[FrameInfo], SamplerOptions], list[int]]
    prompt: Callable[[list[FrameInfo], int, SamplerOptions], str]
    # False when `choose` looks only at the frame count and times: then the decoder takes the
    # frame list from the packets and decodes only what the chosen frames depend on.
    needs_types: bool = True


SAMPLERS: dict[str, Sampler] = {}


def register(name: str, choose, prompt, needs_types: bool = True) -> None:
    SAMPLERS[name] = Sampler(choose, prompt, needs_types)


def spread(items: list[int], k: int) -> list[int]:
    """At most k items spread evenly, keeping the first and the last (step=(len-1)/(k-1))."""
    if k <= 0:
        return []
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[0]]
    step = (len(items) - 1) / (k - 1)
    return [items[round(i * step)] for i in range(k)]


# --- un: uniform frames -------------------------------------------------------------------


def choose_uniform(frames: list[FrameInfo], opts: SamplerOptions) -> list[int]:
    """n frames at int(seg/2 + round(seg*i)), seg=(F-1)/n: the centres of n equal segments."""
    n, count = opts.num_frames, len(frames)
    seg = (count - 1) / n
    return [int(seg / 2 + round(seg * i)) for i in range(n)]


def prompt_uniform(chosen: list[FrameInfo], num_frames: int, opts: SamplerOptions) -> str:
    return "<image>" * len(chosen)


# --- kf: keyframes with timestamps -----------------------------------------------------------


def choose_keyframes(frames: list[FrameInfo], opts: SamplerOptions) -> list[int]:
    """The I frames plus the last frame spread to kf_iframes, then non-I frames to kf_total."""
    last = len(frames) - 1
    iframes = [f.index for f in frames if f.type == "I"]
    if last not in iframes:
        iframes.append(last)
    picked = spread(iframes, opts.kf_iframes)
    taken = set(iframes)
    others = [f.index for f in frames if f.index not in taken]
    picked += spread(others, opts.kf_total - len(picked))
    return sorted(picked)


def prompt_keyframes(chosen: list[FrameInfo], num_frames: int, opts: SamplerOptions) -> str:
    """`<Iimage>#t` or `<Pimage>#t` per frame, t = position in 0..time_scale."""
    span = max(num_frames - 1, 1)
    return "".join(
        f"<{'I' if f.type == 'I' else 'P'}image>#{int(f.index / span * opts.time_scale)}" for f in chosen
    )


# --- fps: frames at a fixed rate, by presentation time ---------------------------------------

# Frame times are whole microseconds; this absorbs float error at window edges and in ties.
_EPS = 1e-9


def choose_fps(frames: list[FrameInfo], opts: SamplerOptions) -> list[int]:
    """Frames at t0, t0 + 1/fps, t0 + 2/fps, ... by presentation time; at most max_frames.

    t0 is the first frame's time (with a span, the span's first frame: `frames` holds only the
    span's frames, timed from the video's first frame). Targets run up to the last frame's time,
    included. Target t_k takes, of the frames within half a sampling interval of it
    ([t_k - 1/(2 fps), t_k + 1/(2 fps)), a window no other target shares), the one nearest to
    t_k, the earlier of two equally near. A target whose window holds no frame (a gap in a
    variable-frame-rate video, or fps above the video's rate) is skipped; windows do not overlap,
    so no frame is taken twice. When more frames are found than max_frames (> 0), `spread` keeps
    max_frames of them, the first and last included.
    """
    if not frames:
        return []
    t0, rate = frames[0].time, opts.fps
    last = math.floor((max(f.time for f in frames) - t0) * rate + _EPS)
    best: dict[int, tuple[float, int]] = {}  # target k -> (distance, frame index)
    for f in frames:
        k = math.floor((f.time - t0) * rate + 0.5 + _EPS)
        if 0 <= k <= last:
            distance = abs(f.time - t0 - k / rate)
            if k not in best or distance < best[k][0] - _EPS:
                best[k] = (distance, f.index)
    picked = sorted(index for _, index in best.values())
    return spread(picked, opts.max_frames) if opts.max_frames > 0 else picked


register("un", choose_uniform, prompt_uniform, needs_types=False)
register("kf", choose_keyframes, prompt_keyframes)
register("fps", choose_fps, prompt_uniform, needs_types=False)
