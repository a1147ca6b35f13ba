"""The built-in frame samplers (un, kf): which frames of a video become images, and the prompt that names them.

A sampler is two plain functions registered under a `--type` name:
  choose(frames, opts) -> list of frame indices (presentation order, may repeat)
  prompt(chosen, num_frames, opts) -> the human turn's text, one placeholder per chosen frame
`frames` is the true decoded frame list (`FrameInfo(index, time, type)`); the decoder
calls `choose` before and after decoding, so it must be a pure function of its inputs.

Your own samplers go in the repo's samplers.py (or any file given to --plugin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vdp.media.video import FrameInfo


@dataclass(frozen=True)
class SamplerOptions:
    num_frames: int = 16  # un
    kf_iframes: int = 8  # kf: at most this many I frames (the last frame counts among them)
    kf_total: int = 24  # kf: I + non-I frames in all
    time_scale: int = 100  # kf: frame positions are given in 0..time_scale


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


register("un", choose_uniform, prompt_uniform, needs_types=False)
register("kf", choose_keyframes, prompt_keyframes)
