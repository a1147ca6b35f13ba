"""Your own frame samplers: register one here and `python pack.py --type NAME` uses it.

A sampler is two plain functions (the built-in `un`, `kf` and `fps` are in vdp/pack/samplers.py):
  choose(frames, opts) -> frame indices to keep (presentation order, may repeat); `frames` is
      the decoded frame list (`FrameInfo(index, time, type)`); it must be a pure function,
      the decoder calls it before and after decoding;
  prompt(chosen, num_frames, opts) -> the human turn's text, one placeholder per chosen frame.
With needs_types=False (`choose` looks only at count and times) the decoder skips the pass
that finds the I frames. For example:

    def first_last(frames, opts):
        return [0, len(frames) - 1]

    register("fl", first_last, lambda chosen, n, opts: "<image>" * len(chosen), needs_types=False)

A quality signal for the json's `signals` registers here too: `register_signal(name, fn)` from
vdp.media.signals (fn(frames) -> a JSON value; see that module's docstring).

The same file works with the installed command: `vdp-pack --plugin samplers.py ...`.
"""

from __future__ import annotations

from vdp.pack.samplers import SamplerOptions, register, spread  # noqa: F401

# Your samplers below.
